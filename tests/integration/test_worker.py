"""Real worker processes (``python -m sentinel_daemon.worker``) against a real queue folder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from sentinel_daemon import ml
from sentinel_daemon.ml import synth
from sentinel_daemon.queue.maildir import Queue
from sentinel_daemon.queue.messages import (
    Failed,
    Progress,
    Pruned,
    Saved,
    TrialCommand,
    TrialData,
    WorkerMessage,
)
from sentinel_daemon.worker.faults import FAULTS_ENV
from sentinel_daemon.worker.runner import EXIT_DEVICE_LOST, EXIT_OK, EXIT_ORPHANED
from tests.helpers import wait_for

REPO = Path(__file__).resolve().parents[2]
ROWS = 2000
XGB = {"n_estimators": 20, "max_depth": 3, "learning_rate": 0.3}
LGB = {"n_estimators": 20, "max_depth": 3, "num_leaves": 8, "min_child_samples": 10}
# Many rounds at a slow pace (the "slow" fault): the trial is surely running when we act.
SLOW = {"n_estimators": 400, "max_depth": 3, "learning_rate": 0.05, "_fault": "slow"}
StartWorker = Callable[..., subprocess.Popen[bytes]]


@pytest.fixture(scope="session")
def data_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return synth.generate(ROWS, tmp_path_factory.mktemp("worker-data"), seed=11)


@pytest.fixture
def queue(state_dir: Path) -> Queue:
    return Queue(state_dir / "queue")


@pytest.fixture
def start_worker(state_dir: Path, tmp_path: Path) -> Iterator[StartWorker]:
    """Start worker processes; any still running at the end are killed and reaped."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(
        worker_id: str, *, faults: bool = False, parent_pid: int | None = None
    ) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if k != FAULTS_ENV}
        if faults:
            env[FAULTS_ENV] = "1"
        argv = [sys.executable, "-m", "sentinel_daemon.worker", "--state-dir", str(state_dir)]
        argv += ["--id", worker_id, "--heartbeat-s", "0.1", "--threads", "1"]
        if parent_pid is not None:
            argv += ["--parent-pid", str(parent_pid)]
        with open(tmp_path / f"{worker_id}.log", "wb") as stderr:
            proc = subprocess.Popen(argv, cwd=REPO, env=env, stderr=stderr)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def _command(
    data: tuple[Path, Path],
    trial: int,
    model: str = "xgboost",
    params: dict[str, Any] | None = None,
) -> TrialCommand:
    transactions, identity = data
    return TrialCommand(
        job_id="wtest",
        trial=trial,
        attempt=1,
        model=model,
        params=params if params is not None else (XGB if model == "xgboost" else LGB),
        data=TrialData(
            transactions=transactions,
            identity=identity,
            cache_dir=Path("cache"),  # relative: under STATE
            test_fraction=0.2,
            valid_fraction=0.2,
        ),
        artifact_dir=f"models/wtest/{trial}",  # a folder per trial, as the daemon gives
        report_every=5,
    )


class Inbox:
    """The daemon's side of results/: collects messages and acknowledges them."""

    def __init__(self, queue: Queue) -> None:
        self.queue = queue
        self.messages: list[WorkerMessage] = []

    def collect(self) -> list[WorkerMessage]:
        for path, message in self.queue.results():
            self.messages.append(message)
            self.queue.ack(path)
        return self.messages

    def of(self, command_id: str, kind: type[Any]) -> list[Any]:
        self.collect()
        return [m for m in self.messages if m.command_id == command_id and isinstance(m, kind)]

    def wait(self, command_id: str, kind: type[Any], timeout: float = 20.0) -> Any:
        return wait_for(
            lambda: self.of(command_id, kind), timeout, f"{kind.__name__} of {command_id}"
        )[0]


def _beat_info(queue: Queue, worker_id: str) -> dict[str, Any]:
    beat = queue.last_beat(worker_id)
    return beat[1] if beat is not None else {}


def test_worker_saves_verified_models_finishes_commands_and_reuses_prepared_data(
    state_dir: Path, queue: Queue, data_files: tuple[Path, Path], start_worker: StartWorker
) -> None:
    first, rejected, second = (
        _command(data_files, 0, "xgboost"),
        _command(data_files, 1, "xgboost", {"n_estimators": 10, "_fault": "crash"}),
        _command(data_files, 2, "lightgbm"),
    )
    for command in (first, rejected, second):
        queue.put(command)
    proc = start_worker("wa")
    inbox = Inbox(queue)

    for command in (first, second):
        saved: Saved = inbox.wait(command.command_id, Saved)
        assert inbox.of(command.command_id, Progress), "progress was reported while training"
        artifact = state_dir / saved.artifact
        assert artifact.parent == state_dir / "models/wtest" / str(command.trial) / "1-wa"
        loaded = ml.load_model(artifact, saved.sha256)
        assert loaded.model_kind == command.model
        assert loaded.meta["command_id"] == command.command_id
        assert saved.value == saved.metrics["roc_auc"] > 0.5
        assert 0 < saved.train_seconds <= saved.duration_s
    # Without SENTINEL_TEST_FAULTS the fault hook is an unknown parameter, not a crash.
    failed: Failed = inbox.wait(rejected.command_id, Failed)
    assert "unknown parameter '_fault'" in failed.error

    wait_for(lambda: queue.in_flight() == {}, what="every command finished")
    wait_for(lambda: _beat_info(queue, "wa").get("trials_done") == 3, what="a fresh beat")
    info = _beat_info(queue, "wa")
    # The rejected command never reached the data; the lightgbm trial reused the first's.
    assert info["data_loads"] == 1, "the data was prepared once"
    assert info["data_reuses"] == 1
    assert info["command_id"] is None

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == EXIT_OK


def test_failed_trial_is_reported_and_the_worker_carries_on_to_a_pruned_one(
    queue: Queue, data_files: tuple[Path, Path], start_worker: StartWorker
) -> None:
    boom = _command(data_files, 0, params={**XGB, "_fault": "raise"})
    slow = _command(data_files, 1, params=SLOW)
    queue.put(boom)
    queue.put(slow)
    proc = start_worker("wb", faults=True)
    inbox = Inbox(queue)

    failed: Failed = inbox.wait(boom.command_id, Failed)
    assert "InjectedFault" in failed.error
    assert "InjectedFault" in failed.traceback

    inbox.wait(slow.command_id, Progress)
    assert queue.request_prune("wb", slow.command_id)
    pruned: Pruned = inbox.wait(slow.command_id, Pruned)
    assert pruned.step >= 5
    assert not inbox.of(slow.command_id, Saved)
    wait_for(lambda: queue.in_flight() == {}, what="both commands finished")

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == EXIT_OK


def test_sigterm_abandons_the_running_trial_silently_and_exits_zero(
    queue: Queue, data_files: tuple[Path, Path], start_worker: StartWorker
) -> None:
    slow = _command(data_files, 0, params=SLOW)
    queue.put(slow)
    proc = start_worker("wc", faults=True)
    inbox = Inbox(queue)
    inbox.wait(slow.command_id, Progress)

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == EXIT_OK
    inbox.collect()
    assert {type(m) for m in inbox.messages} == {Progress}, "an abandoned trial posts no end"
    # Still claimed: the daemon takes it back and runs it elsewhere.
    assert queue.in_flight() == {slow.command_id: "wc"}


def test_worker_that_is_not_the_child_of_the_given_parent_exits_at_once(
    start_worker: StartWorker,
) -> None:
    # The test is the worker's parent, not this pid: as if the daemon had died before.
    assert start_worker("wd", parent_pid=os.getpid() + 1).wait(timeout=15) == EXIT_ORPHANED


def test_worker_exits_when_its_parent_dies(state_dir: Path, queue: Queue) -> None:
    # A middle process plays the daemon: it starts the worker, then exits without it.
    middle_code = (
        "import os, subprocess, sys\n"
        "p = subprocess.Popen(sys.argv[1:] + ['--parent-pid', str(os.getpid())])\n"
        "print(p.pid, flush=True)\n"
        "sys.stdin.read()\n"
    )
    argv = [sys.executable, "-m", "sentinel_daemon.worker", "--state-dir", str(state_dir)]
    argv += ["--id", "we", "--heartbeat-s", "0.1"]
    middle = subprocess.Popen(
        [sys.executable, "-c", middle_code, *argv], cwd=REPO, stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )  # fmt: skip
    assert middle.stdout is not None and middle.stdin is not None
    worker = psutil.Process(int(middle.stdout.readline()))
    try:
        wait_for(lambda: queue.last_beat("we"), 15, "the worker's first heartbeat")
        middle.stdin.close()
        middle.wait(timeout=15)
        wait_for(lambda: _ended(worker), 15, "the orphaned worker to exit")
    finally:
        if not _ended(worker):
            worker.kill()
        middle.kill()
        middle.wait()


def _ended(proc: psutil.Process) -> bool:
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_worker_whose_gpu_is_lost_answers_the_trial_then_exits_for_a_fresh_process(
    queue: Queue, data_files: tuple[Path, Path], start_worker: StartWorker
) -> None:
    lost = _command(data_files, 0, params={**XGB, "_fault": "gpu-lost"})
    queue.put(lost)
    proc = start_worker("wg", faults=True)
    failed: Failed = Inbox(queue).wait(lost.command_id, Failed)
    assert "cudaErrorUnknown" in failed.error
    # A CUDA context does not recover: the worker leaves so that a new one is started.
    assert proc.wait(timeout=30) == EXIT_DEVICE_LOST
    assert queue.in_flight() == {}  # it answered and finished its command first


def test_a_worker_refuses_data_swapped_for_a_fifo_or_outside_its_roots_and_carries_on(
    queue: Queue, data_files: tuple[Path, Path], start_worker: StartWorker, tmp_path: Path
) -> None:
    fifo = tmp_path / "fifo.csv"
    os.mkfifo(fifo)  # a worker that opened it blocking would wait for a writer forever
    outside = _command(data_files, 0)
    roots = (tmp_path / "elsewhere",)
    outside = outside.model_copy(
        update={"data": outside.data.model_copy(update={"data_roots": roots})}
    )
    blocked = _command((fifo, data_files[1]), 1)
    good = _command(data_files, 2)
    for command in (outside, blocked, good):
        queue.put(command)
    proc = start_worker("wf")
    inbox = Inbox(queue)

    refused: Failed = inbox.wait(outside.command_id, Failed, timeout=60)
    assert "DataError" in refused.error and "outside the data roots" in refused.error
    assert str(data_files[0]) in refused.error
    fifo_failed: Failed = inbox.wait(blocked.command_id, Failed, timeout=60)
    assert f"{fifo}: is a FIFO" in fifo_failed.error
    inbox.wait(good.command_id, Saved, timeout=60)

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == EXIT_OK


def test_a_worker_keeps_xgboost_matrices_across_trials_of_one_data_set(
    state_dir: Path, queue: Queue, data_files: tuple[Path, Path], start_worker: StartWorker
) -> None:
    commands = [
        _command(data_files, 0, "xgboost"),
        _command(data_files, 1, "xgboost", XGB | {"max_depth": 2}),
        _command(data_files, 2, "lightgbm"),
    ]
    for command in commands:
        queue.put(command)
    proc = start_worker("wm")
    inbox = Inbox(queue)
    for command in commands:
        inbox.wait(command.command_id, Saved)
    wait_for(lambda: _beat_info(queue, "wm").get("trials_done") == 3, what="a fresh beat")
    info = _beat_info(queue, "wm")
    assert (info["matrix_builds"], info["matrix_reuses"]) == (1, 1)
    assert (info["data_loads"], info["data_reuses"]) == (1, 2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == EXIT_OK
