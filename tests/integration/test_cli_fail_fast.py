"""The command line fails fast and says why: a missing state directory, a duplicate submit,
no daemon to pick a job up, and errors as JSON under ``--json``, with the real commands
(and, where it is the daemon that answers, a real daemon)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sentinel_daemon.core.events import Event
from sentinel_daemon.log.store import Store
from tests.daemonkit import (
    DaemonProcess,
    copy_dataset,
    is_event,
    job_id_of,
    make_dataset,
    write_job,
)
from tests.jobevents import finish, running

SENTINEL = [sys.executable, "-m", "sentinel_daemon.cli"]


def sentinel(
    *args: str, state_dir: Path, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SENTINEL, *args, "--state-dir", str(state_dir)],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=cwd,
        env=env,
    )


def write_events(state_dir: Path, events: list[Event]) -> None:
    store = Store.open(state_dir)
    try:
        store.append(events)
    finally:
        store.close()


# ---- a missing state directory ----------------------------------------------------------


COMMANDS_ON_A_STATE_DIR = [
    ["submit", "job.yaml"],
    ["status"],
    ["status", "j1"],
    ["wait", "j1", "--timeout", "60"],
    ["cancel", "j1"],
    ["tail"],
    ["log", "verify"],
    ["log", "repair"],
    ["report", "j1"],
    ["export-optuna", "j1", "--out", "j1.journal"],
]


@pytest.mark.parametrize("args", COMMANDS_ON_A_STATE_DIR, ids=" ".join)
def test_every_command_but_run_refuses_a_missing_state_dir_and_creates_nothing(
    tmp_path: Path, args: list[str]
) -> None:
    (tmp_path / "job.yaml").write_text("name: fraud\n")
    typo = tmp_path / "sentinel-stat"
    before = sorted(p.name for p in tmp_path.iterdir())
    result = sentinel(*args, state_dir=typo, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert f"{typo}: no such state directory (from --state-dir)" in result.stderr
    assert result.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing created
    as_json = sentinel(*args, "--json", state_dir=typo, cwd=tmp_path)
    assert as_json.returncode == 2
    error = json.loads(as_json.stdout)["error"]
    assert error["kind"] == "state_dir_missing" and error["exit_code"] == 2
    assert error["state_dir"] == str(typo)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_a_state_dir_from_the_environment_is_named_as_such(tmp_path: Path) -> None:
    env = {**os.environ, "SENTINEL_STATE_DIR": str(tmp_path / "nope")}
    result = subprocess.run(
        [*SENTINEL, "status"], capture_output=True, text=True, timeout=60, env=env
    )
    assert result.returncode == 2
    assert "(from SENTINEL_STATE_DIR)" in result.stderr
    assert not (tmp_path / "nope").exists()


def test_a_file_where_the_state_dir_should_be_is_refused(tmp_path: Path) -> None:
    (tmp_path / "state").write_text("not a folder")
    result = sentinel("status", state_dir=tmp_path / "state")
    assert result.returncode == 2 and "is not a directory" in result.stderr


# ---- errors as JSON ---------------------------------------------------------------------


def test_json_errors_go_to_stdout_with_the_same_exit_codes(state_dir: Path) -> None:
    write_events(state_dir, [*running("j1"), *finish("j1")])
    cases = [
        (["status", "nope"], 1, "unknown_job"),
        (["cancel", "j1"], 1, "job_already_ended"),
        (["cancel", "../j1"], 1, "bad_job_id"),
        (["wait"], 2, "usage"),
        (["status", "--no-such-option"], 2, "usage"),
    ]
    for args, code, kind in cases:
        plain = sentinel(*args, state_dir=state_dir)
        as_json = sentinel(*args, "--json", state_dir=state_dir)
        assert plain.returncode == as_json.returncode == code, (args, plain.stderr)
        assert plain.stdout == ""
        error = json.loads(as_json.stdout)["error"]
        assert (error["kind"], error["exit_code"]) == (kind, code), args
        assert error["message"] and error["message"] in as_json.stderr


def test_bad_settings_are_a_json_error_too(state_dir: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("eventlog:\n  snapshot_every: often\n")
    result = sentinel("status", "--json", "--config", str(cfg), state_dir=state_dir)
    assert result.returncode == 2
    error = json.loads(result.stdout)["error"]
    assert error["kind"] == "settings" and "eventlog.snapshot_every" in error["message"]


# ---- submit: duplicates and no daemon ---------------------------------------------------


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("fail-fast-data"))


@pytest.fixture
def workspace(tmp_path: Path, dataset: Path) -> Path:
    """The daemon's working folder: ``data/`` holds the data set, ``state/`` exists."""
    copy_dataset(dataset, tmp_path / "data")
    (tmp_path / "state").mkdir()
    return tmp_path


@pytest.fixture
def daemon(workspace: Path) -> Iterator[DaemonProcess]:
    proc = DaemonProcess(workspace)
    yield proc
    proc.cleanup()


def test_two_racing_submits_of_one_file_leave_one_in_the_inbox_and_call_the_other_a_duplicate(
    workspace: Path,
) -> None:
    state_dir = workspace / "state"
    for round_ in range(4):
        job_file = write_job(workspace / f"round{round_}", "fraud", seed=round_)
        racers = [
            subprocess.Popen(
                [*SENTINEL, "submit", str(job_file), "--json", "--state-dir", str(state_dir)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=workspace,
            )
            for _ in range(2)
        ]
        results = [(p.wait(timeout=90), *p.communicate(timeout=90)) for p in racers]
        codes = sorted(code for code, _, _ in results)
        assert codes == [0, 1], results
        (loser,) = [json.loads(out)["error"] for code, out, _ in results if code == 1]
        assert loser["kind"] == "duplicate_job" and "waiting in the inbox" in loser["message"]
        assert loser["job_id"] == job_id_of(job_file)
    inbox = sorted(p.name for p in (state_dir / "inbox").iterdir())
    assert inbox == ["fraud.1.yaml", "fraud.2.yaml", "fraud.3.yaml", "fraud.yaml"]


def test_submit_warns_without_a_daemon_and_calls_a_job_already_in_the_log_a_duplicate(
    workspace: Path, daemon: DaemonProcess
) -> None:
    state_dir = workspace / "state"
    first = write_job(workspace / "jobs", "fraud", n_trials=1)
    alone = sentinel("submit", str(first), state_dir=state_dir, cwd=workspace)
    assert alone.returncode == 0, alone.stderr
    assert alone.stdout == f"{job_id_of(first)}\n"
    assert "warning: no daemon is running" in alone.stderr
    assert "waits in the inbox until one starts" in alone.stderr
    again = sentinel("submit", str(first), state_dir=state_dir, cwd=workspace)
    assert again.returncode == 1 and "duplicate" in again.stderr
    assert "waiting in the inbox as" in again.stderr

    daemon.start()
    daemon.wait_for_event(is_event("job.submitted", job_id=job_id_of(first)), what="pickup")
    in_log = sentinel("submit", str(first), "--json", state_dir=state_dir, cwd=workspace)
    assert in_log.returncode == 1
    error = json.loads(in_log.stdout)["error"]
    assert error["kind"] == "duplicate_job" and "in the event log (running" in error["message"]
    second = write_job(workspace / "jobs", "fraud-two", n_trials=1)
    served = sentinel("submit", str(second), "--json", state_dir=state_dir, cwd=workspace)
    assert served.returncode == 0, served.stderr
    out = json.loads(served.stdout)
    assert out["daemon_running"] is True and out["warnings"] == []
    assert served.stderr == ""
    daemon.wait_for_job(job_id_of(first))
    assert daemon.stop() == 0
    after = write_job(workspace / "jobs", "fraud-three", n_trials=1)
    stopped = sentinel("submit", str(after), "--json", state_dir=state_dir, cwd=workspace)
    assert json.loads(stopped.stdout)["daemon_running"] is False
