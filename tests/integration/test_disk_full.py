"""A full disk under the state directory: the daemon stops dispatching, says why, loses
nothing, and resumes when space returns. The state directory is a real, small tmpfs.

Issue 13, class 3: a file landing in the inbox while the disk is full does not stop the
daemon (it is rejected once space returns); a trial that fails for the full disk is
retried without using an attempt (``trial.failed`` ``charged: false``) while dispatch
pauses (``disk_full``); ``sentinel submit`` on the full disk says so without a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.daemonkit import (
    DATASET_ROWS,
    SLOW_SPACE,
    DaemonProcess,
    check_invariants,
    copy_dataset,
    make_dataset,
    of_type,
    write_job,
)
from tests.diskkit import fill, small_tmpfs
from tests.helpers import wait_for

TMPFS_SIZE = "48m"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    state = tmp_path / "state"
    with small_tmpfs(state, TMPFS_SIZE) as why_not:
        if why_not:
            pytest.skip(f"{why_not}; needs root")
        yield state


def sentinel(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sentinel_daemon.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def status(daemon: DaemonProcess) -> dict[str, object]:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "sentinel_daemon.cli",
            "status",
            "--json",
            "--state-dir",
            str(daemon.state_dir),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    report: dict[str, object] = json.loads(done.stdout)
    return report


def test_a_full_disk_stops_dispatching_says_why_and_the_job_resumes_when_space_returns(
    tmp_path: Path, small_disk: Path
) -> None:
    data = make_dataset(tmp_path / "dataset", rows=DATASET_ROWS)
    copy_dataset(data, tmp_path / "data")
    daemon = DaemonProcess(
        tmp_path,
        workers=1,
        settings={"SENTINEL_TRIALS__REPORT_EVERY": "1", "SENTINEL_TRIALS__MAX_ATTEMPTS": "5"},
        faults={"1": "slow"},
    )
    try:
        daemon.start()
        job_id = daemon.submit(
            write_job(
                tmp_path / "jobs",
                "diskfull",
                models=("xgboost",),
                n_trials=3,
                parallelism=1,
                space=SLOW_SPACE,
            )
        )
        daemon.wait_for_event(
            lambda e: e["type"] == "trial.started" and e["trial"] == 1, what="trial 1 started"
        )
        filler = fill(small_disk)

        def degraded_for_the_disk() -> dict[str, Any] | None:
            """health.json's report, once degraded for the full disk (a failed write of the
            event log, if one came first, measures the disk at once and names it too)."""
            daemon_report: dict[str, Any] = status(daemon)["daemon"] or {}  # type: ignore[assignment]
            health: dict[str, Any] = daemon_report.get("health", {})
            full = health.get("status") == "degraded" and "disk_full" in health.get("blocked", {})
            return health if full else None

        health = wait_for(degraded_for_the_disk, timeout=120, what="status to say the disk is full")
        assert "min_free_disk_bytes" in health["blocked"]["disk_full"], health
        seq_when_full = daemon.events()[-1]["seq"]
        # A (0-byte) file lands in the inbox: the daemon stays up, degraded at worst.
        (small_disk / "inbox" / "empty.yaml").touch()
        wait_for(
            lambda: not (small_disk / "inbox" / "empty.yaml").exists(),
            timeout=30,
            what="the daemon to take the file",
        )
        # `sentinel submit` says the disk is full, naming the folder, without a traceback.
        job_file = write_job(tmp_path / "jobs", "on-full-disk", n_trials=1)
        refused = sentinel(
            "submit", "--state-dir", str(daemon.state_dir), str(job_file), cwd=tmp_path
        )
        assert refused.returncode == 1, refused
        assert "Traceback" not in refused.stderr
        assert "No space left" in refused.stderr and "free space" in refused.stderr
        assert str(small_disk / "inbox") in refused.stderr
        assert daemon.running()

        filler.unlink()  # space returns
        daemon.wait_for_job(job_id, timeout=180)
        daemon.wait_for_event(
            lambda e: e["type"] == "job.rejected" and e["file"].endswith("empty.yaml"),
            what="the empty file rejected once space returned",
        )
        assert "dispatch.blocked" in daemon.log_text()
        assert daemon.running()
        events = check_invariants(daemon.state_dir)
        # The full disk is charged to no trial: every attempt it failed is retried for free.
        host_failed = [
            e
            for e in of_type(events, "trial.failed", job_id=job_id)
            if "No space" in e["error"] or "disk was full" in e["error"]
        ]
        assert host_failed, "no attempt failed for the full disk: the test proves nothing"
        assert all(not e["charged"] and e["retry"] for e in host_failed), host_failed
        assert not of_type(events, "trial.failed", job_id=job_id, retry=False)
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
        assert (
            len(of_type(events, "trial.saved", job_id=job_id))
            + len(of_type(events, "trial.failed", job_id=job_id, retry=False))
            + len(of_type(events, "trial.pruned", job_id=job_id))
            == 3
        )
        assert events[-1]["seq"] > seq_when_full
        assert status(daemon)["daemon"]["health"]["status"] == "ok"  # type: ignore[index]
        assert daemon.stop() == 0
    finally:
        daemon.cleanup()
