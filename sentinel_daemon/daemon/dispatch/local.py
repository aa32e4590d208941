"""Local worker processes: start them, watch them, restart them with backoff.

The supervisor runs inside the daemon's single thread and never blocks in :meth:`poll`.
Each worker is started with ``subprocess.Popen`` in a new session (its own process group,
so a kill takes any children too; never ``fork`` from the threaded daemon), with
``CUDA_VISIBLE_DEVICES`` naming its one GPU or empty for a CPU worker. The slots come from a
:class:`~sentinel_daemon.daemon.dispatch.plan.WorkerPlan`: GPU workers and CPU workers
side by side, each told its threads (``--threads``, and ``OMP_NUM_THREADS``) and its GPU
(``--gpu``); a GPU worker claims from the queue's GPU lane, a CPU worker from the CPU
lane (:mod:`sentinel_daemon.queue.routing`).

A worker is *lost* when it exits while the supervisor is not stopping, or when its
heartbeat file has not changed for ``heartbeat_timeout_s`` (it is then killed first).
Liveness is judged by the supervisor's own monotonic clock: a heartbeat counts when the
file changed since the previous poll, so a wall-clock step can neither kill a healthy
worker nor keep a hung one. A lost worker's claimed commands are taken back from the queue
and returned with its event; the daemon must ingest ``queue.results()`` before it acts on
them (a result posted just before the death is real). The slot is restarted after a
backoff that doubles with each consecutive loss, up to a maximum, and starts again from
the minimum once a worker has lived ``stable_after_s``.

Worker ids are ``w<slot>-<generation>-<n>``: ``generation`` comes from the daemon (one per
daemon start) and ``n`` counts the slot's starts, so no id is ever reused and a restarted
worker's messages are never mistaken for its predecessor's.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import structlog

from sentinel_daemon.core.events import Event, WorkerExited, WorkerLost, WorkerStarted
from sentinel_daemon.core.ids import WorkerId
from sentinel_daemon.daemon.dispatch import PollResult
from sentinel_daemon.daemon.dispatch.plan import WorkerPlan, host_cores
from sentinel_daemon.layout import QUEUE_DIR
from sentinel_daemon.queue.maildir import HEARTBEAT, Queue
from sentinel_daemon.signals import signal_name

log = structlog.get_logger(__name__)

WorkerArgv = Callable[[str, int | None], list[str]]
#: How long :meth:`Supervisor.stop` waits for processes after SIGKILL before giving up.
KILL_WAIT_S = 10.0
_REAP_POLL_S = 0.02


@dataclass
class _Slot:
    """One place for a worker: a GPU (or none), the current process, its restart plan."""

    index: int
    gpu: int | None
    threads: int
    starts: int = 0
    failures: int = 0  # consecutive losses; sets the backoff
    worker_id: WorkerId | None = None
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    announced: bool = False  # WorkerStarted returned for the current process
    last_seen: float = 0.0  # monotonic time the heartbeat was last seen to change
    beat_stamp: tuple[int, int] | None = None  # (inode, mtime_ns) of that heartbeat
    killed_for: str | None = None  # why we killed it, until it is reaped
    restart_at: float | None = None


class Supervisor:
    """Runs ``count`` local workers over ``state_dir``'s queue (see the module doc).

    ``plan`` gives each slot its GPU (or none) and threads; without one, ``count`` slots
    take ``gpus`` in turn (an empty list means CPU workers) and share the cores evenly.
    ``worker_argv`` builds the command line of a worker from its id and GPU (the default
    runs ``python -m sentinel_daemon.worker``); ``worker_env`` adds environment variables
    for every worker (tests set ``SENTINEL_TEST_FAULTS`` there). ``heartbeat_s`` is the
    interval given to workers, by default a fifth of the timeout.
    """

    def __init__(
        self,
        state_dir: Path,
        *,
        count: int,
        gpus: list[int | None],
        heartbeat_timeout_s: float,
        restart_backoff_s: tuple[float, float] = (1.0, 30.0),
        worker_argv: WorkerArgv | None = None,
        generation: int = 0,
        heartbeat_s: float | None = None,
        stable_after_s: float = 60.0,
        worker_env: Mapping[str, str] | None = None,
        plan: WorkerPlan | None = None,
    ) -> None:
        if plan is not None:
            count = len(plan.workers)
        if count < 0:
            raise ValueError(f"count must be 0 or more, not {count}")
        if heartbeat_timeout_s <= 0:
            raise ValueError(f"heartbeat_timeout_s must be positive, not {heartbeat_timeout_s}")
        low, high = restart_backoff_s
        if not 0 <= low <= high:
            raise ValueError(f"restart_backoff_s must be (min, max), 0 <= min <= max: {low, high}")
        self.state_dir = Path(state_dir)
        self.queue = Queue(self.state_dir / QUEUE_DIR)
        self.count = count
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.heartbeat_s = heartbeat_s if heartbeat_s is not None else heartbeat_timeout_s / 5
        self.backoff = (low, high)
        self.stable_after_s = stable_after_s
        self.generation = generation
        self.worker_env = dict(worker_env or {})
        self._custom_argv = worker_argv
        if plan is not None:
            self.slots = [_Slot(i, w.gpu, w.threads) for i, w in enumerate(plan.workers)]
        else:
            slot_gpus: list[int | None] = list(gpus) or [None]
            threads = max(1, host_cores() // count) if count else 0
            self.slots = [_Slot(i, slot_gpus[i % len(slot_gpus)], threads) for i in range(count)]
        self.stopping = False

    # -- public ----------------------------------------------------------------------------

    def start(self, now: float | None = None) -> None:
        """Start every slot's worker; their ``WorkerStarted`` come from the next poll.

        ``now`` (default ``time.monotonic()``) is the clock :meth:`poll` will be given.
        """
        now = time.monotonic() if now is None else now
        for slot in self.slots:
            if slot.proc is None:
                self._spawn(slot, now)

    def poll(self, now: float) -> PollResult:
        """Look at every worker once without blocking; ``now`` is ``time.monotonic()``."""
        result = PollResult()
        for slot in self.slots:
            if slot.proc is None:
                if not self.stopping and slot.restart_at is not None and now >= slot.restart_at:
                    self._spawn(slot, now)
                if slot.proc is None:
                    continue
            self._announce(slot, result.events)
            code = slot.proc.poll()
            if code is None:
                self._check_heartbeat(slot, now)
            elif self.stopping:
                result.events.append(self._exited(slot, code))
                self._forget(slot)
            else:
                self._lost(slot, code, now, result)
        return result

    def stop(self, grace_s: float) -> list[Event]:
        """SIGTERM every worker's group, SIGKILL what is left after ``grace_s``, reap all.

        Commands the workers still hold stay claimed; a later daemon start finds them with
        ``queue.in_flight()`` and takes them back.
        """
        self.stopping = True
        events: list[Event] = []
        running = [slot for slot in self.slots if slot.proc is not None]
        for slot in running:
            self._announce(slot, events)
            if slot.killed_for is None:
                _signal_group(slot, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while any(s.proc is not None and s.proc.poll() is None for s in running):
            if time.monotonic() >= deadline:
                break
            time.sleep(_REAP_POLL_S)
        for slot in running:
            assert slot.proc is not None
            if slot.proc.poll() is None:
                log.warning("supervisor.worker_killed", worker=slot.worker_id, grace_s=grace_s)
                _signal_group(slot, signal.SIGKILL)
        for slot in running:
            assert slot.proc is not None
            try:
                code = slot.proc.wait(timeout=KILL_WAIT_S)
            except subprocess.TimeoutExpired:
                # Stuck in the kernel (a GPU driver call, say): nothing more a signal can do.
                log.error("supervisor.worker_unkillable", worker=slot.worker_id, pid=slot.proc.pid)
                continue
            events.append(self._exited(slot, code))
            self._forget(slot)
        for slot in self.slots:
            slot.restart_at = None
        return events

    #: Whether trials can be dispatched (the Dask backend's may pause; local ones never do).
    available = True
    #: :meth:`describe` is written into ``health.json`` when something else changes.
    describe_changes = False

    def status_note(self) -> str | None:
        """Why dispatching is paused, for the status line; never, for local workers."""
        return None

    def blocked(self) -> dict[str, str]:
        """Nothing holds local workers back here (admission control is the daemon's)."""
        return {}

    def describe(self) -> dict[str, object]:
        """The backend, for ``health.json`` and ``sentinel status``."""
        return {
            "backend": "local",
            "workers": len(self.worker_ids()),
            "gpu_workers": sum(1 for s in self.slots if s.gpu is not None),
            "cpu_workers": sum(1 for s in self.slots if s.gpu is None),
            "threads": sum(s.threads for s in self.slots),
        }

    def workers_by_device(self) -> dict[str, tuple[int, int]]:
        """``device -> (workers running, their threads)``, for the metrics."""
        counts = {"gpu": (0, 0), "cpu": (0, 0)}
        for slot in self.slots:
            if slot.proc is not None and slot.proc.returncode is None:
                device = "cpu" if slot.gpu is None else "gpu"
                workers, threads = counts[device]
                counts[device] = (workers + 1, threads + slot.threads)
        return counts

    def workers_alive(self) -> int:
        """Worker processes running now (for the metrics)."""
        return len(self.worker_pids())

    def gpus_in_use(self) -> set[int]:
        """The GPUs the slots were given (for admission control)."""
        return {s.gpu for s in self.slots if s.gpu is not None}

    def worker_ids(self) -> list[WorkerId]:
        """Ids of the worker processes currently started (for status and metrics)."""
        return [s.worker_id for s in self.slots if s.proc is not None and s.worker_id]

    def worker_pids(self) -> dict[WorkerId, int]:
        """Pid of each running worker not being killed (for resource sampling)."""
        return {
            s.worker_id: s.proc.pid
            for s in self.slots
            if s.proc is not None
            and s.worker_id is not None
            and s.killed_for is None
            and s.proc.returncode is None
        }

    def kill(self, worker_id: str, reason: str) -> bool:
        """SIGKILL ``worker_id``'s process group, to be reported lost for ``reason``.

        The next :meth:`poll` reaps it and returns ``worker.lost`` with ``reason`` (and the
        commands it held, taken back). False when it is not running.
        """
        for slot in self.slots:
            if slot.worker_id != worker_id or slot.proc is None or slot.killed_for is not None:
                continue
            if slot.proc.poll() is not None:
                return False  # it ended on its own: poll reports why
            slot.killed_for = reason
            log.warning("supervisor.worker_killed_on_request", worker=worker_id, reason=reason)
            _signal_group(slot, signal.SIGKILL)
            return True
        return False

    # -- internals -------------------------------------------------------------------------

    def _default_argv(self, worker_id: str, slot: _Slot) -> list[str]:
        # The worker's threads and GPU: read by sentinel_daemon.worker.loop's parser.
        argv = [sys.executable, "-m", "sentinel_daemon.worker"]
        argv += ["--state-dir", str(self.state_dir), "--id", worker_id]
        argv += ["--heartbeat-s", str(self.heartbeat_s), "--parent-pid", str(os.getpid())]
        argv += ["--threads", str(slot.threads)]
        if slot.gpu is not None:
            argv += ["--gpu", str(slot.gpu)]
        return argv

    def _argv(self, worker_id: str, slot: _Slot) -> list[str]:
        if self._custom_argv is not None:
            return self._custom_argv(worker_id, slot.gpu)
        return self._default_argv(worker_id, slot)

    def _spawn(self, slot: _Slot, now: float) -> None:
        slot.starts += 1
        worker_id = WorkerId(f"w{slot.index}-{self.generation}-{slot.starts}")
        env = {**os.environ, **self.worker_env}
        # The GPU index is NVML's (PCI order); make CUDA number the devices the same way.
        env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
        env["CUDA_VISIBLE_DEVICES"] = "" if slot.gpu is None else str(slot.gpu)
        # OpenMP's default (numpy, pandas, the libraries' own pools) keeps to the budget too.
        env["OMP_NUM_THREADS"] = str(slot.threads)
        try:
            slot.proc = subprocess.Popen(
                self._argv(worker_id, slot),
                env=env,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as exc:
            # No process, so no event: try again later, like a worker that died at once.
            slot.restart_at = now + self._next_delay(slot, lived=0.0)
            log.error("supervisor.spawn_failed", worker=worker_id, error=str(exc))
            return
        slot.worker_id = worker_id
        slot.started_at = slot.last_seen = now
        slot.beat_stamp = None
        slot.announced = False
        slot.killed_for = None
        slot.restart_at = None
        log.info(
            "supervisor.worker_spawned",
            worker=worker_id,
            pid=slot.proc.pid,
            gpu=slot.gpu,
            threads=slot.threads,
        )

    def _announce(self, slot: _Slot, events: list[Event]) -> None:
        if not slot.announced and slot.proc is not None and slot.worker_id is not None:
            events.append(
                WorkerStarted(
                    worker=slot.worker_id,
                    pid=slot.proc.pid,
                    gpu=slot.gpu,
                    device="cpu" if slot.gpu is None else "gpu",
                    threads=slot.threads,
                )
            )
            slot.announced = True

    def _check_heartbeat(self, slot: _Slot, now: float) -> None:
        if slot.killed_for is not None or slot.worker_id is None:
            return  # killed already; reaped (and reported) by a later poll
        try:
            st = os.stat(self.queue.workers / slot.worker_id / HEARTBEAT)
            stamp: tuple[int, int] | None = (st.st_ino, st.st_mtime_ns)
        except FileNotFoundError:
            stamp = None
        if stamp is not None and stamp != slot.beat_stamp:
            slot.beat_stamp, slot.last_seen = stamp, now
            return
        silent = now - slot.last_seen
        if silent >= self.heartbeat_timeout_s:
            slot.killed_for = f"no heartbeat for {silent:.1f} s"
            log.warning("supervisor.worker_hung", worker=slot.worker_id, silent_s=silent)
            _signal_group(slot, signal.SIGKILL)

    def _lost(self, slot: _Slot, code: int, now: float, result: PollResult) -> None:
        assert slot.proc is not None and slot.worker_id is not None
        worker_id, pid = slot.worker_id, slot.proc.pid
        exit_code, signum = _split_status(code)
        reason = slot.killed_for or (
            f"exited with code {exit_code}"
            if signum is None
            else f"killed by signal {signum} ({signal_name(signum)})"
        )
        result.events.append(
            WorkerLost(
                worker=worker_id,
                pid=pid,
                gpu=slot.gpu,
                reason=reason,
                exit_code=exit_code,
                signal=signum,
            )
        )
        # Only now, with the process reaped, can nothing of it still move files.
        result.taken_back.extend((worker_id, c) for c in self.queue.take_back(worker_id))
        lived = now - slot.started_at
        delay = self._next_delay(slot, lived)
        slot.restart_at = now + delay
        # Info: the daemon's journal says worker.lost at warning once the event is recorded.
        log.info(
            "supervisor.worker_lost",
            worker=worker_id,
            pid=pid,
            reason=reason,
            lived_s=round(lived, 3),
            restart_in_s=delay,
        )
        self._forget(slot)

    def _next_delay(self, slot: _Slot, lived: float) -> float:
        """Count one more loss (or the first of a new run) and return the backoff for it."""
        slot.failures = 1 if lived >= self.stable_after_s else slot.failures + 1
        return float(min(self.backoff[0] * 2 ** (slot.failures - 1), self.backoff[1]))

    def _exited(self, slot: _Slot, code: int) -> WorkerExited:
        assert slot.proc is not None and slot.worker_id is not None
        exit_code, signum = _split_status(code)
        log.info("supervisor.worker_exited", worker=slot.worker_id, code=exit_code, signal=signum)
        return WorkerExited(
            worker=slot.worker_id,
            pid=slot.proc.pid,
            gpu=slot.gpu,
            exit_code=exit_code,
            signal=signum,
        )

    @staticmethod
    def _forget(slot: _Slot) -> None:
        slot.proc = None
        slot.killed_for = None


def _split_status(code: int) -> tuple[int | None, int | None]:
    """``(exit_code, signal)`` from a Popen return code (negative means a signal)."""
    return (None, -code) if code < 0 else (code, None)


def _signal_group(slot: _Slot, signum: int) -> None:
    """Signal the worker's process group, while its leader is unreaped (so the id is ours)."""
    if slot.proc is None or slot.proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):  # exited meanwhile: poll or stop reaps it
        os.killpg(slot.proc.pid, signum)


__all__ = [
    "Supervisor",
    "WorkerArgv",
]
