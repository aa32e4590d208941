"""The daemon as operators run it: a real ``sentinel run`` process, real workers, signals.

Each test runs the daemon in its own temporary folder (the daemon's working folder, which
holds the data set, the job files and ``state/``) and checks the event log's invariants
(DESIGN.md, "Contract: event log") at the end. Faults are injected through
``SENTINEL_TEST_FAULT_PLAN`` (see ``sentinel_daemon.worker.faults``): ``slow`` stretches a trial to
a few seconds so that something can be killed in its middle.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from sentinel_daemon import cli
from sentinel_daemon.daemon.service import EXIT_FORCED, EXIT_OK
from tests.daemonkit import (
    DATASET_ROWS,
    SLOW_SPACE,
    DaemonProcess,
    check_invariants,
    copy_dataset,
    gone,
    is_event,
    job_doc,
    job_id_of,
    make_dataset,
    of_type,
    summary,
    write_job,
)
from tests.helpers import wait_for

SENTINEL = [sys.executable, "-m", "sentinel_daemon.cli"]
#: A slow trial (see daemonkit.SLOW_SPACE) reports every boosting round.
SLOW = {"SENTINEL_TRIALS__REPORT_EVERY": "1"}

MakeDaemon = Callable[..., DaemonProcess]


@pytest.fixture(scope="session")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny synthetic data set, written once per session (outside every test's data roots)."""
    return make_dataset(tmp_path_factory.mktemp("synthetic-data"), rows=DATASET_ROWS)


@pytest.fixture
def workspace(tmp_path: Path, dataset: Path) -> Path:
    """The daemon's working folder, a data root: ``data/`` holds a copy of the data set."""
    copy_dataset(dataset, tmp_path / "data")
    return tmp_path


@pytest.fixture
def daemons(workspace: Path) -> Iterator[MakeDaemon]:
    """Make :class:`DaemonProcess` objects over ``workspace``; kill what they leave behind.

    The daemon's log and the event log are printed at teardown (pytest shows them only for
    a failed test). Processes still alive after their daemon exited fail the test.
    """
    made: list[DaemonProcess] = []

    def make(**kwargs: Any) -> DaemonProcess:
        daemon = DaemonProcess(workspace, **kwargs)
        made.append(daemon)
        return daemon

    yield make
    leaks = []
    for daemon in made:
        was_running = daemon.running()
        killed = daemon.cleanup()
        print(f"---- daemon log ({daemon.log_path}), last 200 lines ----")
        print("\n".join(daemon.log_text().splitlines()[-200:]))
        print("---- event log ----")
        print(summary(daemon.events()))
        if killed and not was_running:
            leaks.append(killed)
    if leaks:
        pytest.fail(f"processes outlived their daemon (killed now): {leaks}")


def sentinel(*args: str, state_dir: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run an operator command against ``state_dir``."""
    return subprocess.run(
        [*SENTINEL, *args, "--state-dir", str(state_dir)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def require_cli(command: str) -> None:
    if command not in cli.COMMANDS:
        pytest.skip(f"`sentinel {command}` is not in sentinel_daemon/cli.py yet")


def claimed(daemon: DaemonProcess, command_id: str, timeout: float = 90.0) -> str:
    """Wait until a worker has claimed ``command_id``; return the worker's id."""
    return wait_for(
        lambda: daemon.holder_of(command_id), timeout=timeout, what=f"{command_id} claimed"
    )


def started_trials(events: list[dict[str, Any]], job_id: str, trial: int) -> list[int]:
    """The attempts of ``trial`` that were started, in log order."""
    return [e["attempt"] for e in of_type(events, "trial.started", job_id=job_id, trial=trial)]


# ---- a job's life -----------------------------------------------------------------------


def test_a_dropped_job_file_runs_to_completion_and_promotes_a_verified_model(
    daemons: MakeDaemon, workspace: Path
) -> None:
    daemon = daemons(workers=2).start()
    job_file = write_job(
        workspace / "jobs", "fraud", models=("xgboost", "lightgbm"), n_trials=2, parallelism=2
    )
    job_id = job_id_of(job_file)
    waiter = None
    if "wait" in cli.COMMANDS:  # an operator blocks on the job right after submitting it
        waiter = subprocess.Popen(
            [*SENTINEL, "wait", job_id, "--timeout", "150", "--json",
             "--state-dir", str(daemon.state_dir)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
    try:
        assert daemon.submit(job_file) == job_id
        done = daemon.wait_for_job(job_id)
        events = check_invariants(daemon.state_dir)
        if waiter is not None:
            out, err = waiter.communicate(timeout=60)
            assert waiter.returncode == 0, err
            assert json.loads(out)["status"] == "completed"
    finally:
        if waiter is not None and waiter.poll() is None:
            waiter.kill()
            waiter.wait()

    # The file moved in with its job; the search ran 2 trials per model.
    assert not list((daemon.state_dir / "inbox").iterdir())
    assert (daemon.state_dir / "jobs" / job_id / "job.yaml").read_bytes() == job_file.read_bytes()
    assert [e["stage"] for e in of_type(events, "stage.completed", job_id=job_id)] == [
        "prepare", "search", "validate", "export",
    ]  # fmt: skip
    assert len(of_type(events, "trial.saved", job_id=job_id)) == 4
    (promoted,) = of_type(events, "model.promoted", job_id=job_id)
    assert done["promoted"] is True and done["best_trial"] == promoted["trial"]

    # best/ holds the winner's model, byte for byte, and its model card.
    best = daemon.state_dir / "jobs" / job_id / "best"
    assert (daemon.state_dir / promoted["artifact"]).parent == best
    card = json.loads((best / "model-card.json").read_text())
    (winner,) = of_type(events, "trial.saved", job_id=job_id, trial=promoted["trial"])
    assert card["job_id"] == job_id and card["trial"] == promoted["trial"]
    assert card["sha256"] == promoted["sha256"] == winner["sha256"]
    assert card["model"] == promoted["model"] == winner["model"]
    assert (best / Path(promoted["artifact"]).name).read_bytes() == (
        daemon.state_dir / winner["artifact"]
    ).read_bytes()
    assert card["quality_gate"]["passed"] is True

    require_cli("status")
    status = sentinel("status", "--json", state_dir=daemon.state_dir)
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["daemon"]["pid"] == daemon.pid and report["daemon"]["alive"] is True
    assert report["daemon"]["health"]["status"] == "ok"
    assert report["daemon"]["health"]["cwd"] == str(daemon.root)  # what submit checks against
    (job,) = report["jobs"]
    assert job["job_id"] == job_id and job["status"] == "completed"
    assert job["trials_ended"] == job["trials_total"] == 4 and job["trials_running"] == 0
    assert job["best_trial"] == done["best_trial"] and job["best_value"] == done["best_value"]
    assert job["promoted"]["artifact"] == promoted["artifact"]
    assert job["promoted"]["sha256"] == promoted["sha256"]
    assert sorted(w["pid"] for w in report["workers"]) == sorted(daemon.worker_pids().values())

    require_cli("wait")
    waited = sentinel("wait", job_id, "--timeout", "10", state_dir=daemon.state_dir)
    assert waited.returncode == 0, waited.stderr
    assert f"job {job_id} completed" in waited.stdout

    # The daemon writes the job's report by itself, in a child process.
    index = daemon.state_dir / "jobs" / job_id / "report" / "index.html"
    wait_for(index.is_file, timeout=120, what="the job's report")
    page = index.read_text()
    images = re.findall(r'<img[^>]+src="([^"]+)"', page)
    assert images and all(src.startswith("data:image/png;base64,") for src in images)
    assert [p.name for p in index.parent.iterdir()] == ["index.html"]  # one file, charts inline
    assert daemon.stop() == EXIT_OK


def test_two_jobs_submitted_together_both_complete(daemons: MakeDaemon, workspace: Path) -> None:
    daemon = daemons(workers=2).start()
    first = write_job(workspace / "jobs", "first", models=("xgboost",), n_trials=2)
    second = write_job(workspace / "jobs", "second", models=("lightgbm",), n_trials=2, seed=3)
    ids = [daemon.submit(first), daemon.submit(second)]
    for job_id in ids:
        daemon.wait_for_job(job_id)
    events = check_invariants(daemon.state_dir)
    assert {e["job_id"] for e in of_type(events, "job.submitted")} == set(ids)
    for job_id in ids:
        assert len(of_type(events, "trial.saved", job_id=job_id)) == 2
        assert (daemon.state_dir / "jobs" / job_id / "best" / "model-card.json").is_file()
    assert daemon.stop() == EXIT_OK


# ---- untrusted job files -------------------------------------------------------------------


def test_invalid_hostile_and_oversized_job_files_are_rejected_and_the_daemon_carries_on(
    daemons: MakeDaemon, workspace: Path, dataset: Path
) -> None:
    daemon = daemons().start()
    pwned = workspace / "pwned"

    def doc(name: str, **changes: Any) -> bytes:
        d = job_doc(name)
        d["data"].update(changes.pop("data", {}))
        d.update(changes)
        return yaml.safe_dump(d, sort_keys=False).encode()

    bomb = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for prev, this in zip("abcdefgh", "bcdefghi", strict=True):
        bomb.append(f"{this}: &{this} [{', '.join([f'*{prev}'] * 9)}]")
    files: dict[str, tuple[bytes, str]] = {
        "unknown-key.yaml": (doc("unknown-key", colour="blue"), "colour"),
        "outside-roots.yaml": (
            doc("outside-roots", data={"transactions": str(dataset / "train_transaction.csv")}),
            "outside the data roots",
        ),
        "etc-passwd.yaml": (
            doc("etc-passwd", data={"transactions": "/etc/passwd"}),
            "data.transactions",
        ),
        "alias-bomb.yaml": ("\n".join(bomb).encode() + b"\n", "YAML anchor"),
        "python-tag.yaml": (
            b"name: !!python/object/apply:os.system ['touch " + str(pwned).encode() + b"']\n",
            "YAML tag",
        ),
        "oversized.yaml": (doc("oversized") + b"#" + b"x" * 70_000 + b"\n", "over 65536 bytes"),
        "not-utf8.yaml": (doc("not-utf8").replace(b"not-utf8", b"caf\xe9", 1), "UTF-8"),
        "link.yaml": (b"", "symbolic link"),
        "fifo.yaml": (b"", "FIFO"),
    }
    for name, (data, _) in files.items():
        if name not in ("link.yaml", "fifo.yaml"):
            daemon.drop(name, data)
    # A link to a valid job file (the daemon must not follow it), and a FIFO (reading one
    # would block the daemon): both placed the contract's way, under a dot name then renamed.
    inbox = daemon.state_dir / "inbox"
    os.symlink(write_job(workspace / "jobs", "linked"), inbox / ".link.yaml.tmp")
    os.rename(inbox / ".link.yaml.tmp", inbox / "link.yaml")
    os.mkfifo(inbox / ".fifo.yaml.tmp")
    os.rename(inbox / ".fifo.yaml.tmp", inbox / "fifo.yaml")

    daemon.wait_for_event(
        lambda e: len(of_type(daemon.events(), "job.rejected")) >= len(files),
        what=f"{len(files)} job.rejected events",
    )
    rejected = {Path(e["file"]).name: e for e in of_type(daemon.events(), "job.rejected")}
    assert sorted(rejected) == sorted(files)
    # The event is durable first; then the file moves and its reason is written beside it.
    folder = daemon.state_dir / "rejected"
    wait_for(
        lambda: all((folder / f"{name}.reason").exists() for name in files),
        timeout=30,
        what="a .reason file beside every rejected file",
    )
    for name, (_, fragment) in files.items():
        reason = rejected[name]["reason"]
        assert fragment in reason, f"{name}: {reason!r} does not mention {fragment!r}"
        assert os.path.lexists(folder / name), f"{name} was not moved to rejected/"
        assert (folder / f"{name}.reason").read_text().strip() == reason.strip()
    assert os.path.islink(folder / "link.yaml")
    assert not pwned.exists()
    assert not list(inbox.iterdir())

    # Still serving: a valid job after all that completes, and is the only one accepted.
    good = write_job(workspace / "jobs", "good")
    job_id = daemon.submit(good)
    daemon.wait_for_job(job_id)
    # The same bytes again under another name: the job id exists, so that is refused too.
    daemon.drop("good-again.yaml", good.read_bytes())
    again = daemon.wait_for_event(
        lambda e: e["type"] == "job.rejected" and e["file"].endswith("good-again.yaml"),
        what="job.rejected for good-again.yaml",
    )
    assert "already submitted" in again["reason"]
    events = check_invariants(daemon.state_dir)
    assert [e["job_id"] for e in of_type(events, "job.submitted")] == [job_id]
    assert daemon.stop() == EXIT_OK


def test_a_job_file_dropped_again_under_the_same_name_is_rejected_with_a_reason(
    daemons: MakeDaemon, workspace: Path
) -> None:
    daemon = daemons().start()
    job_file = write_job(workspace / "jobs", "twice")
    job_id = daemon.submit(job_file)
    wait_for(
        lambda: (daemon.state_dir / "jobs" / job_id / "job.yaml").exists(),
        timeout=60,
        what="the first file to move in with its job",
    )
    assert daemon.submit(job_file) == job_id  # same name, same bytes
    claimed_copy = daemon.state_dir / "claimed" / job_file.name
    wait_for(
        lambda: (
            not (daemon.state_dir / "inbox" / job_file.name).exists() and not claimed_copy.exists()
        ),
        timeout=60,
        what="the second file to be taken from the inbox and dealt with",
    )
    events = daemon.events()
    assert len(of_type(events, "job.submitted")) == 1
    rejected = [e for e in of_type(events, "job.rejected") if e["file"].endswith(job_file.name)]
    assert rejected, "the second drop left no trace in the event log"
    reason = daemon.state_dir / "rejected" / f"{job_file.name}.reason"
    wait_for(reason.exists, timeout=30, what="the .reason file (written after the move)")


# ---- crashes and lost workers --------------------------------------------------------------


def test_a_daemon_killed_mid_search_resumes_without_losing_or_retraining_a_trial(
    daemons: MakeDaemon, workspace: Path
) -> None:
    # Trial 0 is quick; trials 1-3 are slow, so some are always in flight.
    daemon = daemons(
        workers=2, settings=SLOW, faults={"1": "slow", "2": "slow", "3": "slow"}
    ).start()
    job_file = write_job(workspace / "jobs", "crashy", n_trials=4, parallelism=2, space=SLOW_SPACE)
    job_id = daemon.submit(job_file)

    def saved_and_in_flight() -> bool:
        events = daemon.events()
        ended = {e["trial"] for e in of_type(events, "trial.saved", job_id=job_id)}
        flying = [
            e for e in of_type(events, "trial.started", job_id=job_id)
            if e["trial"] not in ended
            and daemon.holder_of(f"{job_id}.{e['trial']}.{e['attempt']}") is not None
        ]  # fmt: skip
        return bool(ended) and bool(flying)

    wait_for(saved_and_in_flight, timeout=120, what="a trial saved and another one claimed")
    assert daemon.kill() == -signal.SIGKILL
    before = daemon.events()
    saved_before = of_type(before, "trial.saved", job_id=job_id)
    old_workers = daemon.worker_pids()
    assert saved_before and old_workers

    # Orphaned workers notice that their daemon is gone and exit on their own.
    wait_for(lambda: gone(old_workers.values()), timeout=30, what="orphaned workers to exit")

    daemon.start()
    daemon.wait_for_job(job_id, timeout=150)
    events = check_invariants(daemon.state_dir)
    after = events[len(before) :]
    assert events[: len(before)] == before  # nothing recorded before the crash changed
    assert len(of_type(events, "daemon.started")) == 2
    for saved in saved_before:
        retrained = of_type(after, "trial.started", job_id=job_id, trial=saved["trial"])
        assert not retrained, f"trial {saved['trial']} was saved before the crash, then rerun"
    # The new daemon does not take the dead predecessor's workers for alive.
    ended_workers = {e["worker"] for e in of_type(after, "worker.lost", "worker.exited")}
    assert set(old_workers) <= ended_workers
    assert daemon.stop() == EXIT_OK


def test_a_worker_killed_mid_trial_is_reported_lost_and_its_trial_retried(
    daemons: MakeDaemon, workspace: Path
) -> None:
    daemon = daemons(settings=SLOW, faults={"0@1": "slow"}).start()
    job_id = daemon.submit(write_job(workspace / "jobs", "victim", space=SLOW_SPACE))
    worker = claimed(daemon, f"{job_id}.0.1")
    pid = daemon.worker_pids()[worker]
    os.kill(pid, signal.SIGKILL)

    daemon.wait_for_job(job_id)
    events = check_invariants(daemon.state_dir)
    (lost,) = of_type(events, "worker.lost", worker=worker)
    assert lost["pid"] == pid and lost["signal"] == signal.SIGKILL
    (failed,) = of_type(events, "trial.failed", job_id=job_id, trial=0)
    assert failed["attempt"] == 1 and failed["retry"] is True
    assert "worker lost" in failed["error"]
    assert started_trials(events, job_id, 0) == [1, 2]
    (saved,) = of_type(events, "trial.saved", job_id=job_id, trial=0)
    assert "/2-" in saved["artifact"]  # the second attempt's model
    assert daemon.stop() == EXIT_OK


def test_a_trial_whose_command_vanished_without_a_readable_result_is_retried(
    daemons: MakeDaemon, workspace: Path
) -> None:
    # What an unreadable result (moved to queue/bad/) leaves: a running attempt whose command
    # is in no queue folder. Simulated by freezing the worker and taking its command away.
    daemon = daemons(workers=2, settings=SLOW, faults={"0@1": "slow"}).start()
    job_id = daemon.submit(write_job(workspace / "jobs", "vanish", space=SLOW_SPACE))
    worker = claimed(daemon, f"{job_id}.0.1")
    pid = daemon.worker_pids()[worker]
    os.kill(pid, signal.SIGSTOP)
    try:
        (daemon.state_dir / "queue" / "workers" / worker / f"{job_id}.0.1.json").unlink()
        failed = daemon.wait_for_event(
            lambda e: e["type"] == "trial.failed" and e["trial"] == 0,
            what="trial 0's first attempt to fail",
        )
    finally:
        os.kill(pid, signal.SIGCONT)
    assert failed["retry"] is True and "without a readable result" in failed["error"]
    daemon.wait_for_job(job_id)
    events = check_invariants(daemon.state_dir)
    assert started_trials(events, job_id, 0) == [1, 2]
    (saved,) = of_type(events, "trial.saved", job_id=job_id, trial=0)
    assert "/2-" in saved["artifact"]  # attempt 1's late result was stale and ignored
    assert daemon.stop() == EXIT_OK


def test_a_hung_worker_is_killed_after_its_heartbeat_timeout_and_its_trial_retried(
    daemons: MakeDaemon, workspace: Path
) -> None:
    daemon = daemons(
        settings={"SENTINEL_WORKERS__HEARTBEAT_TIMEOUT_S": "3"}, faults={"0@1": "hang"}
    ).start()
    job_id = daemon.submit(write_job(workspace / "jobs", "hang"))
    daemon.wait_for_job(job_id)
    events = check_invariants(daemon.state_dir)
    # (A loaded machine may starve another worker past 3 s too; only the hung one matters.)
    (failed,) = of_type(events, "trial.failed", job_id=job_id, trial=0)
    hung = [e for e in of_type(events, "worker.lost") if e["seq"] < failed["seq"]]
    assert hung and "heartbeat" in hung[-1]["reason"]
    assert hung[-1]["signal"] == signal.SIGKILL  # it ignores SIGTERM while hung
    assert failed["attempt"] == 1 and failed["retry"] is True
    assert "heartbeat" in failed["error"]
    assert started_trials(events, job_id, 0) == [1, 2]
    assert of_type(events, "trial.saved", job_id=job_id, trial=0)
    assert daemon.stop() == EXIT_OK


def test_a_trial_past_trials_timeout_s_has_its_worker_killed_and_is_retried(
    daemons: MakeDaemon, workspace: Path
) -> None:
    # Attempt 1 of trial 0 is slowed to ~40 s (200 rounds, 0.2 s a report) while it keeps
    # heartbeating: only the ceiling can end it. The others take a few seconds at most (a
    # fresh worker imports XGBoost and loads the data first, several seconds under load).
    long = {"xgboost": {**SLOW_SPACE["xgboost"], "n_estimators": [200, 201]}}
    settings = {
        **SLOW,
        "SENTINEL_TRIALS__TIMEOUT_S": "10",
        "SENTINEL_RESOURCES__SAMPLE_EVERY_S": "0.2",
    }
    daemon = daemons(settings=settings, faults={"0@1": "slow"}).start()
    job_id = daemon.submit(write_job(workspace / "jobs", "late", space=long))
    worker = claimed(daemon, f"{job_id}.0.1")
    daemon.wait_for_job(job_id, timeout=120)
    events = check_invariants(daemon.state_dir)
    (failed,) = of_type(events, "trial.failed", job_id=job_id, trial=0)
    assert failed["attempt"] == 1 and failed["retry"] is True
    assert "past trials.timeout_s (10 s)" in failed["error"], failed["error"]
    (lost,) = [e for e in of_type(events, "worker.lost") if e["worker"] == worker]
    assert lost["seq"] < failed["seq"] and lost["signal"] == signal.SIGKILL
    assert started_trials(events, job_id, 0) == [1, 2]
    (timed_out,) = [r for r in daemon.log_records() if r.get("event") == "daemon.trial_timed_out"]
    assert timed_out["command_id"] == f"{job_id}.0.1" and 10 <= timed_out["ran_s"] < 20
    assert daemon.stop() == EXIT_OK


def test_a_trial_that_always_crashes_its_worker_fails_after_max_attempts_and_the_job_completes(
    daemons: MakeDaemon, workspace: Path
) -> None:
    daemon = daemons(settings={"SENTINEL_TRIALS__MAX_ATTEMPTS": "2"}, faults={"0": "crash"})
    daemon.start()
    job_id = daemon.submit(write_job(workspace / "jobs", "crasher"))
    done = daemon.wait_for_job(job_id)
    events = check_invariants(daemon.state_dir)
    failures = of_type(events, "trial.failed", job_id=job_id, trial=0)
    assert [(f["attempt"], f["retry"]) for f in failures] == [(1, True), (2, False)]
    assert started_trials(events, job_id, 0) == [1, 2]
    assert not of_type(events, "trial.saved", job_id=job_id, trial=0)
    crashes = [e for e in of_type(events, "worker.lost") if e["exit_code"] == 86]
    assert len(crashes) == 2
    assert done["best_trial"] == 1
    assert daemon.stop() == EXIT_OK


# ---- signals and the lock ------------------------------------------------------------------


def test_sigterm_lets_the_running_trial_finish_stops_cleanly_and_a_restart_completes_the_job(
    daemons: MakeDaemon, workspace: Path
) -> None:
    # One worker, two trials in flight: at the signal trial 0 is claimed (and slow), trial 1
    # is still pending, so it is withdrawn.
    daemon = daemons(settings=SLOW, faults={"0": "slow"}).start()
    job_file = write_job(
        workspace / "jobs", "graceful", n_trials=3, parallelism=2, space=SLOW_SPACE
    )
    job_id = daemon.submit(job_file)
    claimed(daemon, f"{job_id}.0.1")
    assert daemon.stop(signal.SIGTERM) == EXIT_OK
    first = daemon.events()
    assert first[-1]["type"] == "daemon.stopped"
    workers = daemon.worker_pids()
    exited = of_type(first, "worker.exited")
    assert {e["worker"] for e in exited} == set(workers)
    assert all(e["exit_code"] == 0 for e in exited)
    assert not of_type(first, "worker.lost")
    assert gone(workers.values())
    # The trial in flight had the grace period (30 s) to finish, and used it.
    assert of_type(first, "trial.saved", job_id=job_id, trial=0)
    assert not of_type(first, "job.completed")

    assert not list((daemon.state_dir / "queue" / "pending").iterdir())

    daemon.start()
    daemon.wait_for_job(job_id)
    events = check_invariants(daemon.state_dir)
    # Neither the trial that finished nor the one withdrawn counts a failed attempt.
    for trial in range(3):
        assert started_trials(events, job_id, trial) == [1]
    assert daemon.stop() == EXIT_OK


def test_a_trial_still_running_when_the_grace_period_ends_is_rerun_after_a_restart(
    daemons: MakeDaemon, workspace: Path
) -> None:
    daemon = daemons(
        settings={**SLOW, "SENTINEL_SHUTDOWN__GRACE_S": "0.5"}, faults={"0@1": "slow"}
    ).start()
    job_id = daemon.submit(write_job(workspace / "jobs", "hasty", space=SLOW_SPACE))
    claimed(daemon, f"{job_id}.0.1")
    assert daemon.stop(signal.SIGTERM) == EXIT_OK
    first = daemon.events()
    assert first[-1]["type"] == "daemon.stopped"
    assert not of_type(first, "trial.saved", "trial.failed", "trial.pruned", trial=0)
    assert all(e["exit_code"] == 0 for e in of_type(first, "worker.exited"))

    daemon.start()
    daemon.wait_for_job(job_id)
    events = check_invariants(daemon.state_dir)
    # The daemon stopped; the trial did not fail: the same attempt runs again.
    assert started_trials(events, job_id, 0) == [1]
    assert not of_type(events, "trial.failed")
    assert daemon.stop() == EXIT_OK


def test_a_worker_that_ignores_sigterm_is_killed_after_shutdown_worker_grace_s(
    daemons: MakeDaemon, workspace: Path
) -> None:
    settings = {
        **SLOW,
        "SENTINEL_SHUTDOWN__GRACE_S": "0.5",
        "SENTINEL_SHUTDOWN__WORKER_GRACE_S": "1.5",
    }
    daemon = daemons(settings=settings, faults={"0@1": "hang"}).start()
    job_id = daemon.submit(write_job(workspace / "jobs", "stubborn"))
    worker = claimed(daemon, f"{job_id}.0.1")
    wait_for(
        lambda: any(r.get("event") == "worker.injected_fault" for r in daemon.log_records()),
        timeout=120,
        what="the worker to hang in trial 0 (it ignores SIGTERM then)",
    )
    assert daemon.stop(signal.SIGTERM) == EXIT_OK
    killed = [r for r in daemon.log_records() if r.get("event") == "supervisor.worker_killed"]
    assert [(r["worker"], r["grace_s"]) for r in killed] == [(worker, 1.5)]
    (exited,) = of_type(daemon.events(), "worker.exited", worker=worker)
    assert exited["signal"] == signal.SIGKILL


def test_a_second_sigterm_during_the_grace_period_kills_the_workers_and_exits_forced(
    daemons: MakeDaemon, workspace: Path
) -> None:
    daemon = daemons(settings=SLOW, faults={"0": "slow"}).start()
    job_id = daemon.submit(write_job(workspace / "jobs", "impatient", space=SLOW_SPACE))
    claimed(daemon, f"{job_id}.0.1")
    daemon.send_signal(signal.SIGTERM)
    wait_for(
        lambda: any(r.get("event") == "daemon.stopping" for r in daemon.log_records()),
        timeout=30,
        what="the daemon to begin its graceful stop",
    )
    assert daemon.stop(signal.SIGTERM, timeout=30) == EXIT_FORCED
    assert gone(daemon.worker_pids().values())  # at the moment the daemon has exited
    events = daemon.events()
    assert events[-1]["type"] == "daemon.stopped"
    assert "second signal" in events[-1]["reason"]
    assert {e["worker"] for e in of_type(events, "worker.exited")} == set(daemon.worker_pids())
    check_invariants(daemon.state_dir)


def test_sigusr1_writes_every_threads_stack_to_stderr_and_the_daemon_carries_on(
    daemons: MakeDaemon,
) -> None:
    daemon = daemons(workers=0).start()
    daemon.wait_for_event(is_event("daemon.started"), what="daemon.started")
    daemon.send_signal(signal.SIGUSR1)

    def dumped() -> str | None:
        text = daemon.log_text()
        return text if "Current thread" in text else None

    text = wait_for(dumped, timeout=30, what="the stack dump in the daemon's output")
    assert "sentinel_daemon/daemon/service.py" in text and "in run_daemon" in text
    assert daemon.stop() == EXIT_OK  # the dump did not stop it


def test_a_second_daemon_on_the_same_state_dir_exits_at_once_naming_the_holder(
    daemons: MakeDaemon, workspace: Path
) -> None:
    daemon = daemons().start()
    daemon.wait_for_event(is_event("daemon.started"), what="daemon.started")
    second = subprocess.run(
        daemon.argv(), cwd=workspace, env=daemon.env, capture_output=True, text=True, timeout=60
    )
    assert second.returncode != 0
    assert f"locked by pid {daemon.pid}" in second.stderr
    assert daemon.running()
    assert len(of_type(daemon.events(), "daemon.started")) == 1
    assert daemon.stop() == EXIT_OK


# ---- operator requests ---------------------------------------------------------------------


def test_cancel_records_job_cancelled_and_the_daemon_keeps_serving(
    daemons: MakeDaemon, workspace: Path
) -> None:
    require_cli("cancel")
    plan = {f"doomed/{n}": "slow" for n in range(3)}
    daemon = daemons(settings=SLOW, faults=plan).start()
    doomed = daemon.submit(write_job(workspace / "jobs", "doomed", n_trials=3, space=SLOW_SPACE))
    claimed(daemon, f"{doomed}.0.1")
    result = sentinel("cancel", doomed, state_dir=daemon.state_dir)
    assert result.returncode == 0, result.stderr
    cancelled = daemon.wait_for_event(
        is_event("job.cancelled", job_id=doomed), what="job.cancelled"
    )
    assert "operator" in cancelled["reason"]

    after = daemon.submit(write_job(workspace / "jobs", "after"))
    daemon.wait_for_job(after)
    events = check_invariants(daemon.state_dir)
    late = [e for e in events[cancelled["seq"] :] if e.get("job_id") == doomed]
    assert not late, f"events for {doomed} after it was cancelled: {late}"
    assert not list((daemon.state_dir / "control").iterdir())
    assert daemon.stop() == EXIT_OK
