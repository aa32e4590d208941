"""Workers the daemon does not start (what sentinel-worker@.service runs): `sentinel worker`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

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
from tests.helpers import wait_for


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("external-data"), rows=DATASET_ROWS)


@pytest.fixture
def daemon(tmp_path: Path, dataset: Path) -> Iterator[DaemonProcess]:
    copy_dataset(dataset, tmp_path / "data")
    made = DaemonProcess(
        tmp_path,
        workers=0,
        settings={
            "SENTINEL_WORKERS__HEARTBEAT_TIMEOUT_S": "3",
            "SENTINEL_TRIALS__REPORT_EVERY": "1",
        },
        faults={"0@1": "slow"},
    )
    yield made
    made.cleanup()


def start_worker(daemon: DaemonProcess, worker_id: str) -> subprocess.Popen[bytes]:
    """`sentinel worker` as systemd would run it: not the daemon's child."""
    log = (daemon.root / f"{worker_id}.log").open("ab")
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sentinel_daemon.cli",
            "worker",
            "--state-dir",
            str(daemon.state_dir),
            "--id",
            worker_id,
            "--heartbeat-s",
            "0.3",
        ],
        env=daemon.env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def test_a_job_runs_on_external_workers_and_a_silent_one_has_its_trial_retried(
    daemon: DaemonProcess,
) -> None:
    daemon.start()
    job_id = daemon.submit(write_job(daemon.root / "jobs", "external", space=SLOW_SPACE))
    first = start_worker(daemon, "gpu0")
    try:
        wait_for(lambda: daemon.holder_of(f"{job_id}.0.1") == "gpu0", 90, "gpu0 to claim trial 0")
        first.send_signal(signal.SIGKILL)  # the unit's process dies mid-trial
        first.wait(timeout=10)
        lost = daemon.wait_for_event(
            lambda e: e["type"] == "worker.lost" and e["worker"] == "gpu0", what="gpu0 lost"
        )
        assert "external worker: no heartbeat" in lost["reason"]
        # systemd restarts the unit: the same id, a new process.
        second = start_worker(daemon, "gpu0")
        try:
            daemon.wait_for_job(job_id)
        finally:
            second.send_signal(signal.SIGTERM)
            assert second.wait(timeout=30) == 0
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    events = check_invariants(daemon.state_dir)
    (failed,) = of_type(events, "trial.failed", job_id=job_id, trial=0)
    assert failed["retry"] is True and "no heartbeat" in failed["error"]
    assert not of_type(events, "worker.started", worker="w0-1-1")  # no local workers
    assert daemon.stop() == 0


def test_an_external_workers_trial_past_trials_timeout_s_is_failed_and_the_worker_stops_it(
    tmp_path: Path, dataset: Path
) -> None:
    # Attempt 1 of trial 0 would take ~40 s (200 slow rounds) on a worker systemd runs: the
    # daemon cannot kill it, so it counts it lost and leaves it a prune request.
    copy_dataset(dataset, tmp_path / "data")
    daemon = DaemonProcess(
        tmp_path,
        workers=0,
        settings={
            "SENTINEL_TRIALS__TIMEOUT_S": "6",
            "SENTINEL_TRIALS__REPORT_EVERY": "1",
            "SENTINEL_RESOURCES__SAMPLE_EVERY_S": "0.2",
        },
        faults={"0@1": "slow"},
    )
    long = {"xgboost": {**SLOW_SPACE["xgboost"], "n_estimators": [200, 201]}}
    worker = None
    try:
        daemon.start()
        job_id = daemon.submit(write_job(daemon.root / "jobs", "extlate", space=long))
        worker = start_worker(daemon, "gpu0")
        # The one worker stops the stale attempt at its next report and runs the retry.
        daemon.wait_for_job(job_id, timeout=120)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
        assert daemon.stop() == 0
    finally:
        if worker is not None and worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
        daemon.cleanup()
    events = check_invariants(daemon.state_dir)
    (lost,) = of_type(events, "worker.lost", worker="gpu0")
    assert (
        "external worker: its trial" in lost["reason"]
        and "trials.timeout_s (6 s)" in lost["reason"]
    )
    (failed,) = of_type(events, "trial.failed", job_id=job_id, trial=0)
    assert failed["attempt"] == 1 and failed["retry"] is True and lost["seq"] < failed["seq"]
    assert [e["attempt"] for e in of_type(events, "trial.started", job_id=job_id, trial=0)] == [
        1,
        2,
    ]
    assert not of_type(events, "trial.pruned", job_id=job_id)  # the stopped attempt's answer
