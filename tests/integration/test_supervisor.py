"""The supervisor with real processes: starts, losses, hand-backs, backoff, stop.

Real workers (``python -m sentinel_daemon.worker``) where the behaviour depends on them;
tiny stand-in processes, with a clock the test drives, where only timing is at stake.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from sentinel_daemon.core.events import Event, WorkerExited, WorkerLost, WorkerStarted
from sentinel_daemon.daemon.dispatch import PollResult
from sentinel_daemon.daemon.dispatch.local import Supervisor
from sentinel_daemon.daemon.dispatch.plan import plan_workers
from sentinel_daemon.ml import synth
from sentinel_daemon.ml.devices import _visible, discover_gpus
from sentinel_daemon.queue.maildir import Queue
from sentinel_daemon.queue.messages import TrialCommand, TrialData
from sentinel_daemon.worker.faults import FAULTS_ENV
from sentinel_daemon.worker.runner import EXIT_INJECTED_CRASH
from tests.helpers import wait_for

MakeSupervisor = Callable[..., Supervisor]


@pytest.fixture(scope="session")
def data_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return synth.generate(2000, tmp_path_factory.mktemp("supervisor-data"), seed=5)


@pytest.fixture
def make_supervisor(state_dir: Path) -> Iterator[MakeSupervisor]:
    """Build supervisors over the test's state dir; each is stopped at the end."""
    made: list[Supervisor] = []

    def make(**kwargs: Any) -> Supervisor:
        kwargs.setdefault("gpus", [])
        kwargs.setdefault("heartbeat_timeout_s", 10.0)
        sup = Supervisor(state_dir, **kwargs)
        made.append(sup)
        return sup

    yield make
    for sup in made:
        sup.stop(grace_s=0.5)


def _command(data: tuple[Path, Path], trial: int, fault: str) -> TrialCommand:
    return TrialCommand(
        job_id="stest",
        trial=trial,
        attempt=1,
        model="xgboost",
        params={"n_estimators": 400, "max_depth": 3, "learning_rate": 0.05, "_fault": fault},
        data=TrialData(
            transactions=data[0],
            identity=data[1],
            cache_dir=Path("cache"),
            test_fraction=0.2,
            valid_fraction=0.2,
        ),
        artifact_dir="models/stest",
        report_every=5,
    )


class Watch:
    """Polls a supervisor, keeping every event and taken-back command it returns."""

    def __init__(self, sup: Supervisor, clock: Callable[[], float] = time.monotonic) -> None:
        self.sup = sup
        self.clock = clock
        self.events: list[Event] = []
        self.taken_back: list[Any] = []

    def poll(self, now: float | None = None) -> PollResult:
        result = self.sup.poll(self.clock() if now is None else now)
        self.events += result.events
        self.taken_back += result.taken_back
        return result

    def of(self, kind: type[Any]) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]

    def until(
        self, kind: type[Any], n: int = 1, now: float | None = None, timeout: float = 20.0
    ) -> list[Any]:
        def enough() -> list[Any]:
            self.poll(now)
            found = self.of(kind)
            return found if len(found) >= n else []

        return wait_for(enough, timeout, f"{n} {kind.__name__}")


def _no_process_left(pids: list[int]) -> bool:
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            continue
    return True


def test_a_killed_worker_is_lost_its_command_taken_back_and_its_slot_restarted(
    state_dir: Path, data_files: tuple[Path, Path], make_supervisor: MakeSupervisor
) -> None:
    queue = Queue(state_dir / "queue")
    sup = make_supervisor(
        count=2,
        heartbeat_s=0.1,
        restart_backoff_s=(0.3, 5.0),
        worker_env={FAULTS_ENV: "1"},
    )
    watch = Watch(sup)
    sup.start()
    started = watch.until(WorkerStarted, 2)
    assert len({e.worker for e in started}) == 2
    assert all(e.gpu is None for e in started)

    command = _command(data_files, 0, "slow")
    queue.put(command)
    holder = str(wait_for(lambda: queue.in_flight().get(command.command_id), what="a claim"))
    victim = next(e for e in started if e.worker == holder)
    os.kill(victim.pid, signal.SIGKILL)

    lost = watch.until(WorkerLost)[0]
    assert (lost.worker, lost.pid, lost.signal, lost.exit_code) == (holder, victim.pid, 9, None)
    assert lost.reason == "killed by signal 9 (SIGKILL)"
    assert watch.taken_back == [(holder, command)]
    assert queue.in_flight() == {}, "the command is in dead/, no longer claimed"

    restarted = watch.until(WorkerStarted, 3)[2]
    assert restarted.worker not in {e.worker for e in started}, "worker ids are never reused"
    assert restarted.worker.startswith(holder.rsplit("-", 1)[0] + "-")  # same slot

    # Once it beats, its SIGTERM handler is in place (before, SIGTERM simply kills it).
    wait_for(lambda: queue.last_beat(restarted.worker), what="the new worker's heartbeat")
    exited = [e for e in sup.stop(grace_s=10.0) if isinstance(e, WorkerExited)]
    assert len(exited) == 2
    survivors = {e.worker for e in [*started, restarted]} - {holder}
    assert {e.worker for e in exited} == survivors
    assert all(e.exit_code == 0 for e in exited), "workers stop cleanly on SIGTERM"
    assert _no_process_left([e.pid for e in [*started, restarted]])


def test_a_hung_worker_is_killed_and_lost_for_want_of_heartbeats(
    state_dir: Path, data_files: tuple[Path, Path], make_supervisor: MakeSupervisor
) -> None:
    queue = Queue(state_dir / "queue")
    sup = make_supervisor(
        count=1,
        heartbeat_timeout_s=3.0,
        heartbeat_s=0.1,
        restart_backoff_s=(60.0, 60.0),  # no restart within the test
        worker_env={FAULTS_ENV: "1"},
    )
    watch = Watch(sup)
    sup.start()
    command = _command(data_files, 0, "hang")
    queue.put(command)

    lost = watch.until(WorkerLost, timeout=30)[0]
    assert lost.reason.startswith("no heartbeat for ")
    assert lost.signal == signal.SIGKILL
    assert watch.taken_back == [(lost.worker, command)]
    assert sup.stop(grace_s=1.0) == []


def test_a_trial_that_crashes_its_worker_is_lost_with_the_exit_code(
    state_dir: Path, data_files: tuple[Path, Path], make_supervisor: MakeSupervisor
) -> None:
    queue = Queue(state_dir / "queue")
    sup = make_supervisor(count=1, restart_backoff_s=(60.0, 60.0), worker_env={FAULTS_ENV: "1"})
    watch = Watch(sup)
    sup.start()
    command = _command(data_files, 0, "crash")
    queue.put(command)

    lost = watch.until(WorkerLost)[0]
    assert lost.reason == f"exited with code {EXIT_INJECTED_CRASH}"
    assert (lost.exit_code, lost.signal) == (EXIT_INJECTED_CRASH, None)
    assert watch.taken_back == [(lost.worker, command)]


# ---- stand-in processes, driven clock ---------------------------------------------------


def _python(code: str) -> Callable[[str, int | None], list[str]]:
    return lambda worker_id, gpu: [sys.executable, "-c", code]


def test_restart_backoff_doubles_per_consecutive_loss_up_to_the_max_and_resets_after_a_long_life(
    make_supervisor: MakeSupervisor,
) -> None:
    # The stand-in lives 50 ms, so the poll that starts it never sees it end too.
    sup = make_supervisor(
        count=1,
        heartbeat_timeout_s=1000.0,
        restart_backoff_s=(1.0, 4.0),
        stable_after_s=50.0,
        worker_argv=_python("import time; time.sleep(0.05); raise SystemExit(3)"),
    )
    watch = Watch(sup)
    sup.start(now=0.0)
    lost = watch.until(WorkerLost, 1, now=0.0)[-1]
    assert (lost.reason, lost.exit_code, lost.signal) == ("exited with code 3", 3, None)

    now = 0.0
    for delay in (1.0, 2.0, 4.0, 4.0):  # each worker died at once: doubling, capped at 4
        assert not watch.poll(now + delay - 0.01).events, f"restarted before {delay} s"
        now += delay
        assert [type(e) for e in watch.poll(now).events] == [WorkerStarted]
        watch.until(WorkerLost, len(watch.of(WorkerStarted)), now=now)
    # The next worker is seen to end 60 s after its start: past stable_after_s, so the
    # delay after it is the minimum again.
    now += 4.0
    assert [type(e) for e in watch.poll(now).events] == [WorkerStarted]
    now += 60.0
    watch.until(WorkerLost, len(watch.of(WorkerStarted)), now=now)
    assert not watch.poll(now + 0.99).events
    assert [type(e) for e in watch.poll(now + 1.0).events] == [WorkerStarted]
    ids = [e.worker for e in watch.of(WorkerStarted)]
    assert ids == [f"w0-0-{n}" for n in range(1, 8)], "one new id per start of the slot"


def test_a_worker_that_never_beats_is_killed_with_its_whole_process_group(
    make_supervisor: MakeSupervisor,
) -> None:
    # The stand-in starts a child of its own, as a library might: the kill must take it too.
    code = (
        "import subprocess, sys, time\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "time.sleep(60)\n"
    )
    sup = make_supervisor(count=1, heartbeat_timeout_s=5.0, worker_argv=_python(code))
    watch = Watch(sup)
    sup.start(now=0.0)
    started = watch.until(WorkerStarted, now=0.0)[0]
    worker = psutil.Process(started.pid)
    grandchild = wait_for(lambda: worker.children(), what="the worker's own child")[0]
    assert not watch.poll(4.9).events

    lost = watch.until(WorkerLost, now=5.0)[0]
    assert lost.reason == "no heartbeat for 5.0 s"
    assert lost.signal == signal.SIGKILL
    wait_for(lambda: _no_process_left([grandchild.pid]), what="the grandchild killed too")


def test_stop_kills_a_worker_that_ignores_sigterm_after_the_grace_period(
    tmp_path: Path, make_supervisor: MakeSupervisor
) -> None:
    ready = tmp_path / "ready"
    code = (
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        f"open({str(ready)!r}, 'w').close()\n"
        "time.sleep(60)\n"
    )
    sup = make_supervisor(count=1, worker_argv=_python(code))
    sup.start()
    wait_for(ready.exists, what="the stand-in to ignore SIGTERM")
    exited = sup.stop(grace_s=0.3)
    assert len(exited) == 2, "WorkerStarted (never polled) and WorkerExited"
    assert isinstance(exited[0], WorkerStarted)
    assert isinstance(exited[1], WorkerExited)
    assert (exited[1].signal, exited[1].exit_code) == (signal.SIGKILL, None)
    assert sup.poll(time.monotonic()).events == [], "nothing restarts after stop"


def test_each_worker_gets_its_gpu_in_cuda_visible_devices(
    tmp_path: Path, make_supervisor: MakeSupervisor
) -> None:
    out = tmp_path / "env"
    out.mkdir()
    code = (
        "import os, sys, pathlib\n"
        f"pathlib.Path({str(out)!r}, sys.argv[1]).write_text("
        "os.environ['CUDA_VISIBLE_DEVICES'])\n"
    )
    sup = make_supervisor(
        count=3,
        gpus=[0, 1],
        restart_backoff_s=(60.0, 60.0),
        worker_argv=lambda worker_id, gpu: [sys.executable, "-c", code, worker_id],
    )
    watch = Watch(sup)
    sup.start()
    ended = watch.until(WorkerLost, 3)  # the stand-ins exit at once
    assert sorted(e.gpu for e in ended) == [0, 0, 1]  # GPUs are given to slots in turn
    seen = {p.name: p.read_text() for p in out.iterdir()}
    assert seen == {"w0-0-1": "0", "w1-0-1": "1", "w2-0-1": "0"}


def test_a_planned_worker_is_told_its_gpu_and_threads_and_announced_with_them(
    tmp_path: Path, make_supervisor: MakeSupervisor
) -> None:
    out = tmp_path / "env"
    out.mkdir()
    code = (
        "import os, sys, pathlib\n"
        f"pathlib.Path({str(out)!r}, sys.argv[1]).write_text("
        "os.environ['CUDA_VISIBLE_DEVICES'] + '/' + os.environ['OMP_NUM_THREADS'])\n"
    )
    plan = plan_workers(cores=4, gpus=[3], per_gpu=1, cpu=1, count=None)
    sup = make_supervisor(
        count=0,
        plan=plan,
        restart_backoff_s=(60.0, 60.0),
        worker_argv=lambda worker_id, gpu: [sys.executable, "-c", code, worker_id],
    )
    watch = Watch(sup)
    sup.start()
    watch.until(WorkerLost, 2)  # the stand-ins exit at once
    started = {e.worker: (e.gpu, e.device, e.threads) for e in watch.of(WorkerStarted)}
    assert started == {"w0-0-1": (3, "gpu", 1), "w1-0-1": (None, "cpu", 3)}
    assert {p.name: p.read_text() for p in out.iterdir()} == {"w0-0-1": "3/1", "w1-0-1": "/3"}
    assert sup.describe() | {"workers": 0} == {
        "backend": "local",
        "workers": 0,
        "gpu_workers": 1,
        "cpu_workers": 1,
        "threads": 4,
    }


def test_gpu_discovery_without_a_driver_is_an_empty_list_and_one_cpu_worker() -> None:
    gpus = discover_gpus()  # no NVIDIA driver on the test machines: [] and no exception
    assert isinstance(gpus, list)
    plan = plan_workers(cores=2, gpus=gpus, per_gpu=2, cpu=None, count=None)
    if not gpus:
        assert [w.device for w in plan.workers] == ["cpu"]


def test_cuda_visible_devices_of_the_daemon_limits_the_gpus_it_hands_out() -> None:
    indices, uuids = [0, 1, 2], ["GPU-a", "GPU-b", "GPU-c"]
    assert _visible(indices, uuids, None) == [0, 1, 2]
    assert _visible(indices, uuids, "") == []
    assert _visible(indices, uuids, "2,0") == [2, 0]
    assert _visible(indices, uuids, "GPU-b") == [1]
    assert _visible(indices, uuids, "1,7,2") == [1], "CUDA stops at the first invalid entry"
