"""The ``dask`` dispatch backend against a real ``LocalCluster`` of worker processes.

The cluster (scheduler in this test process, each worker a separate process with
``resources={"GPU": 1}``) stands for GPU hosts running ``dask worker --resources GPU=1``;
the daemon is a real ``sentinel run`` process with ``dispatch.backend: dask``. The state
directory is the "shared storage": the workers see it at the same path.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

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
from tests.faults.faultkit import violations
from tests.helpers import wait_for

distributed = pytest.importorskip("distributed")
dask = pytest.importorskip("dask")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("dask-data"), rows=DATASET_ROWS)


def local_cluster(**kwargs: Any) -> distributed.LocalCluster:
    """Worker processes with one "GPU" each, as `dask worker --resources GPU=1` would be.

    The scheduler runs with ``allowed-failures: 0``, as docs/dask.md asks: a worker death
    fails its task at once (KilledWorker), so that Sentinel, not Dask, decides the retry.
    """
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        return distributed.LocalCluster(
            **{
                "n_workers": 2,
                "threads_per_worker": 1,
                "processes": True,
                "resources": {"GPU": 1},
                "dashboard_address": ":0",
                "silence_logs": 40,
                **kwargs,
            }
        )


@pytest.fixture(scope="module", autouse=True)
def cluster() -> Iterator[distributed.LocalCluster]:
    """One cluster for the module (Dask keeps process-wide threads and helpers that a
    per-test cluster would leave behind; the leak guard sees them once, before it)."""
    with pytest.MonkeyPatch.context() as patch:
        # Worker processes inherit this environment: the fault plan's "slow" trials, one
        # training thread each (two workers share this machine's cores).
        patch.setenv("SENTINEL_TEST_FAULTS", "1")
        patch.setenv("SENTINEL_DASK_THREADS", "1")
        cluster = local_cluster()
        # The process-wide offload thread (started lazily, kept for good): start it now.
        distributed.utils._offload_executor.submit(int).result()
        try:
            yield cluster
        finally:
            cluster.close(timeout=30)


def dask_daemon(root: Path, dataset: Path, scheduler: str, **settings: object) -> DaemonProcess:
    copy_dataset(dataset, root / "data")
    return DaemonProcess(
        root,
        workers=0,
        settings={
            "SENTINEL_DISPATCH__BACKEND": "dask",
            "SENTINEL_DISPATCH__SCHEDULER": scheduler,
            "SENTINEL_DISPATCH__RETRY_S": "0.5",
            "SENTINEL_TRIALS__REPORT_EVERY": "1",
            **settings,
        },
        faults={"0@1": "slow"},
    )


@pytest.fixture
def daemon(
    tmp_path: Path, dataset: Path, cluster: distributed.LocalCluster
) -> Iterator[DaemonProcess]:
    made = dask_daemon(tmp_path, dataset, cluster.scheduler_address)
    yield made
    made.cleanup()


def worker_pid(cluster: distributed.LocalCluster, command_id: str) -> int:
    """The pid of the Dask worker process running ``command_id``'s task."""
    with distributed.Client(cluster, set_as_default=False) as client:
        key = f"sentinel-{command_id}"

        def running() -> str | None:
            processing = client.processing()
            return next((w for w, keys in processing.items() if key in keys), None)

        address = wait_for(running, 60, f"{key} to be processing")
        pids: dict[str, int] = client.run(os.getpid, workers=[address])
        return pids[address]


def test_a_job_completes_on_a_dask_cluster_with_every_invariant(
    daemon: DaemonProcess, cluster: distributed.LocalCluster
) -> None:
    daemon.start()
    job_id = daemon.submit(
        write_job(daemon.root / "jobs", "dask", models=("xgboost", "lightgbm"), parallelism=2)
    )
    daemon.wait_for_job(job_id, timeout=180)
    events = check_invariants(daemon.state_dir)
    saved = of_type(events, "trial.saved", job_id=job_id)
    assert len(saved) == 4  # two trials of each model, all on the cluster
    # Every answer came through a Dask slot; no local worker was started.
    assert {e["worker"] for e in of_type(events, "worker.started")} <= {"dask-0", "dask-1"}
    assert all("/1-" in e["artifact"] for e in saved)
    assert of_type(events, "model.promoted", job_id=job_id)
    # The slow trial reported progress from the Dask worker (intermediate values).
    (first,) = of_type(events, "trial.saved", job_id=job_id, trial=0)
    assert len(first["intermediate"]) >= 10
    # The worker kept them beside the model too, for a daemon that finds it unreported.
    meta = orjson.loads((daemon.state_dir / first["artifact"]).with_name("meta.json").read_bytes())
    assert meta["intermediate"] == first["intermediate"]
    assert daemon.stop() == 0


def test_a_prune_request_reaches_the_trial_on_the_cluster(
    daemon: DaemonProcess, cluster: distributed.LocalCluster
) -> None:
    # Cancelling a job asks its running trials to stop, through the same prune request the
    # pruner uses; on Dask it travels as a distributed.Event that the task polls. Trial 0
    # would take 40 s (200 slow rounds); stopped at a report, it ends in well under that.
    long = {"xgboost": {**SLOW_SPACE["xgboost"], "n_estimators": [200, 201]}}
    daemon.start()
    job_id = daemon.submit(write_job(daemon.root / "jobs", "dprune", space=long))
    worker_pid(cluster, f"{job_id}.0.1")  # running on a Dask worker
    assert _cli(daemon, "cancel", job_id).returncode == 0
    answered = wait_for(
        lambda: [
            r
            for r in daemon.log_records()
            if r.get("event") == "dispatch.trial_answered"
            and r.get("command_id") == f"{job_id}.0.1"
        ],
        30,
        "trial 0's answer",
    )
    assert answered[0]["kind"] == "pruned"  # stopped at a report, not trained to the end
    assert of_type(daemon.events(), "job.cancelled", job_id=job_id)
    assert daemon.stop() == 0


def test_a_dask_trial_past_trials_timeout_s_is_cancelled_and_retried(
    tmp_path: Path, dataset: Path, cluster: distributed.LocalCluster
) -> None:
    # Attempt 1 of trial 0 would take ~40 s (200 slow rounds) and beats all along: only
    # the ceiling ends it. Its worker is slow, not gone: it is not retired.
    long = {"xgboost": {**SLOW_SPACE["xgboost"], "n_estimators": [200, 201]}}
    daemon = dask_daemon(
        tmp_path,
        dataset,
        cluster.scheduler_address,
        SENTINEL_TRIALS__TIMEOUT_S="8",
        SENTINEL_RESOURCES__SAMPLE_EVERY_S="0.2",
    )
    try:
        daemon.start()
        job_id = daemon.submit(write_job(daemon.root / "jobs", "dlate", space=long))
        daemon.wait_for_job(job_id, timeout=180)
        assert daemon.stop() == 0
    finally:
        daemon.cleanup()
    assert not violations(daemon.state_dir)
    events = daemon.events()
    (failed,) = of_type(events, "trial.failed", job_id=job_id, trial=0)
    assert failed["attempt"] == 1 and failed["retry"] is True
    assert "past trials.timeout_s (8 s)" in failed["error"], failed["error"]
    (lost,) = of_type(events, "worker.lost")
    assert lost["worker"].startswith("dask-") and lost["seq"] < failed["seq"]
    assert started_trials(events, job_id, 0) == [1, 2]
    records = [r.get("event") for r in daemon.log_records()]
    assert "daemon.trial_timed_out" in records and "dispatch.worker_retired" not in records


def test_a_dask_worker_killed_mid_trial_leads_to_a_retry(
    tmp_path: Path, dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A cluster of its own: the killed worker's nanny starts a new process, which must
    # not outlive this test.
    monkeypatch.setenv("SENTINEL_TEST_FAULTS", "1")
    monkeypatch.setenv("SENTINEL_DASK_THREADS", "1")
    with local_cluster() as cluster:
        daemon = dask_daemon(tmp_path, dataset, cluster.scheduler_address)
        try:
            daemon.start()
            job_id = daemon.submit(write_job(daemon.root / "jobs", "dkill", space=SLOW_SPACE))
            os.kill(worker_pid(cluster, f"{job_id}.0.1"), signal.SIGKILL)  # dies mid-trial
            daemon.wait_for_job(job_id, timeout=180)
            assert daemon.stop() == 0
        finally:
            daemon.cleanup()
    events = check_invariants(daemon.state_dir)
    (failed,) = of_type(events, "trial.failed", job_id=job_id, trial=0)
    assert failed["attempt"] == 1 and failed["retry"] is True
    assert "Dask worker" in failed["error"], failed["error"]
    lost = of_type(events, "worker.lost")
    assert lost and lost[0]["worker"].startswith("dask-") and lost[0]["seq"] < failed["seq"]
    assert started_trials(events, job_id, 0) == [1, 2]
    (saved,) = of_type(events, "trial.saved", job_id=job_id, trial=0)
    assert "/2-" in saved["artifact"]


def test_the_daemon_killed_and_restarted_completes_the_job_training_nothing_twice(
    daemon: DaemonProcess, cluster: distributed.LocalCluster
) -> None:
    daemon.start()
    job_id = daemon.submit(
        write_job(daemon.root / "jobs", "drestart", space=SLOW_SPACE, n_trials=3, parallelism=2)
    )
    # SIGKILL while trial 0 (slow) runs on the cluster, after another trial was saved.
    wait_for(
        lambda: (
            daemon.holder_of(f"{job_id}.0.1")
            and of_type(daemon.events(), "trial.saved", job_id=job_id)
        ),
        90,
        "a trial saved while trial 0 runs on the cluster",
    )
    daemon.kill()
    saved_before = {e["trial"] for e in of_type(daemon.events(), "trial.saved", job_id=job_id)}
    daemon.start()
    daemon.wait_for_job(job_id, timeout=180)
    events = check_invariants(daemon.state_dir)  # no trial saved twice, every artifact whole
    assert len(of_type(events, "daemon.started")) == 2
    trials_dir = daemon.state_dir / "jobs" / job_id / "trials"
    for trial in range(3):
        (saved,) = of_type(events, "trial.saved", job_id=job_id, trial=trial)
        kept = PurePosixPath(saved["artifact"]).parent.name
        folders = sorted(p.name for p in (trials_dir / str(trial)).iterdir())
        if trial in saved_before:  # finished before the kill: never trained again
            assert folders == [kept], (trial, folders)
        else:  # in flight at the kill: resubmitted under the same attempt (the old
            # execution may have gone on beside it on the other worker)
            assert kept in folders and len(folders) <= 2, (trial, folders)
            assert all(name.startswith("1-") for name in folders), (trial, folders)
    assert not of_type(events, "trial.failed", job_id=job_id)  # a restart costs no attempt
    # Every trial reports each round: one taken from disk after the restart keeps its
    # learning curve too (from its meta.json).
    assert all(e["intermediate"] for e in of_type(events, "trial.saved", job_id=job_id))
    assert daemon.stop() == 0


def test_a_job_whose_data_a_dask_worker_cannot_read_fails_naming_the_worker_and_path(
    tmp_path: Path, dataset: Path, cluster: distributed.LocalCluster
) -> None:
    daemon = dask_daemon(
        tmp_path,
        dataset,
        cluster.scheduler_address,
        # The workers "mount" the state directory somewhere it is not.
        SENTINEL_DISPATCH__WORKER_STATE_DIR=str(tmp_path / "not-mounted"),
    )
    try:
        daemon.start()
        job_id = daemon.submit(write_job(daemon.root / "jobs", "unshared"))
        end = daemon.wait_for_event(
            lambda e: e["type"] in ("job.failed", "job.completed") and e["job_id"] == job_id,
            timeout=120,
            what="the job to end",
        )
        assert end["type"] == "job.failed"
        assert "does not see the daemon's state directory" in end["reason"]
        assert "not-mounted" in end["reason"]
        assert "tcp://" in end["reason"]  # names the worker
        assert daemon.stop() == 0
    finally:
        daemon.cleanup()


def test_the_scheduler_going_away_pauses_dispatching_and_its_return_resumes_it(
    tmp_path: Path, dataset: Path
) -> None:
    # The real command-line processes, as on a host: a scheduler that crashes (SIGKILL)
    # while its worker runs trial 0, and comes back on the same port.
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    daemon = dask_daemon(tmp_path, dataset, address, SENTINEL_DISPATCH__CONNECT_TIMEOUT_S="2")
    cli = DaskProcesses(tmp_path)
    try:
        scheduler = cli.scheduler(port)
        worker = cli.worker(address)
        daemon.start()
        job_id = daemon.submit(write_job(daemon.root / "jobs", "paused", space=SLOW_SPACE))
        wait_for(lambda: daemon.holder_of(f"{job_id}.0.1"), 90, "trial 0 held by a slot")
        wait_for(lambda: _status_mentions(daemon, "1 trials running"), 60, "trial 0 running")
        scheduler.kill()
        scheduler.wait(timeout=30)
        # Flagged where an operator alerts: health.json and the metric.
        health = wait_for(lambda: _blocked(daemon, "no_scheduler"), 60, "health: no_scheduler")
        assert health["status"] == "degraded" and address in health["blocked"]["no_scheduler"]
        assert _metric(daemon, "sentinel_dispatch_blocked", reason="no_scheduler") == 1
        assert _status_mentions(daemon, "DISPATCH PAUSED")
        assert daemon.running()
        # A worker whose scheduler went away closes; systemd (Restart=always) starts both
        # units again, and the scheduler comes back on the same address.
        worker.wait(timeout=60)
        cli.scheduler(port)
        cli.worker(address)
        daemon.wait_for_job(job_id, timeout=240)
        wait_for(lambda: _status_mentions(daemon, "dispatch: dask"), 30, "status: connected")
        wait_for(lambda: _health(daemon).get("status") == "ok", 30, "health: ok again")
        assert _metric(daemon, "sentinel_dispatch_blocked", reason="no_scheduler") == 0
        assert not violations(daemon.state_dir)
        events = daemon.events()
        # The trial did not fail: it went back to the queue and ran again, same attempt.
        assert not of_type(events, "trial.failed", job_id=job_id)
        assert started_trials(events, job_id, 0) == [1]
        assert daemon.stop() == 0
        records = daemon.log_records()
        names = [r.get("event") for r in records]
        assert "dispatch.scheduler_unavailable" in names
        assert names.count("dispatch.scheduler_connected") == 2
        requeued = [r["command_id"] for r in records if r.get("event") == "dispatch.requeued"]
        assert f"{job_id}.0.1" in requeued
        assert len(requeued) == len(set(requeued)), requeued  # each trial once
        # (A scheduler back before its worker is, for a moment, a cluster with no GPU.)
        changes = [
            (r["event"], r["level"])
            for r in records
            if r.get("event") in ("dispatch.blocked", "dispatch.unblocked")
            and r["reason"] == "no_scheduler"
        ]
        assert changes == [("dispatch.blocked", "warning"), ("dispatch.unblocked", "info")]
    finally:
        daemon.cleanup()
        cli.kill_all()


def test_a_dask_worker_frozen_mid_trial_loses_it_to_a_retry_within_the_heartbeat_timeout(
    tmp_path: Path, dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # SIGSTOP keeps the worker's TCP connection to the scheduler open: Dask itself would
    # notice only after its own worker TTL (minutes). The task's heartbeats stop at once.
    monkeypatch.setenv("SENTINEL_TEST_FAULTS", "1")
    monkeypatch.setenv("SENTINEL_DASK_THREADS", "1")
    frozen: list[int] = []
    with local_cluster() as cluster:
        daemon = dask_daemon(
            tmp_path, dataset, cluster.scheduler_address, SENTINEL_WORKERS__HEARTBEAT_TIMEOUT_S="3"
        )
        try:
            daemon.start()
            job_id = daemon.submit(write_job(daemon.root / "jobs", "dfrozen", space=SLOW_SPACE))
            frozen.append(worker_pid(cluster, f"{job_id}.0.1"))
            os.kill(frozen[0], signal.SIGSTOP)
            stopped_at = time.time()
            daemon.wait_for_job(job_id, timeout=180)
            assert daemon.stop() == 0
        finally:
            for pid in frozen:  # SIGKILL ends a stopped process too
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            daemon.cleanup()
    assert not violations(daemon.state_dir)
    events = daemon.events()
    (failed,) = of_type(events, "trial.failed", job_id=job_id, trial=0)
    assert failed["attempt"] == 1 and failed["retry"] is True
    assert "sent nothing for" in failed["error"], failed["error"]
    (lost,) = [e for e in of_type(events, "worker.lost") if "sent nothing" in e["reason"]]
    assert lost["worker"].startswith("dask-") and lost["seq"] < failed["seq"]
    # Lost within the timeout (3 s), with room for a busy machine; not Dask's minutes.
    assert _epoch(lost["ts"]) - stopped_at < 3 + 10
    assert started_trials(events, job_id, 0) == [1, 2]
    (saved,) = of_type(events, "trial.saved", job_id=job_id, trial=0)
    assert "/2-" in saved["artifact"]
    (retired,) = [r for r in daemon.log_records() if r.get("event") == "dispatch.worker_retired"]
    assert retired["worker"] in lost["reason"]


def test_a_cluster_without_the_gpu_resource_is_flagged_and_the_job_runs_once_one_joins(
    tmp_path: Path, dataset: Path
) -> None:
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    daemon = dask_daemon(tmp_path, dataset, address)
    cli = DaskProcesses(tmp_path)
    try:
        cli.scheduler(port)
        cli.worker(address, resources=None)  # `dask worker` without --resources GPU=1
        _wait_for_workers(address, 1)
        daemon.start()
        job_id = daemon.submit(write_job(daemon.root / "jobs", "nogpu"))
        health = wait_for(lambda: _blocked(daemon, "no_capacity"), 60, "health: no_capacity")
        assert health["status"] == "degraded"
        assert "GPU" in health["blocked"]["no_capacity"] and "1 worker(s)" in str(health)
        assert _metric(daemon, "sentinel_dispatch_blocked", reason="no_capacity") == 1
        records = daemon.log_records()
        (blocked,) = [r for r in records if r.get("event") == "dispatch.blocked"]
        assert blocked["level"] == "warning" and blocked["reason"] == "no_capacity"
        assert "--resources GPU=1" in blocked["detail"] and "tcp://" in blocked["detail"]
        # Within seconds of reaching the scheduler (the cluster is measured every second).
        (connected,) = [r for r in records if r.get("event") == "dispatch.scheduler_connected"]
        assert _epoch(blocked["timestamp"]) - _epoch(connected["timestamp"]) < 5
        # The trials wait queued: started in the log, then pending in the queue, none held.
        # An XGBoost trial: in the GPU lane (the daemon's queue has lanes with Dask).
        pending = daemon.state_dir / "queue" / "pending-gpu" / f"{job_id}.0.1.json"
        wait_for(pending.exists, 60, "trial 0 queued")
        assert of_type(daemon.events(), "trial.started", job_id=job_id, trial=0)
        assert daemon.holder_of(f"{job_id}.0.1") is None
        cli.worker(address)  # a worker offering the resource joins
        daemon.wait_for_job(job_id, timeout=120)
        wait_for(lambda: _health(daemon).get("status") == "ok", 30, "health: ok again")
        assert _metric(daemon, "sentinel_dispatch_blocked", reason="no_capacity") == 0
        unblocked = [r for r in daemon.log_records() if r.get("event") == "dispatch.unblocked"]
        assert [(r["reason"], r["level"]) for r in unblocked] == [("no_capacity", "info")]
        assert not violations(daemon.state_dir)
        assert daemon.stop() == 0
    finally:
        daemon.cleanup()
        cli.kill_all()


def test_gpu_trials_ask_the_gpu_resource_and_cpu_trials_the_cpu_resource(
    tmp_path: Path, dataset: Path
) -> None:
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    copy_dataset(dataset, tmp_path / "data")
    daemon = DaemonProcess(
        tmp_path,
        workers=0,
        settings={"SENTINEL_DISPATCH__BACKEND": "dask", "SENTINEL_DISPATCH__SCHEDULER": address},
    )  # no slow trial: this one is about where trials run
    cli = DaskProcesses(tmp_path)
    try:
        cli.scheduler(port)
        cli.worker(address, resources="GPU=1")
        cli.worker(address, resources="CPU=1")
        _wait_for_workers(address, 2)
        with distributed.Client(address, timeout=10, set_as_default=False) as client:
            offers = {a: w["resources"] for a, w in client.scheduler_info()["workers"].items()}
            pids: dict[str, int] = client.run(os.getpid)
        resource_of_pid = {pids[a]: next(iter(r)) for a, r in offers.items()}
        assert sorted(resource_of_pid.values()) == ["CPU", "GPU"]
        daemon.start()
        job_id = daemon.submit(
            write_job(
                daemon.root / "jobs",
                "routed",
                models=("xgboost", "lightgbm"),
                n_trials=1,
                parallelism=2,
            )
        )
        daemon.wait_for_job(job_id, timeout=180)
        saved = of_type(check_invariants(daemon.state_dir), "trial.saved", job_id=job_id)
        assert len(saved) == 2
        # Each model on the Dask worker with its resource: the artifact's folder names the
        # process that trained it (attempt-host-pid).
        ran_on = {
            (
                e["model"],
                resource_of_pid[int(PurePosixPath(e["artifact"]).parent.name.rsplit("-", 1)[1])],
            )
            for e in saved
        }
        assert ran_on == {("xgboost", "GPU"), ("lightgbm", "CPU")}
        # health.json carries the counts again every STATUS_EVERY_S: the job may end first.
        dispatch = wait_for(
            lambda: (d := _health(daemon).get("dispatch") or {}).get("units") and d,
            timeout=30,
            what="health.json to carry the cluster's units",
        )
        assert dispatch["units"] == {"GPU": 1, "CPU": 1} and dispatch["slots"] == 2
        assert daemon.stop() == 0
    finally:
        daemon.cleanup()
        cli.kill_all()


class DaskProcesses:
    """``dask scheduler`` and ``dask worker`` processes, as the systemd units run them."""

    def __init__(self, folder: Path) -> None:
        self.log = folder / "dask.log"
        self.env = {**os.environ, "SENTINEL_TEST_FAULTS": "1", "SENTINEL_DASK_THREADS": "1"}
        self.procs: list[subprocess.Popen[bytes]] = []

    def _spawn(self, *argv: str) -> subprocess.Popen[bytes]:
        with self.log.open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", *argv],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs.append(proc)
        return proc

    def scheduler(self, port: int) -> subprocess.Popen[bytes]:
        return self._spawn("distributed.cli.dask_scheduler", "--port", str(port), "--no-dashboard")

    def worker(self, address: str, resources: str | None = "GPU=1") -> subprocess.Popen[bytes]:
        extra = ("--resources", resources) if resources else ()
        return self._spawn(
            "distributed.cli.dask_worker", address, "--nthreads", "1", "--no-dashboard", *extra
        )

    def kill_all(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def _wait_for_workers(address: str, n: int) -> None:
    """Until the scheduler at ``address`` has ``n`` workers (it may still be starting)."""

    def counted() -> bool:
        with (
            contextlib.suppress(OSError, TimeoutError),
            distributed.Client(address, timeout=5, set_as_default=False) as client,
        ):
            client.wait_for_workers(n, timeout=60)
            return True
        return False

    wait_for(counted, 90, f"{n} worker(s) at {address}")


def _health(daemon: DaemonProcess) -> dict[str, Any]:
    """``STATE/health.json`` (empty while it is being rewritten)."""
    with contextlib.suppress(OSError, ValueError):
        health = orjson.loads((daemon.state_dir / "health.json").read_bytes())
        if isinstance(health, dict):
            return health
    return {}


def _blocked(daemon: DaemonProcess, reason: str) -> dict[str, Any] | None:
    """``health.json`` once it says dispatching is blocked for ``reason``."""
    health = _health(daemon)
    return health if reason in (health.get("blocked") or {}) else None


def _metric(daemon: DaemonProcess, name: str, **labels: str) -> float | None:
    """One sample of the daemon's ``/metrics`` (its port is in the log)."""
    (serving,) = [r for r in daemon.log_records() if r.get("event") == "metrics.serving"][-1:]
    with urllib.request.urlopen(serving["url"], timeout=10) as resp:
        text = resp.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return None


def _epoch(stamp: str) -> float:
    """An RFC 3339 UTC time (the log's ``ts``, structlog's ``timestamp``) as epoch seconds."""
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _cli(daemon: DaemonProcess, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``sentinel <args> --state-dir STATE`` (the real command) and return it."""
    argv = [
        sys.executable,
        "-m",
        "sentinel_daemon.cli",
        *args,
        "--state-dir",
        str(daemon.state_dir),
    ]
    return subprocess.run(argv, env=daemon.env, capture_output=True, text=True, timeout=60)


def _status_mentions(daemon: DaemonProcess, text: str) -> bool:
    """Whether ``sentinel status`` prints ``text``."""
    return text in _cli(daemon, "status").stdout


def started_trials(events: list[dict[str, Any]], job_id: str, trial: int) -> list[int]:
    """The attempts of ``trial`` that were started, in order."""
    return [e["attempt"] for e in of_type(events, "trial.started", job_id=job_id, trial=trial)]
