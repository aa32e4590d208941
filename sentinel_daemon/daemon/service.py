"""``sentinel run``: the daemon's core loop.

One thread owns the event log and the state; the other parts talk to it by messages and
files. The inbox thread hands it job files through a queue (:mod:`~.intake` records them);
workers (separate processes, or Dask tasks, behind a :class:`~.dispatch.Dispatcher`) hand it
answers through the queue directory (:mod:`~.results` gathers them); each job's
:class:`~.actor.JobActor` turns the job's state and an input into a decision: events, and
effects that the :class:`~.effects.Effector` carries out. Every turn of the loop is: gather
what happened, decide, append (fsync), fold into the state, then act. Nothing acts on a
decision before it is durable.

Start-up is recovery (:mod:`~.recovery`): replay the log (snapshot plus tail), record
``daemon.started``, kill workers a crashed predecessor left behind, ingest results that
arrived while no daemon ran (a trial saved then is recorded, never retrained), take back the
commands its workers held and queue every trial that is running in the log but queued
nowhere, and look again at job files claimed but never recorded. Then the workers start
and the inbox is watched.

Stopping: the first SIGTERM or SIGINT stops dispatching (pending commands are withdrawn;
the log still has them running, so the next start queues them again), lets claimed trials
finish for ``shutdown.grace_s``, stops the workers (SIGTERM, then SIGKILL after
``shutdown.worker_grace_s``), records ``daemon.stopped`` and exits 0. A second signal kills
the workers' process groups and exits :data:`EXIT_FORCED`.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import queue as queue_mod
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any

import optuna
import structlog

from sentinel_daemon import __version__
from sentinel_daemon.core.events import DaemonStarted, DaemonStopped
from sentinel_daemon.core.ids import WorkerId
from sentinel_daemon.daemon import recovery
from sentinel_daemon.daemon.actor import ActorContext
from sentinel_daemon.daemon.blocking import DispatchBlocks
from sentinel_daemon.daemon.committer import Committer
from sentinel_daemon.daemon.control import handle_requests
from sentinel_daemon.daemon.deadlines import TrialClock
from sentinel_daemon.daemon.dispatch import Dispatcher, local_plan, open_dispatcher
from sentinel_daemon.daemon.effects import Effector
from sentinel_daemon.daemon.health import Health, status_line
from sentinel_daemon.daemon.hostpause import REASON as HOST_REASON
from sentinel_daemon.daemon.hostpause import HostPause
from sentinel_daemon.daemon.intake import Intake
from sentinel_daemon.daemon.metrics import DaemonMetrics
from sentinel_daemon.daemon.monitor import AdmissionGate, ResourceMonitor, sample_round
from sentinel_daemon.daemon.reports import ReportRunner
from sentinel_daemon.daemon.results import Results
from sentinel_daemon.daemon.scrubber import Scrubber
from sentinel_daemon.errors import StateDirUnusable
from sentinel_daemon.fsutil import restrict_umask
from sentinel_daemon.layout import CONTROL_DIR, QUEUE_DIR
from sentinel_daemon.log.segments import LogWriteFailed
from sentinel_daemon.log.store import Store
from sentinel_daemon.ml.devices import discover_gpus
from sentinel_daemon.queue.maildir import Queue
from sentinel_daemon.queue.routing import DEVICES
from sentinel_daemon.sdnotify import Notifier
from sentinel_daemon.settings import Settings, exported, settings_digest

log = structlog.get_logger(__name__)

EXIT_OK = 0
EXIT_ERROR = 1
#: A second SIGTERM/SIGINT: workers were killed, not stopped.
EXIT_FORCED = 3

#: Loop period while trials are in flight, and while idle.
BUSY_TICK_S = 0.002
IDLE_TICK_S = 0.05
#: How often running attempts are checked for a command that is in no queue folder.
ORPHAN_CHECK_S = 2.0
#: How often workers this daemon did not start are checked for a stale heartbeat.
EXTERNAL_CHECK_S = 1.0


@dataclass
class _Stop:
    signals: int = 0
    deadline: float | None = None


def _install_signals(stop: _Stop) -> dict[int, Any]:
    """SIGTERM and SIGINT count into ``stop``; the handlers they replace."""

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.signals += 1  # only a flag: the loop does the work

    # `kill -USR1 PID` writes every thread's stack to stderr (the journal): what an
    # operator needs from a daemon that stopped answering. Written by C code, in any state.
    with contextlib.suppress(RuntimeError, ValueError, OSError):  # no usable stderr
        faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True)
    return {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}


class Daemon:
    """The core loop over one state directory (see the module doc)."""

    def __init__(
        self,
        settings: Settings,
        *,
        workers: int | None = None,
        worker_env: dict[str, str] | None = None,
    ) -> None:
        self.settings = settings
        # Optuna's INFO lines ("A new study created") would say nothing the log does not.
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.state_dir = Path(os.path.abspath(settings.state_dir))
        self.cwd = Path.cwd()
        # A list in workers.gpus is taken as it is, even where NVML sees no GPU (pinning).
        pinned = settings.workers.gpus
        self.gpus = list(pinned) if pinned is not None else discover_gpus()
        # 0 workers is a real choice: only workers systemd runs (sentinel-worker@) train.
        self.requested_workers = workers
        self.plan = local_plan(settings, workers=workers, gpus=self.gpus)
        self.worker_count = len(self.plan.workers)
        self.worker_env = worker_env or {}
        # GPU and CPU workers side by side: commands go into a lane of their kind. The
        # Dask dispatcher takes each kind from its lane while the cluster has its resource.
        lanes = frozenset(DEVICES) if settings.dispatch.backend == "dask" else self.plan.lanes
        self.queue = Queue(self.state_dir / QUEUE_DIR, settings.queue, lanes=lanes)
        # Not a SimpleQueue: on Python 3.11 its get(timeout=...) blocks forever when a signal
        # (SIGTERM) interrupts the wait and the deadline passes before it resumes (CI saw the
        # daemon ignore SIGTERM so). Queue waits on threading locks, which check for that.
        self.files: queue_mod.Queue[Path] = queue_mod.Queue()
        self.stop_state = _Stop()
        self.store: Store | None = None
        self.core: Committer | None = None
        self.dispatcher: Dispatcher | None = None
        self.intake: Intake | None = None
        self.results: Results | None = None
        self._next_external_check = self._next_orphan_check = self._next_sample = 0.0
        self.notifier = Notifier()
        self.metrics = DaemonMetrics(self.state_dir)
        self.metrics.gpus.set(len(self.gpus))
        self.monitor = ResourceMonitor(self.gpus, daemon_pid=os.getpid())
        self.admission = AdmissionGate(settings.resources)
        self.reports = ReportRunner(self.state_dir)
        self.effector = Effector(self.state_dir, self.queue, self.reports)
        self.health = Health(self.state_dir, self.cwd, self.notifier)
        self.blocks = DispatchBlocks()
        self.trial_clock = TrialClock(settings.trials.timeout_s)
        self.host = HostPause(self.state_dir, settings.resources.min_free_disk_bytes)
        self.scrubber: Scrubber | None = None

    # ---- life cycle ----------------------------------------------------------------------

    def run(self) -> int:
        """Recover, serve until a signal, stop; returns the exit code."""
        with exported(self.settings):  # workers, stages and reports inherit the settings
            return self._run()

    def _run(self) -> int:
        try:
            recovery.make_folders(self.state_dir)
        except OSError as exc:
            where = Path(exc.filename) if exc.filename else self.state_dir
            raise StateDirUnusable(where, exc.strerror or str(exc)) from exc
        self.health.write(None)
        self.store = Store.open(
            self.state_dir,
            segment_bytes=self.settings.eventlog.segment_bytes,
            snapshot_every=self.settings.eventlog.snapshot_every,
            sync=self.metrics.timed_sync(os.fdatasync),
        )
        self.metrics.initialise(self.store.state)
        trials = self.settings.trials
        roots = tuple(Path(os.path.abspath(r)) for r in self.settings.resolved_data_roots(self.cwd))
        ctx = ActorContext(
            self.state_dir, trials.max_attempts, trials.report_every, roots, self.settings.models
        )
        self.core = Committer(self.store, self.effector, self.metrics, ctx, self.host.observe)
        previous = _install_signals(self.stop_state)
        try:
            if self.settings.metrics.enabled:
                self.metrics.serve(self.settings.metrics.address, self.settings.metrics.port)
            self.recover()
            self._serve()
            return self._shutdown()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            faulthandler.unregister(signal.SIGUSR1)
            self._release()

    def _release(self) -> None:
        """Leave nothing running, whatever happened (also on a fatal error)."""
        self.reports.stop()
        if self.intake is not None:
            self.intake.stop()
        self.effector.stop_stages()
        if self.dispatcher is not None and self.dispatcher.worker_ids():
            self.dispatcher.stop(grace_s=0.0)
        if self.scrubber is not None:
            self.scrubber.join(timeout=30.0)  # it reads segments: let it end first
        if self.store is not None:
            self.store.close(snapshot=True)
            self.store = None
        self.metrics.close()
        self.monitor.close()

    def recover(self) -> None:
        """Start-up, in the order :mod:`~sentinel_daemon.daemon.recovery` describes."""
        core, t0 = self._core, time.monotonic()
        state, timeout = core.state, self.settings.workers.heartbeat_timeout_s
        generation = core.commit([DaemonStarted(pid=os.getpid(), version=__version__)])[-1]
        core.commit(recovery.reap_orphans(state))
        stale = self.queue.recover()
        relaned = self.queue.relane()  # before any put: lanes no worker serves now emptied
        for job in state.running_jobs():  # one that cannot go on fails now, never the start
            core.guard(
                job.job_id, "rebuilding it from the log", partial(recovery.rebuild, core, job)
            )
        self.results = Results(self.state_dir, self.queue, core, timeout)
        self.results.host_full = lambda: self.host.lost_to_host(time.monotonic())
        self.results.ingest()
        self.results.recover_saved()
        for job_id in recovery.missing_reports(state, self.state_dir):
            self.reports.add(job_id)
        requeued = recovery.requeue_held(self.queue, state, timeout)
        requeued += recovery.redispatch(core, self.queue)
        self.intake = Intake(self.state_dir, self.settings, self.cwd, core)
        self.intake.open(on_file=self.files.put)
        self.intake.reconsider_claimed()  # claimed before a crash but never recorded
        self.dispatcher = open_dispatcher(
            self.state_dir,
            self.settings,
            plan=self.plan,
            generation=generation,
            worker_env=self.worker_env,
            requested=self.requested_workers or self.settings.workers.count,
        )
        self.dispatcher.start()
        self.intake.start()
        self.scrubber = Scrubber(core.store)
        self.notifier.ready(self.status_line())
        log.info(
            "daemon.ready",
            state_dir=str(self.state_dir),
            seq=state.last_seq,
            replayed=core.store.report.replayed,
            running_jobs=len(state.running_jobs()),
            requeued=requeued,
            stale_tmp=len(stale),
            relaned=relaned,
            workers=self.worker_count,
            gpus=self.gpus,
            **self.plan.describe(),
            dispatch=self.settings.dispatch.backend,
            settings=settings_digest(self.settings),
            seconds=round(time.monotonic() - t0 + core.store.report.seconds, 3),
        )

    # ---- the loop ------------------------------------------------------------------------

    def _serve(self) -> None:
        assert self.dispatcher is not None and self.intake is not None
        while True:
            stop = self.stop_state
            if stop.signals >= 2:
                return
            if stop.signals == 1 and stop.deadline is None:
                self._begin_stop()
            if stop.deadline is not None and (
                time.monotonic() >= stop.deadline or not self._claimed_trials()
            ):
                return
            now = time.monotonic()
            if self.health.degraded is not None and now < self.health.retry_at:
                self.notifier.watchdog(now)  # waiting on purpose; the loop is not stuck
                time.sleep(min(BUSY_TICK_S * 10, self.health.retry_at - now))
                continue
            try:
                self.turn(now)
            except (LogWriteFailed, OSError) as exc:
                self.health.degrade(exc, now, self.dispatcher)
                self._note_blocks(now)
                continue
            if self.health.degraded is not None:
                self.health.recovered(self.dispatcher)
                self._note_blocks(now)
                # claimed in a failed turn, never recorded
                self._guarded(now, self.intake.reconsider_claimed)
            self.notifier.watchdog(now)  # only a loop that turns keeps systemd's watchdog fed
            self.health.turned(now, self.dispatcher, self.status_line)
            busy = any(j.trials for j in self._core.state.running_jobs())
            with contextlib.suppress(queue_mod.Empty):
                path = self.files.get(timeout=BUSY_TICK_S if busy else IDLE_TICK_S)
                self._guarded(now, partial(self.intake.take, path))

    def _guarded(self, now: float, work: Callable[[], None]) -> None:
        """Run ``work`` (which writes); a failed write degrades the daemon, as a failed turn."""
        try:
            work()
        except (LogWriteFailed, OSError) as exc:
            self.health.degrade(exc, now, self.dispatcher)
            self._note_blocks(now)

    def turn(self, now: float) -> None:
        """One pass over every source of events; each decision is durable before its act."""
        assert self.dispatcher is not None and self.intake is not None
        assert self.results is not None
        self._sample(now)
        while True:
            try:
                path = self.files.get_nowait()
            except queue_mod.Empty:
                break
            self.intake.take(path)
        lost, taken_back = self.results.polled(self.dispatcher.poll(now))
        if now >= self._next_external_check:
            self._next_external_check = now + EXTERNAL_CHECK_S
            self.results.lost_external(set(self.dispatcher.worker_ids()), lost, taken_back)
        self.results.ingest()  # before acting on take-backs: a result posted just before
        self.results.record_taken_back(lost, taken_back)  # a death is real, and wins
        # Only after the take-backs are recorded: a command taken back this turn is in no
        # queue folder either, and its trial must fail for the worker's loss, not as unqueued.
        if now >= self._next_orphan_check and self.stop_state.signals == 0:
            self._next_orphan_check = now + ORPHAN_CHECK_S
            self.results.fail_unqueued()
        handle_requests(self.state_dir / CONTROL_DIR, self._core.state, self._core.commit)
        if self.stop_state.signals == 0:
            self.reports.poll()
        self.health.dispatch_noted(self.dispatcher, self.status_line)
        self._note_blocks(now)
        dispatching = (
            self.stop_state.signals == 0 and self.health.degraded is None and not self.host.reason
        )
        self._core.step(dispatching and self.dispatcher.available, self.admission.admitting)

    def _sample(self, now: float) -> None:
        """Every ``resources.sample_every_s``: admission, memory ceiling, the trials'
        ceiling, sampled metrics."""
        if now < self._next_sample:
            return
        assert self.dispatcher is not None
        resources = self.settings.resources
        self._next_sample = now + resources.sample_every_s
        ceiling = resources.worker_memory_max_bytes
        readings = sample_round(self.monitor, self.admission, self.dispatcher, ceiling)
        self.host.sample(now)
        in_flight = self.queue.in_flight()
        self._end_overdue(in_flight, now)
        self.metrics.sampled(
            readings,
            pending=sum(1 for holder in in_flight.values() if holder is None),
            workers_alive=self.dispatcher.workers_alive(),
            by_device=self.dispatcher.workers_by_device(),
        )

    def _end_overdue(self, in_flight: dict[str, WorkerId | None], now: float) -> None:
        """End every trial held past ``trials.timeout_s``: the dispatcher kills its worker
        (or cancels its task); a worker it does not run (systemd's) is lost at once."""
        assert self.dispatcher is not None and self.results is not None
        timeout = self.settings.trials.timeout_s
        if timeout is None:
            return
        ours = set(self.dispatcher.worker_ids())
        for late in self.trial_clock.overdue(in_flight, now):
            reason = late.reason(timeout)
            if late.worker not in ours:
                self.results.lose(late.worker, reason)
            elif self.dispatcher.kill(late.worker, reason):  # False: under way already
                log.warning(
                    "daemon.trial_timed_out",
                    command_id=late.command_id,
                    worker=late.worker,
                    ran_s=round(late.seconds, 1),
                    timeout_s=timeout,
                )

    def _note_blocks(self, now: float) -> None:
        """Gather why nothing is dispatched (:mod:`.blocking`); on a change, say so in
        ``health.json``, the metrics and systemd's status line."""
        assert self.dispatcher is not None
        reasons = dict(self.dispatcher.blocked())
        if self.admission.reason is not None:
            reasons["admission"] = self.admission.reason
        if self.host.reason is not None:
            reasons[HOST_REASON] = self.host.reason
        if self.health.degraded is not None:
            reasons["writes_failing"] = self.health.degraded
            # A failed write is most often a full disk: measure it now, not at the next
            # sample, so that the operator reads both reasons together.
            if (full := self.host.sample(now)) is not None:
                reasons[HOST_REASON] = full
        changed = self.blocks.update(reasons, now)
        if self.scrubber is not None and (damage := self.scrubber.poll()):
            self.health.damage = damage
            changed = True
        # health.json says degraded while any reason holds (writes failing among them).
        self.metrics.degraded.set(1 if self.blocks.reasons or self.health.damage else 0)
        if not changed:
            return
        self.health.blocked = self.blocks.reasons
        self.metrics.blocked(self.blocks.reasons)
        self.health.write(self.dispatcher)
        self.notifier.status(self.status_line())

    # ---- stopping ------------------------------------------------------------------------

    def _begin_stop(self) -> None:
        grace = self.settings.shutdown.grace_s
        self.stop_state.deadline = time.monotonic() + grace
        withdrawn = self.effector.withdraw_pending()
        self.effector.stop_stages()  # a stage process is simply rerun after the restart
        log.info(
            "daemon.stopping", grace_s=grace, withdrawn=withdrawn, claimed=self._claimed_trials()
        )

    def status_line(self) -> str:
        """One line for ``systemctl status`` (see :func:`~.health.status_line`)."""
        return status_line(self._core.state, self.dispatcher, self.stop_state.signals > 0)

    def _claimed_trials(self) -> int:
        return sum(1 for w in self.queue.in_flight().values() if w is not None)

    def _shutdown(self) -> int:
        assert self.dispatcher is not None and self.results is not None
        if self.stop_state.signals == 0:
            self.stop_state.signals = 1  # run() ended the loop by other means
        forced = self.stop_state.signals >= 2
        self.notifier.stopping("stopping: killing workers" if forced else "stopping")
        if self.intake is not None:
            self.intake.stop()
        self.effector.stop_stages()
        self.reports.stop()
        if not forced:
            self.results.ingest()
        grace = 0.0 if forced else self.settings.shutdown.worker_grace_s
        self._core.commit(self.dispatcher.stop(grace_s=grace))
        if not forced:
            self.results.ingest()
        reason = "second signal: workers killed" if forced else "signal"
        self._core.commit([DaemonStopped(pid=os.getpid(), version=__version__, reason=reason)])
        log.info("daemon.stopped", forced=forced)
        return EXIT_FORCED if forced else EXIT_OK

    # ---- helpers -------------------------------------------------------------------------

    @property
    def _core(self) -> Committer:
        assert self.core is not None
        return self.core


def run_daemon(settings: Settings, workers: int | None = None) -> int:
    """``sentinel run``: a state directory held by another daemon raises StateDirLocked."""
    restrict_umask()  # before anything is created; workers and stages inherit it
    return Daemon(settings, workers=workers).run()
