"""The operator commands on real files and processes: submit, status, wait, cancel, and the
lock-free state reader they share."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from sentinel_daemon.core.events import DaemonStarted, Event, JobCancelled
from sentinel_daemon.core.state import State, state_as_dict
from sentinel_daemon.jobfile import parse_job_file
from sentinel_daemon.log.store import Store, read_state
from tests.helpers import wait_for
from tests.jobevents import failed, finish, running, worker

SENTINEL = [sys.executable, "-m", "sentinel_daemon.cli"]


def run(*args: str, state_dir: Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SENTINEL, *args, "--state-dir", str(state_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )


def write_log(state_dir: Path, *batches: list[Event], snapshot: bool = False) -> State:
    """Append each batch as the daemon would; returns the store's state."""
    store = Store.open(state_dir)
    for batch in batches:
        store.append(batch)
    state = store.state.copy_state()
    store.close(snapshot=snapshot)
    return state


def tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file()}


# ---- read_state -----------------------------------------------------------------------


def test_read_state_equals_the_stores_state_replaying_the_whole_log(state_dir: Path) -> None:
    expected = write_log(state_dir, running("j1"), failed("j2"), [worker("w0", 5)])
    assert not (state_dir / "snapshot.json").exists()
    assert state_as_dict(read_state(state_dir)) == state_as_dict(expected)


def test_read_state_starts_from_the_snapshot_and_replays_the_tail(state_dir: Path) -> None:
    write_log(state_dir, running("j1"), snapshot=True)
    snapshot = (state_dir / "snapshot.json").read_bytes()
    expected = write_log(state_dir, finish("j1"), failed("j2"))  # the tail after the snapshot
    assert (state_dir / "snapshot.json").read_bytes() == snapshot
    got = read_state(state_dir)
    assert state_as_dict(got) == state_as_dict(expected) and got.jobs["j1"].status == "completed"


@pytest.mark.parametrize("snapshot", [False, True])
def test_read_state_stops_before_a_torn_last_record_and_leaves_the_log_alone(
    state_dir: Path, snapshot: bool
) -> None:
    expected = write_log(state_dir, running("j1"), snapshot=snapshot)
    assert (state_dir / "snapshot.json").exists() == snapshot
    segment = sorted((state_dir / "events").glob("*.jsonl"))[-1]
    with open(segment, "ab") as fh:
        fh.write(b'{"seq":%d,"ts":"2024-01-01T00:00:0' % (expected.last_seq + 1))
    before = tree(state_dir)
    got = read_state(state_dir)
    assert state_as_dict(got) == state_as_dict(expected)
    assert tree(state_dir) == before  # nothing cut, copied aside or snapshotted


def test_read_state_of_a_state_dir_without_a_log_is_empty_and_creates_nothing(
    tmp_path: Path,
) -> None:
    assert state_as_dict(read_state(tmp_path / "absent")) == state_as_dict(State())
    assert not (tmp_path / "absent").exists()


def test_read_state_works_while_the_daemon_holds_the_lock(state_dir: Path) -> None:
    store = Store.open(state_dir)
    try:
        store.append(running("j1"))
        assert read_state(state_dir).jobs["j1"].status == "running"
        store.append(finish("j1"))
        assert read_state(state_dir).last_seq == store.state.last_seq
    finally:
        store.close()


# ---- status ---------------------------------------------------------------------------


def test_status_shows_jobs_workers_and_daemon_for_people_and_scripts(state_dir: Path) -> None:
    write_log(state_dir, running("j1"), failed("j2", "data file gone"), [worker("w0", os.getpid())])
    human = run("status", state_dir=state_dir)
    assert human.returncode == 0, human.stderr
    lines = human.stdout.splitlines()
    assert lines[0].startswith("daemon: not running")
    assert lines[2].split()[:4] == ["j1", "fraud", "running", "search"]
    assert "xgboost 2/2, lightgbm 0/2" in lines[2] and "0.9000 (#1)" in lines[2]
    assert "  j2: data file gone" in lines
    assert f"workers: w0 (pid {os.getpid()}, cpu)" in lines
    result = run("status", "j1", "--json", state_dir=state_dir)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report) == {"state_dir", "last_seq", "daemon", "jobs", "workers", "gpus", "rejected"}
    (job,) = report["jobs"]
    assert job["job_id"] == "j1" and job["trials_ended"] == 2 and job["trials_total"] == 4
    assert job["best_value"] == 0.9 and job["stage"] == {"name": "search", "completed": False}
    assert isinstance(report["gpus"], list)


def test_status_says_whether_the_recorded_daemon_pid_is_alive(state_dir: Path) -> None:
    write_log(state_dir, [DaemonStarted(pid=os.getpid(), version="t")])
    alive = json.loads(run("status", "--json", state_dir=state_dir).stdout)
    assert alive["daemon"] == {"pid": os.getpid(), "alive": True, "health": None}
    dead_pid = subprocess.Popen([sys.executable, "-c", "pass"])
    dead_pid.wait(timeout=30)
    write_log(state_dir, [DaemonStarted(pid=dead_pid.pid, version="t")])
    dead = run("status", state_dir=state_dir)
    assert f"pid {dead_pid.pid}, not running" in dead.stdout.splitlines()[0]


def test_status_of_an_unknown_job_fails_naming_it(state_dir: Path) -> None:
    write_log(state_dir, running("j1"))
    result = run("status", "nope", state_dir=state_dir)
    assert result.returncode == 1 and "'nope'" in result.stderr and result.stdout == ""


# ---- wait -----------------------------------------------------------------------------


def test_wait_exits_0_for_a_completed_job_and_1_with_the_reason_for_a_failed_one(
    state_dir: Path,
) -> None:
    write_log(state_dir, running("j1"), finish("j1"), failed("j2", "data file gone"))
    done = run("wait", "j1", "--timeout", "10", state_dir=state_dir)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "job j1 completed; best 0.9000 (trial 1)\n"
    assert "\r" not in done.stderr  # no progress bar off a terminal
    bad = run("wait", "j2", "--timeout", "10", "--json", state_dir=state_dir)
    assert bad.returncode == 1 and "j2 failed: data file gone" in bad.stderr
    assert json.loads(bad.stdout)["status"] == "failed"


def test_wait_exits_1_for_a_cancelled_job(state_dir: Path) -> None:
    write_log(state_dir, running("j1"), [JobCancelled(job_id="j1", reason="operator request")])
    result = run("wait", "j1", state_dir=state_dir)
    assert result.returncode == 1 and "cancelled: operator request" in result.stderr


def test_wait_times_out_with_exit_4_on_a_running_or_unknown_job(state_dir: Path) -> None:
    write_log(state_dir, running("j1"))
    result = run("wait", "j1", "--timeout", "0.3", "--json", state_dir=state_dir)
    assert (
        result.returncode == 4 and "timed out" in result.stderr and "still running" in result.stderr
    )
    assert json.loads(result.stdout)["trials_ended"] == 2
    unknown = run("wait", "j9", "--timeout", "0", state_dir=state_dir)
    assert unknown.returncode == 4 and "not in the log yet" in unknown.stderr


def test_wait_on_an_unknown_id_exits_1_after_its_grace_naming_the_id(state_dir: Path) -> None:
    write_log(state_dir, running("j1"))
    started = time.monotonic()
    result = run("wait", "j1-typo", "--grace", "1", "--json", state_dir=state_dir)
    took = time.monotonic() - started
    assert result.returncode == 1, result.stderr
    error = json.loads(result.stdout)["error"]
    assert error["kind"] == "unknown_job" and error["job_id"] == "j1-typo"
    assert error["exit_code"] == 1 and "'j1-typo'" in error["message"]
    assert "sentinel status" in result.stderr
    assert 1.0 <= took < 30, took  # the grace, plus an interpreter's start-up


class Terminal:
    """The master side of a pseudo-terminal: everything the child draws on it."""

    def __init__(self, columns: int = 200) -> None:
        self.master, self.slave = pty.openpty()
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
        self.text = ""

    def read(self) -> str:
        while select.select([self.master], [], [], 0.05)[0]:
            try:
                chunk = os.read(self.master, 4096)
            except OSError:  # EIO: the child closed its side
                break
            if not chunk:
                break
            self.text += chunk.decode(errors="replace")
        return self.text


def test_wait_draws_progress_on_a_terminal_and_sees_the_job_appear_and_complete(
    state_dir: Path,
) -> None:
    term = Terminal()
    proc = subprocess.Popen(
        [*SENTINEL, "wait", "j1", "--timeout", "30", "--state-dir", str(state_dir)],
        stdout=subprocess.PIPE,
        stderr=term.slave,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    os.close(term.slave)
    store = None
    try:
        wait_for(lambda: "not in the log yet" in term.read(), 30, "wait to poll an empty log")
        store = Store.open(state_dir)  # another process appends while wait polls
        store.append(running("j1"))
        wait_for(lambda: "2/4 trials" in term.read(), 30, "the bar to show the running job")
        assert proc.poll() is None
        store.append(finish("j1"))
        out, _ = proc.communicate(timeout=30)
    finally:
        if store is not None:
            store.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        term.read()
        os.close(term.master)
    assert proc.returncode == 0
    assert out == "job j1 completed; best 0.9000 (trial 1)\n"
    assert "\rj1 running search [##########..........] 2/4 trials best 0.9000" in term.text


def test_wait_fits_its_progress_line_to_a_narrow_terminal_without_cutting_numbers(
    state_dir: Path,
) -> None:
    write_log(state_dir, running("j1"))
    term = Terminal(columns=30)
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}  # the terminal's own size
    proc = subprocess.Popen(
        [*SENTINEL, "wait", "j1", "--timeout", "1", "--state-dir", str(state_dir)],
        stdout=subprocess.DEVNULL,  # not a terminal: the width must come from stderr's
        stderr=term.slave,
        env=env,
    )
    os.close(term.slave)
    try:
        assert proc.wait(timeout=60) == 4
        drawn = [line.removesuffix("\x1b[K") for line in term.read().split("\r") if line]
    finally:
        os.close(term.master)
    bars = [line for line in drawn if line.startswith("j1")]
    assert bars and all(len(line) <= 29 for line in bars), drawn
    assert "j1 running 2/4 best 0.9000" in bars  # no room for the bar, the stage, "trials"


# ---- cancel ---------------------------------------------------------------------------


def test_cancel_leaves_a_request_for_the_daemon(state_dir: Path) -> None:
    write_log(state_dir, running("j1"))
    result = run("cancel", "j1", state_dir=state_dir)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "cancel requested for j1; the daemon records job.cancelled\n"
    request = json.loads((state_dir / "control" / "cancel.j1").read_bytes())
    assert request["job_id"] == "j1" and request["pid"] > 0
    assert request["requested_at"].endswith("Z")
    again = run("cancel", "j1", "--json", state_dir=state_dir)  # asking twice is harmless
    assert json.loads(again.stdout) == {
        "job_id": "j1",
        "request": str(state_dir / "control" / "cancel.j1"),
    }
    assert sorted(p.name for p in (state_dir / "control").iterdir()) == ["cancel.j1"]


@pytest.mark.parametrize(
    ("job", "message"),
    [
        ("j1", "already ended: completed"),
        ("j2", "already ended: failed (data file gone)"),
        ("j3", "check the id with `sentinel status`"),
        ("../j1", "is not a job id"),
    ],
)
def test_cancel_refuses_ended_unknown_and_malformed_jobs(
    state_dir: Path, job: str, message: str
) -> None:
    write_log(state_dir, running("j1"), finish("j1"), failed("j2", "data file gone"))
    result = run("cancel", job, state_dir=state_dir)
    assert result.returncode == 1 and message in result.stderr
    assert not (state_dir / "control").exists()


# ---- submit ---------------------------------------------------------------------------

JOB_FILE = """\
name: fraud-demo
data:
  transactions: data/train_transaction.csv
models: [xgboost]
search: {n_trials: 3}
"""


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A working folder (a default data root) with a data file and a job file."""
    work = tmp_path / "work"
    (work / "data").mkdir(parents=True)
    (work / "data" / "train_transaction.csv").write_text("TransactionID,isFraud\n1,0\n")
    (work / "job.yaml").write_text(JOB_FILE)
    return work


def test_submit_places_the_validated_file_in_the_inbox_and_prints_its_id(
    workdir: Path, state_dir: Path
) -> None:
    expected = parse_job_file(workdir / "job.yaml", data_roots=[workdir], base_dir=workdir).job_id
    result = run("submit", "job.yaml", state_dir=state_dir, cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{expected}\n"
    assert (state_dir / "inbox" / "job.yaml").read_text() == JOB_FILE
    # Another job under the same file name: never replaces the file waiting there.
    (workdir / "job.yaml").write_text(JOB_FILE.replace("n_trials: 3", "n_trials: 4"))
    again = run("submit", "job.yaml", "--json", state_dir=state_dir, cwd=workdir)
    out = json.loads(again.stdout)
    assert out["inbox_path"] == str(state_dir / "inbox" / "job.1.yaml")
    assert out["file"] == "job.yaml" and out["job_id"].startswith("fraud-demo-")


def test_submit_rejects_a_bad_job_file_naming_the_field_and_writes_nothing(
    workdir: Path, tmp_path: Path
) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    (workdir / "bad.yaml").write_text(JOB_FILE.replace("n_trials: 3", "n_trials: many"))
    result = run("submit", "bad.yaml", state_dir=state_dir, cwd=workdir)
    assert result.returncode == 1 and result.stdout == ""
    assert "bad.yaml" in result.stderr and "search.n_trials" in result.stderr
    outside = JOB_FILE.replace("data/train_transaction.csv", "/etc/hostname")
    (workdir / "outside.yaml").write_text(outside)
    result = run("submit", "outside.yaml", state_dir=state_dir, cwd=workdir)
    assert result.returncode == 1 and "data.transactions" in result.stderr
    assert list(state_dir.iterdir()) == []


def _daemon_health(state_dir: Path, cwd: Path) -> None:
    """The health.json a daemon running (or last run) in ``cwd`` leaves."""
    state_dir.mkdir(parents=True, exist_ok=True)
    health = {"status": "ok", "pid": os.getpid(), "cwd": str(cwd)}
    (state_dir / "health.json").write_text(json.dumps(health))


def test_submit_refuses_relative_data_paths_the_daemon_would_resolve_elsewhere(
    workdir: Path, tmp_path: Path
) -> None:
    state_dir = tmp_path / "state"
    elsewhere = tmp_path / "srv"
    elsewhere.mkdir()
    _daemon_health(state_dir, elsewhere)
    result = run("submit", "job.yaml", state_dir=state_dir, cwd=workdir)
    assert result.returncode == 1 and result.stdout == ""
    assert "'data.transactions'" in result.stderr and str(elsewhere) in result.stderr
    assert "write the absolute path" in result.stderr
    assert not (state_dir / "inbox").exists()
    # The same file with an absolute path goes in, and so does the relative one from the
    # daemon's own working folder.
    absolute = JOB_FILE.replace("data/", f"{workdir}/data/")
    (workdir / "abs.yaml").write_text(absolute)
    result = run("submit", "abs.yaml", state_dir=state_dir, cwd=workdir)
    assert result.returncode == 0, result.stderr
    _daemon_health(state_dir, workdir)
    result = run("submit", "job.yaml", state_dir=state_dir, cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (state_dir / "inbox").iterdir()) == ["abs.yaml", "job.yaml"]


def test_a_command_refused_by_permissions_says_so_without_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from sentinel_daemon import cli

    def refused(*_: object) -> int:  # what reading a 0750 state dir outside its group gives
        raise PermissionError(13, "Permission denied", str(tmp_path / "events"))

    monkeypatch.setitem(cli.COMMANDS, "status", refused)
    # cli.main configures structlog with this test's (soon closed) stderr: keep it as it is.
    monkeypatch.setattr(cli, "configure_logging", lambda *args: None)
    assert cli.main(["status", "--state-dir", str(tmp_path)]) == cli.EXIT_PROBLEM
    err = capsys.readouterr().err
    assert f"{tmp_path / 'events'}: permission denied" in err and "operators group" in err
