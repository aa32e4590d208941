"""`sentinel doctor` end to end: the real command on temporary state directories, with a real
process holding the daemon's lock."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

SENTINEL = [sys.executable, "-m", "sentinel_daemon.cli"]

HOLD_LOCK = """
import sys
from pathlib import Path
from sentinel_daemon.log.lock import StateLock
lock = StateLock.acquire(Path(sys.argv[1]))
print("locked", flush=True)
sys.stdin.read()
lock.release()
"""


def doctor(state_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SENTINEL, "doctor", "--state-dir", str(state_dir), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def checks(state_dir: Path) -> dict[str, dict[str, object]]:
    done = doctor(state_dir, "--json")
    assert done.returncode in (0, 1), done.stderr
    data = json.loads(done.stdout)
    assert data["state_dir"] == str(state_dir)
    return {c["name"]: c for c in data["checks"]}


@pytest.fixture
def lock_holder(state_dir: Path) -> Iterator[int]:
    """A process holding STATE/daemon.lock, as a running daemon does; yields its pid."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(state_dir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "locked\n"
        yield proc.pid
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=30)
        assert proc.stdout is not None
        proc.stdout.close()


def test_doctor_on_a_fresh_state_dir_exits_0_and_reports_every_check(state_dir: Path) -> None:
    done = doctor(state_dir, "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    data = json.loads(done.stdout)
    assert data["ok"] is True
    names = [c["name"] for c in data["checks"]]
    assert names == [
        "state",
        "inbox",
        "control",
        "filesystem",
        "disk",
        "inotify",
        "gpus",
        "daemon",
        "systemd",
    ]
    by_name = {c["name"]: c for c in data["checks"]}
    assert by_name["state"]["status"] == "ok"
    assert by_name["state"]["details"]["writable_by_you"] is True
    assert by_name["inbox"]["status"] == "info"  # the daemon creates it
    assert by_name["daemon"]["status"] == "info"
    assert by_name["gpus"]["status"] in ("ok", "info")  # never a failure without a GPU
    assert by_name["filesystem"]["details"]["fstype"]
    for check in data["checks"]:
        assert check["status"] in ("ok", "info", "skip", "warn", "fail")
        assert check["summary"]


def test_doctor_names_the_pid_of_the_process_holding_the_lock(
    state_dir: Path, lock_holder: int
) -> None:
    daemon = checks(state_dir)["daemon"]
    assert daemon["status"] == "ok"
    assert daemon["details"] == {
        "lock": str(state_dir / "daemon.lock"),
        "recorded_pid": lock_holder,
        "pid": lock_holder,
        "held": True,
    }


def test_doctor_does_not_take_the_lock_itself(state_dir: Path, lock_holder: int) -> None:
    """Two doctors beside a daemon leave its lock alone (it reads /proc/locks)."""
    assert checks(state_dir)["daemon"]["status"] == "ok"
    assert checks(state_dir)["daemon"]["details"]["pid"] == lock_holder


def test_a_lock_left_by_a_dead_daemon_is_not_held(state_dir: Path) -> None:
    (state_dir / "daemon.lock").write_text("999999\n")
    daemon = checks(state_dir)["daemon"]
    assert daemon["status"] == "info"
    assert "last held by pid 999999" in daemon["summary"]


def test_a_failing_check_exits_1_and_shows_what_to_do(state_dir: Path) -> None:
    os.chmod(state_dir, 0o777)
    done = doctor(state_dir)
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"sentinel doctor: {state_dir}"
    failing = [line for line in lines if line.startswith("FAIL  state")]
    assert len(failing) == 1 and "writable by every user" in failing[0]
    assert lines[lines.index(failing[0]) + 1].strip() == f"-> chmod o-w {state_dir}"
    assert "1 fail" in lines[-1]


def test_a_shared_inbox_is_ok_for_the_command(state_dir: Path) -> None:
    inbox = state_dir / "inbox"
    inbox.mkdir()
    os.chmod(inbox, 0o2770)
    found = checks(state_dir)["inbox"]
    assert found["status"] == "ok"
    assert found["details"]["mode"] == "2770"
