"""``sentinel run``: the daemon's core loop.

One thread owns the event log and the state; the other parts talk to it by messages and
files. The inbox thread hands it job files through a queue; workers (separate processes)
hand it results through the queue directory; each job's
:class:`~sentinel_daemon.daemon.actor.JobActor` turns the job's state into decisions; the
supervisor reports workers starting and dying.
Every turn of the loop is: gather what happened, decide, append (fsync), fold into the
state, then act. Nothing acts on a decision before it is durable.

Start-up is recovery: replay the log (snapshot plus tail), record ``daemon.started``, kill
workers a crashed predecessor left behind, ingest results that arrived while no daemon
ran (a trial saved then is recorded, never retrained), take back the commands its workers
held and queue every trial that is running in the log but queued nowhere, and look again
at job files claimed but never recorded. Then the workers start and the inbox is watched.

Stopping: the first SIGTERM or SIGINT stops dispatching (pending commands are withdrawn;
the log still has them running, so the next start queues them again), lets claimed trials
finish for ``shutdown.grace_s``, stops the workers, records ``daemon.stopped`` and exits
0. A second signal kills the workers' process groups and exits :data:`EXIT_FORCED`.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import queue as queue_mod
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import optuna
import orjson
import psutil
import structlog

from sentinel_daemon import __version__
from sentinel_daemon.core.events import (
    DaemonStarted,
    DaemonStopped,
    Event,
    JobCancelled,
    JobCompleted,
    JobFailed,
    JobRejected,
    JobSubmitted,
    WorkerLost,
    WorkerStarted,
)
from sentinel_daemon.core.ids import WorkerId
from sentinel_daemon.core.jobspec import JobSpecError, parse_job_file
from sentinel_daemon.core.state import JobStatus, TrialStatus, WorkerStatus
from sentinel_daemon.daemon import journal
from sentinel_daemon.daemon.actor import ActorContext, JobActor
from sentinel_daemon.daemon.dispatch.dask import DaskDispatcher
from sentinel_daemon.daemon.dispatch.local import Supervisor, default_worker_count
from sentinel_daemon.daemon.inbox import Inbox, InboxFileGone
from sentinel_daemon.daemon.metrics import DaemonMetrics
from sentinel_daemon.daemon.monitor import (
    AdmissionGate,
    ResourceMonitor,
    ceiling_reason,
    over_ceiling,
)
from sentinel_daemon.daemon.reports import ReportRunner
from sentinel_daemon.fsutil import fsync_dir, make_drop_dir, restrict_umask
from sentinel_daemon.layout import (
    CANCEL_PREFIX,
    CLAIMED_DIR,
    CONTROL_DIR,
    HEALTH_FILE,
    INBOX_DIR,
    JOBS_DIR,
    REJECTED_DIR,
    is_job_name,
)
from sentinel_daemon.log.segments import LogWriteFailed
from sentinel_daemon.log.store import Store
from sentinel_daemon.ml.devices import discover_gpus
from sentinel_daemon.queue.maildir import Queue
from sentinel_daemon.queue.messages import TrialCommand, split_command_id
from sentinel_daemon.sdnotify import Notifier
from sentinel_daemon.settings import Settings, exported, settings_digest
from sentinel_daemon.worker.faults import FAULTS_ENV

log = structlog.get_logger(__name__)

EXIT_OK = 0
EXIT_ERROR = 1
#: A second SIGTERM/SIGINT: workers were killed, not stopped.
EXIT_FORCED = 3

#: With SENTINEL_TEST_FAULTS=1, control/test-stall.<seconds> holds the loop still (tests).
STALL_PREFIX = "test-stall."
#: Loop period while trials are in flight, and while idle.
BUSY_TICK_S = 0.002
IDLE_TICK_S = 0.05
#: How often running attempts are checked for a command that is in no queue folder.
ORPHAN_CHECK_S = 2.0
UNQUEUED_REASON = "its command left the queue without a readable result (see STATE/queue/bad/)"
#: While writes fail (disk full), the loop tries a whole turn again this often.
DEGRADED_RETRY_S = 2.0
#: health.json's reserved size (see Daemon._write_health).
HEALTH_BYTES = 4096
#: How often STATUS= is sent to systemd.
STATUS_EVERY_S = 5.0
#: How often workers this daemon did not start are checked for a stale heartbeat.
EXTERNAL_CHECK_S = 1.0
#: How long start-up waits for a predecessor's orphaned worker to die after SIGKILL.
ORPHAN_KILL_WAIT_S = 10.0


@dataclass
class _Backlog:
    """Supervisor findings not yet recorded (a turn failed to write them)."""

    events: list[Event] = field(default_factory=list)
    taken_back: list[tuple[WorkerId, TrialCommand]] = field(default_factory=list)
    lost: list[WorkerLost] = field(default_factory=list)


@dataclass
class _Stop:
    signals: int = 0
    deadline: float | None = None


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
        self.gpus = discover_gpus()
        # 0 is a real choice: only workers systemd runs (sentinel-worker@.service) train.
        configured = workers if workers is not None else settings.workers.count
        self.worker_count = default_worker_count(self.gpus) if configured is None else configured
        self.worker_env = worker_env or {}
        self.queue = Queue(self.state_dir / "queue", settings.queue)
        self.ctx = ActorContext(
            state_dir=self.state_dir,
            queue=self.queue,
            max_attempts=settings.trials.max_attempts,
            report_every=settings.trials.report_every,
        )
        self.actors: dict[str, JobActor] = {}
        # Not a SimpleQueue: on Python 3.11 its get(timeout=...) blocks forever when a signal
        # (SIGTERM) interrupts the wait and the deadline passes before it resumes (CI saw the
        # daemon ignore SIGTERM so). Queue waits on threading locks, which check for that.
        self.files: queue_mod.Queue[Path] = queue_mod.Queue()
        self.stop_state = _Stop()
        self.store: Store | None = None
        self.supervisor: Supervisor | DaskDispatcher | None = None
        self._dispatch_note: str | None = None
        self.inbox: Inbox | None = None
        self._next_external_check = 0.0
        self._next_status = 0.0
        self._next_orphan_check = 0.0
        self._next_sample = 0.0
        self.notifier = Notifier()
        self.metrics = DaemonMetrics(self.state_dir)
        self.metrics.gpus.set(len(self.gpus))
        self.monitor = ResourceMonitor(self.gpus, daemon_pid=os.getpid())
        self.admission = AdmissionGate(settings.resources)
        self.reports = ReportRunner(self.state_dir)
        #: Why writes are failing (a full disk), or None while all is well.
        self.degraded: str | None = None
        self._retry_at = 0.0
        self._backlog = _Backlog()

    # ---- life cycle ----------------------------------------------------------------------

    def run(self) -> int:
        """Recover, serve until a signal, stop; returns the exit code."""
        with exported(self.settings):  # workers, stages and reports inherit the settings
            return self._run()

    def _run(self) -> int:
        self.state_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
        for sub in (INBOX_DIR, CONTROL_DIR):
            if not make_drop_dir(self.state_dir / sub):
                log.warning(
                    "daemon.drop_dir_private",
                    folder=str(self.state_dir / sub),
                    reason="the setgid bit was refused (RestrictSUIDSGID=?); only the daemon's "
                    "user can leave files here",
                    fix="make it 2770 for the operators' group with systemd-tmpfiles "
                    "(docs/install.md, step 3)",
                )
        for sub in (CLAIMED_DIR, REJECTED_DIR, JOBS_DIR):
            (self.state_dir / sub).mkdir(mode=0o750, exist_ok=True)
        self._write_health(None)
        self.store = Store.open(
            self.state_dir,
            segment_bytes=self.settings.eventlog.segment_bytes,
            snapshot_every=self.settings.eventlog.snapshot_every,
            sync=self.metrics.timed_sync(os.fdatasync),
        )
        self.metrics.initialise(self.store.state)
        previous = self._install_signals()
        try:
            if self.settings.metrics.enabled:
                self.metrics.serve(self.settings.metrics.address, self.settings.metrics.port)
            self._recover()
            self._serve()
            return self._shutdown()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            faulthandler.unregister(signal.SIGUSR1)
            self._release()

    def _install_signals(self) -> dict[int, Any]:
        def on_signal(signum: int, frame: FrameType | None) -> None:
            self.stop_state.signals += 1  # only a flag: the loop does the work

        # `kill -USR1 PID` writes every thread's stack to stderr (the journal): what an
        # operator needs from a daemon that stopped answering. Written by C code, in any state.
        with contextlib.suppress(RuntimeError, ValueError, OSError):  # no usable stderr
            faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True)
        return {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}

    def _release(self) -> None:
        """Leave nothing running, whatever happened (also on a fatal error)."""
        self.reports.stop()
        if self.inbox is not None:
            self.inbox.stop()
            self.inbox = None
        for actor in self.actors.values():
            actor.stop()
        if self.supervisor is not None and self.supervisor.worker_ids():
            self.supervisor.stop(grace_s=0.0)
        if self.store is not None:
            self.store.close(snapshot=True)
            self.store = None
        self.metrics.close()
        self.monitor.close()

    # ---- start-up ------------------------------------------------------------------------

    def _recover(self) -> None:
        store = self._store
        t0 = time.monotonic()
        records = self.commit([DaemonStarted(pid=os.getpid(), version=__version__)])
        generation = records[-1]
        self.commit(self._reap_orphans())
        stale = self.queue.recover()
        for job in store.state.running_jobs():
            self._actor(job.job_id).rebuild(job)
        self._ingest_results()
        for job in store.state.running_jobs():
            self.commit(self._actor(job.job_id).recover_saved(job))
        for job in store.state.jobs.values():
            report = self.state_dir / JOBS_DIR / job.job_id / "report" / "index.html"
            if job.status is not JobStatus.RUNNING and job.trial_counts and not report.is_file():
                self.reports.add(job.job_id)  # ended while no daemon could write its report
        # Commands held by the predecessor's workers (all dead now) go back to the queue
        # with the same attempt: the daemon stopped, the trial did not fail.
        requeued = 0
        timeout = self.settings.workers.heartbeat_timeout_s
        for worker in set(self.queue.in_flight().values()):
            if worker is None:
                continue
            beat = self.queue.last_beat(worker)
            if worker not in store.state.workers and beat is not None and beat[0] < timeout:
                continue  # a live worker systemd runs (not ours): its result will come
            for command in self.queue.take_back(worker):
                held = store.state.jobs.get(command.job_id)
                trial = held.trials.get(command.trial) if held else None
                if trial and trial.attempt == command.attempt and not trial.status.ended:
                    self.queue.put(command)
                    requeued += 1
        in_flight = set(self.queue.in_flight())
        for job in store.state.running_jobs():
            requeued += self._actor(job.job_id).redispatch(job, in_flight)
        self.inbox = Inbox(
            self.state_dir / INBOX_DIR,
            self.state_dir / CLAIMED_DIR,
            self.state_dir / REJECTED_DIR,
            rescan_interval=self.settings.inbox.rescan_seconds,
            settle=self.settings.inbox.settle_seconds,
            on_file=self.files.put,
        )
        # Claimed before a crash but never recorded: look at them again.
        self.inbox.drop_claimed_twins()
        self._reconsider_claimed()
        self.supervisor = self._dispatcher(generation)
        self.supervisor.start()
        self.inbox.start()
        self.notifier.ready(self.status_line())
        log.info(
            "daemon.ready",
            state_dir=str(self.state_dir),
            seq=store.state.last_seq,
            replayed=store.report.replayed,
            running_jobs=len(store.state.running_jobs()),
            requeued=requeued,
            stale_tmp=len(stale),
            workers=self.worker_count,
            gpus=self.gpus,
            dispatch=self.settings.dispatch.backend,
            settings=settings_digest(self.settings),
            seconds=round(time.monotonic() - t0 + store.report.seconds, 3),
        )

    def _dispatcher(self, generation: int) -> Supervisor | DaskDispatcher:
        """Local workers (``dispatch.backend: local``), or the Dask cluster's."""
        dispatch = self.settings.dispatch
        if dispatch.backend == "dask":
            if self.worker_count:
                log.info(
                    "daemon.local_workers_off",
                    reason="dispatch.backend is dask: trials run on the Dask cluster",
                    scheduler=dispatch.scheduler,
                )
            self.worker_count = 0
            return DaskDispatcher(self.state_dir, dispatch, queue=self.settings.queue)
        return Supervisor(
            self.state_dir,
            count=self.worker_count,
            gpus=list(self.gpus),
            heartbeat_timeout_s=self.settings.workers.heartbeat_timeout_s,
            heartbeat_s=self.settings.workers.heartbeat_s,
            restart_backoff_s=(
                self.settings.workers.restart_backoff_min_s,
                self.settings.workers.restart_backoff_max_s,
            ),
            generation=generation,
            worker_env=self.worker_env,
        )

    def _reap_orphans(self) -> list[Event]:
        """Workers the log has alive belong to a predecessor: make sure they are gone."""
        events: list[Event] = []
        doomed: list[psutil.Process] = []
        for w in self._store.state.workers.values():
            if w.status is not WorkerStatus.ALIVE:
                continue
            reason = "its daemon stopped without stopping it"
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(w.pid)
                cmdline = proc.cmdline()
                if "sentinel_daemon.worker" in " ".join(cmdline) and w.worker in cmdline:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(w.pid, signal.SIGKILL)  # its own group (start_new_session)
                    doomed.append(proc)
                    reason += "; it was still running and was killed at start-up"
            events.append(
                WorkerLost(worker=WorkerId(w.worker), pid=w.pid, gpu=w.gpu, reason=reason)
            )
        if doomed:
            psutil.wait_procs(doomed, timeout=ORPHAN_KILL_WAIT_S)
        return events

    # ---- the loop ------------------------------------------------------------------------

    def _serve(self) -> None:
        assert self.supervisor is not None
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
            if self.degraded is not None and now < self._retry_at:
                self.notifier.watchdog(now)  # waiting on purpose; the loop is not stuck
                time.sleep(min(BUSY_TICK_S * 10, self._retry_at - now))
                continue
            try:
                self.turn(now)
            except (LogWriteFailed, OSError) as exc:
                self._degrade(exc, now)
                continue
            if self.degraded is not None:
                self._recovered()
            self.notifier.watchdog(now)  # only a loop that turns keeps systemd's watchdog fed
            if now >= self._next_status:
                self._next_status = now + STATUS_EVERY_S
                self.notifier.status(self.status_line())
                if self.degraded is None and isinstance(self.supervisor, DaskDispatcher):
                    self._write_health(None)  # the cluster's counts, for `sentinel status`
            busy = any(j.trials for j in self._store.state.running_jobs())
            with contextlib.suppress(queue_mod.Empty):
                path = self.files.get(timeout=BUSY_TICK_S if busy else IDLE_TICK_S)
                self._take_job_file(path)

    def turn(self, now: float) -> None:
        """One pass over every source of events; each decision is durable before its act."""
        assert self.supervisor is not None
        self._sample(now)
        while True:
            try:
                path = self.files.get_nowait()
            except queue_mod.Empty:
                break
            self._take_job_file(path)
        polled = self.supervisor.poll(now)
        # What the supervisor saw happened whether or not it can be recorded now: kept until
        # it is (a full disk fails this turn; the next one records it first).
        self._backlog.events += polled.events
        self._backlog.taken_back += polled.taken_back
        self.commit(self._backlog.events)
        self._backlog.events = []
        taken_back, self._backlog.taken_back = self._backlog.taken_back, []
        lost = [e for e in self._backlog.lost if isinstance(e, WorkerLost)]
        lost += [e for e in polled.events if isinstance(e, WorkerLost)]
        self._backlog.lost = lost[-64:]
        if now >= self._next_external_check:
            self._next_external_check = now + EXTERNAL_CHECK_S
            external = self._lost_external_workers()
            self.commit(list(external))
            for event, commands in external.items():
                lost.append(event)
                taken_back += [(event.worker, c) for c in commands]
        self._ingest_results()  # before acting on take-backs: a result posted just before
        while taken_back:  # a death is real, and wins
            worker, command = taken_back[0]
            reason = next((e.reason for e in reversed(lost) if e.worker == worker), "lost")
            job = self._store.state.jobs.get(command.job_id)
            actor = self.actors.get(command.job_id)
            if job is not None and actor is not None:
                try:
                    self.commit(actor.lost(job, command, reason))
                except (LogWriteFailed, OSError):
                    self._backlog.taken_back = taken_back + self._backlog.taken_back
                    raise
            taken_back.pop(0)
        # Only after the take-backs are recorded: a command taken back this turn is in no
        # queue folder either, and its trial must fail for the worker's loss, not as unqueued.
        if now >= self._next_orphan_check and self.stop_state.signals == 0:
            self._next_orphan_check = now + ORPHAN_CHECK_S
            self._fail_unqueued_trials()
        self._control()
        if self.stop_state.signals == 0:
            self.reports.poll()
        note = self.supervisor.status_note()
        if note != self._dispatch_note:  # the Dask scheduler went away, or came back
            self._dispatch_note = note
            if self.degraded is None:
                self._write_health(None)
            self.notifier.status(self.status_line())
        dispatching = (
            self.stop_state.signals == 0 and self.degraded is None and self.supervisor.available
        )
        for job_id in list(self.actors):
            actor = self.actors[job_id]
            for _ in range(8):  # a few transitions per turn (stage ends, next one starts)
                events = actor.step(self._store.state, dispatching, self.admission.admitting)
                if not events:
                    break
                self.commit(events)
            if self._store.state.jobs[job_id].status is not JobStatus.RUNNING:
                actor.stop()
                del self.actors[job_id]

    def commit(self, events: list[Event]) -> list[int]:
        """Append ``events`` (one fsync), fold them in, then act on each; their seqs."""
        if not events:
            return []
        start = self._store.log.position
        records = self._store.append(events)
        end = self._store.log.position
        self.metrics.appended(
            len(records), end.offset - (start.offset if end.segment == start.segment else 0)
        )
        self.metrics.observe(events, self._store.state)
        journal.write(events, self._store.state)
        for event in events:
            job_id = getattr(event, "job_id", None)
            if job_id is not None and job_id in self.actors:
                self.actors[job_id].act(event)
            if isinstance(event, JobCancelled | JobFailed):
                self._withdraw_job(event.job_id)
            if (
                isinstance(event, JobCompleted | JobCancelled | JobFailed)
                and self._store.state.jobs[event.job_id].trial_counts  # no trial, no report
            ):
                self.reports.add(event.job_id)
        return [r.seq for r in records]

    def _sample(self, now: float) -> None:
        """Every ``resources.sample_every_s``: admission, memory ceiling, sampled metrics."""
        if now < self._next_sample:
            return
        assert self.supervisor is not None
        resources = self.settings.resources
        self._next_sample = now + resources.sample_every_s
        pids = self.supervisor.worker_pids()
        readings = self.monitor.sample(pids)
        gpus = self.supervisor.gpus_in_use()
        self.admission.update(readings, gpus)
        ceiling = resources.worker_memory_max_bytes
        for worker, rss in over_ceiling(readings, ceiling).items():
            if self.supervisor.kill(worker, ceiling_reason(rss, ceiling)):
                log.warning(
                    "daemon.worker_over_memory_ceiling",
                    worker=worker,
                    rss_bytes=rss,
                    ceiling_bytes=ceiling,
                )
        pending = sum(1 for holder in self.queue.in_flight().values() if holder is None)
        self.metrics.sampled(
            readings,
            pending=pending,
            workers_alive=self.supervisor.workers_alive(),
            blocked=not self.admission.admitting,
        )

    def _ingest_results(self) -> None:
        for path, message in self.queue.results():
            job_id, _, _ = split_command_id(message.command_id)
            job = self._store.state.jobs.get(job_id)
            actor = self.actors.get(job_id)
            if job is not None and actor is not None:
                self.commit(actor.ingest(job, message))
            self.queue.ack(path)

    def _fail_unqueued_trials(self) -> None:
        """A running attempt whose command is in no queue folder and whose result never came.

        A worker posts its result before it finishes (removes) its command, so a command
        missing from this listing had its result posted before the listing of results that
        follows; a result that could not be read went to ``queue/bad/``. Without this check
        such a trial would wait forever; with it, the attempt fails and is retried.
        """
        in_flight = set(self.queue.in_flight())
        self._ingest_results()
        for job_id in list(self.actors):
            job = self._store.state.jobs[job_id]
            actor = self.actors[job_id]
            events: list[Event] = []
            for trial in job.trials.values():
                if trial.status is TrialStatus.RUNNING:
                    command = actor.command(trial.number, trial.model, trial.params, trial.attempt)
                    if command.command_id not in in_flight:
                        events += actor.lost(job, command, UNQUEUED_REASON)
            self.commit(events)

    def _lost_external_workers(self) -> dict[WorkerLost, list[TrialCommand]]:
        """Workers this daemon did not start (``sentinel-worker@.service``) that went silent.

        systemd restarts such a worker, but a new process does not resume the command the
        old one held; so, like the supervisor for its own workers, a worker holding commands
        whose heartbeat is older than ``workers.heartbeat_timeout_s`` is lost, and its
        commands are taken back. Judged by the heartbeat file's mtime (wall clock): there is
        no process of ours to watch.
        """
        assert self.supervisor is not None
        local = set(self.supervisor.worker_ids())
        holders = {w for w in self.queue.in_flight().values() if w is not None and w not in local}
        found: dict[WorkerLost, list[TrialCommand]] = {}
        timeout = self.settings.workers.heartbeat_timeout_s
        for worker in sorted(holders):
            beat = self.queue.last_beat(worker)
            age = beat[0] if beat is not None else float("inf")
            if age < timeout:
                continue
            info = beat[1] if beat is not None else {}
            pid = info.get("pid") if isinstance(info.get("pid"), int) else 0
            if worker not in self._store.state.workers:
                self.commit([WorkerStarted(worker=worker, pid=pid, gpu=None)])
            event = WorkerLost(
                worker=worker,
                pid=pid,
                gpu=None,
                reason=f"external worker: no heartbeat for {age:.1f} s",
            )
            found[event] = self.queue.take_back(worker)
        return found

    # ---- inbox ---------------------------------------------------------------------------

    def _take_job_file(self, path: Path) -> None:
        assert self.inbox is not None
        try:
            claimed = self.inbox.claim(path)
        except InboxFileGone:
            return
        self._consider(claimed)

    def _consider(self, claimed: Path) -> None:
        """Turn a claimed job file into ``job.submitted`` or ``job.rejected``, then move it."""
        rel = claimed.relative_to(self.state_dir).as_posix()
        try:
            parsed = parse_job_file(
                claimed,
                data_roots=self.settings.resolved_data_roots(self.cwd),
                base_dir=self.cwd,
                max_bytes=self.settings.inbox.max_job_bytes,
            )
        except JobSpecError as exc:
            self._reject(claimed, rel, str(exc))
            return
        job = self._store.state.jobs.get(parsed.job_id)
        job_dir = self.state_dir / JOBS_DIR / parsed.job_id
        if job is None:
            self.commit(
                [
                    JobSubmitted(
                        job_id=parsed.job_id,
                        name=parsed.spec.name,
                        spec=parsed.raw,
                        file=rel,
                        file_sha256=parsed.sha256,
                    )
                ]
            )
            self._actor(parsed.job_id)
        elif job.file != rel or any(job_dir.glob("job.*")):
            # Only a file recorded under this very name and never moved in is a leftover of
            # a crash; anything else is the same job sent again.
            self._reject(
                claimed,
                rel,
                f"{claimed.name}: job {parsed.job_id} was already submitted with the same name "
                f"and content ({job.status}); change the file (or its name) to run it again",
                parsed.sha256,
            )
            return
        # Recorded (now, or before a crash): the file moves in with its job.
        job_dir.mkdir(parents=True, exist_ok=True)
        fsync_dir(job_dir.parent)
        os.rename(claimed, job_dir / f"job{claimed.suffix.lower()}")
        fsync_dir(job_dir)
        fsync_dir(claimed.parent)

    def _reconsider_claimed(self) -> None:
        """Record every job file left in ``claimed/`` (claimed, then a crash or failed write)."""
        for claimed in sorted((self.state_dir / CLAIMED_DIR).iterdir()):
            if is_job_name(claimed.name):
                self._consider(claimed)

    def _reject(self, claimed: Path, rel: str, reason: str, sha256: str | None = None) -> None:
        assert self.inbox is not None
        self.commit([JobRejected(file=rel, reason=reason, file_sha256=sha256)])
        self.inbox.reject(claimed, reason)

    # ---- control requests ----------------------------------------------------------------

    def _control(self) -> None:
        folder = self.state_dir / CONTROL_DIR
        try:
            names = os.listdir(folder)
        except FileNotFoundError:
            return
        for name in names:
            if name.startswith(STALL_PREFIX) and os.environ.get(FAULTS_ENV) == "1":
                self._test_stall(folder / name)
            if not name.startswith(CANCEL_PREFIX):
                continue
            job_id = name[len(CANCEL_PREFIX) :]
            job = self._store.state.jobs.get(job_id)
            if job is not None and job.status is JobStatus.RUNNING:
                self.commit([JobCancelled(job_id=job.job_id, reason="cancelled by an operator")])
            else:
                log.warning("daemon.cancel_ignored", job=job_id, reason="no such running job")
            with contextlib.suppress(FileNotFoundError):
                os.unlink(folder / name)

    @staticmethod
    def _test_stall(path: Path) -> None:
        """Crash tests only: hold the core loop still, as a stuck loop would be."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
            seconds = float(path.name[len(STALL_PREFIX) :])
            log.warning("daemon.test_stall", seconds=seconds)
            time.sleep(min(seconds, 60.0))

    def _withdraw_job(self, job_id: str) -> None:
        """A job ended early: take its pending commands back, ask its workers to stop."""
        for command_id, worker in self.queue.in_flight().items():
            if split_command_id(command_id)[0] != job_id:
                continue
            if worker is None:
                self.queue.withdraw(command_id)
            else:
                self.queue.request_prune(worker, command_id)
        actor = self.actors.get(job_id)
        if actor is not None:
            actor.stop()

    # ---- stopping ------------------------------------------------------------------------

    def _begin_stop(self) -> None:
        grace = self.settings.shutdown.grace_s
        self.stop_state.deadline = time.monotonic() + grace
        withdrawn = [cid for cid, w in self.queue.in_flight().items() if w is None]
        for command_id in withdrawn:
            self.queue.withdraw(command_id)
        for actor in self.actors.values():
            actor.stop()  # a stage process is simply rerun after the restart
        log.info(
            "daemon.stopping",
            grace_s=grace,
            withdrawn=len(withdrawn),
            claimed=self._claimed_trials(),
        )

    def status_line(self) -> str:
        """One line for ``systemctl status``: jobs, trials in flight, the best value."""
        running = self._store.state.running_jobs()
        flight = sum(1 for j in running for t in j.trials.values() if not t.status.ended)
        best = [b.value for j in running if (b := j.best_saved()) is not None and b.value]
        text = f"{len(running)} jobs running, {flight} trials in flight"
        if best:
            text += f", best {max(best):.4f}"
        if self.supervisor is not None and (note := self.supervisor.status_note()):
            text += f"; {note}"
        if self.stop_state.signals:
            text = "stopping: " + text
        return text

    def _degrade(self, exc: Exception, now: float) -> None:
        """A write failed (a full disk, an I/O error): nothing was acknowledged or acted on.

        Every decision is derived again from the state on the next turn, so retrying the
        whole turn later is safe. Until one passes, nothing new is dispatched; running
        trials go on (their results wait in the queue). A failed fsync is not handled here:
        it is fatal (see eventlog.py).
        """
        reason = str(exc)
        first = self.degraded is None
        self.degraded = reason
        self._retry_at = now + DEGRADED_RETRY_S
        if first:
            log.error(
                "daemon.degraded",
                reason=reason,
                retry_every_s=DEGRADED_RETRY_S,
                action="dispatching stopped until writes succeed again",
            )
        self.notifier.status(f"DEGRADED (writes failing, not dispatching): {reason}"[:200])
        self.metrics.degraded.set(1)
        self._write_health({"status": "degraded", "reason": reason, "pid": os.getpid()})

    def _recovered(self) -> None:
        log.warning("daemon.resumed", after=self.degraded)
        self.degraded = None
        self.metrics.degraded.set(0)
        self._write_health(None)  # ok again
        self._reconsider_claimed()  # a file claimed during a failed turn was never recorded

    def _write_health(self, health: dict[str, Any] | None) -> None:
        """``STATE/health.json`` for ``sentinel status``: ok, or why the daemon is degraded.

        The file is created at start-up with :data:`HEALTH_BYTES` reserved and rewritten in
        place, so that it can still say "disk full" on a disk that is full (a new file, as an
        atomic replace would write, needs space). A reader may see a torn write; it then
        reads nothing, and the next rewrite fixes it. Best effort: errors are ignored.
        """
        health = dict(health or {"status": "ok", "pid": os.getpid()})
        # Relative data paths in job files resolve against it: `sentinel submit` checks.
        health["cwd"] = str(self.cwd)
        if self.supervisor is not None:
            health["dispatch"] = self.supervisor.describe()
        data = orjson.dumps(health)[: HEALTH_BYTES - 1]
        with contextlib.suppress(OSError):
            fd = os.open(
                self.state_dir / HEALTH_FILE, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o640
            )
            try:
                os.posix_fallocate(fd, 0, HEALTH_BYTES)
                os.pwrite(fd, data.ljust(HEALTH_BYTES - 1) + b"\n", 0)
                os.fdatasync(fd)
            finally:
                os.close(fd)

    def _claimed_trials(self) -> int:
        return sum(1 for w in self.queue.in_flight().values() if w is not None)

    def _shutdown(self) -> int:
        assert self.supervisor is not None
        if self.stop_state.signals == 0:
            self.stop_state.signals = 1  # run() ended the loop by other means
        forced = self.stop_state.signals >= 2
        self.notifier.stopping("stopping: killing workers" if forced else "stopping")
        if self.inbox is not None:
            self.inbox.stop()
            self.inbox = None
        for actor in self.actors.values():
            actor.stop()
        self.reports.stop()
        if not forced:
            self._ingest_results()
        self.commit(self.supervisor.stop(grace_s=0.0 if forced else 10.0))
        if not forced:
            self._ingest_results()
        self.commit(
            [
                DaemonStopped(
                    pid=os.getpid(),
                    version=__version__,
                    reason="second signal: workers killed" if forced else "signal",
                )
            ]
        )
        log.info("daemon.stopped", forced=forced)
        return EXIT_FORCED if forced else EXIT_OK

    # ---- helpers -------------------------------------------------------------------------

    @property
    def _store(self) -> Store:
        assert self.store is not None
        return self.store

    def _actor(self, job_id: str) -> JobActor:
        actor = self.actors.get(job_id)
        if actor is None:
            actor = self.actors[job_id] = JobActor(self._store.state.jobs[job_id], self.ctx)
        return actor


def run_daemon(settings: Settings, workers: int | None = None) -> int:
    """``sentinel run``: a state directory held by another daemon raises StateDirLocked."""
    restrict_umask()  # before anything is created; workers and stages inherit it
    return Daemon(settings, workers=workers).run()
