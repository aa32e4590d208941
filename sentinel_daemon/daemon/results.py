"""Workers' answers and workers that went away, gathered into the job actors' inputs.

Each turn the core loop records what the dispatcher saw (workers started, exited, lost, and
the commands a lost worker held, taken back), looks for workers it did not start
(``sentinel-worker@.service``) that fell silent, ingests the answers in ``queue/results/``
(before the take-backs: a result posted just before a death is real, and wins), then fails
the attempts of the taken-back commands, and now and then fails running attempts whose
command left the queue without an answer. What needs a file (the checksum of a saved
model, a model complete on disk) is read here, so that the actors' decisions need none.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import orjson
import structlog
from pydantic import TypeAdapter, ValidationError

from sentinel_daemon.core.events import Event, Intermediate, WorkerLost, WorkerStarted
from sentinel_daemon.core.ids import WorkerId
from sentinel_daemon.core.state import TrialStatus
from sentinel_daemon.daemon.actor import JobActor
from sentinel_daemon.daemon.committer import Committer
from sentinel_daemon.daemon.decisions import Answer, Found, Lost
from sentinel_daemon.daemon.dispatch import PollResult
from sentinel_daemon.log.segments import LogWriteFailed
from sentinel_daemon.ml.artifacts import (
    META_FILE,
    ChecksumMismatch,
    FoundModel,
    find_saved,
    read_checked,
)
from sentinel_daemon.queue.maildir import Queue
from sentinel_daemon.queue.messages import Saved, TrialCommand, WorkerMessage, split_command_id

log = structlog.get_logger(__name__)

UNQUEUED_REASON = "its command left the queue without a readable result (see STATE/queue/bad/)"
#: Losses remembered for the reason of a take-back recorded in a later turn.
KEPT_LOSSES = 64

TakenBack = list[tuple[WorkerId, TrialCommand]]
_INTERMEDIATE: TypeAdapter[Intermediate] = TypeAdapter(Intermediate)


@dataclass
class _Backlog:
    """Dispatcher findings not yet recorded (a turn failed to write them)."""

    events: list[Event] = field(default_factory=list)
    taken_back: TakenBack = field(default_factory=list)
    lost: list[WorkerLost] = field(default_factory=list)


def answer_of(state_dir: Path, message: WorkerMessage) -> Answer:
    """The actor's input for ``message``; a ``saved`` one with its model file checked.

    A ``saved`` answer without reports (a worker that found the model already on disk,
    given the command again) gets those its ``meta.json`` kept.
    """
    if not isinstance(message, Saved):
        return Answer(message)
    model = f"the saved model {message.artifact}"
    try:
        read_checked(state_dir / message.artifact, message.sha256)
    except OSError as exc:
        return Answer(message, f"{model} cannot be read ({exc.strerror})")
    except ChecksumMismatch:
        return Answer(message, f"{model} does not match the sha256 its worker reported")
    if not message.intermediate and (kept := kept_intermediate(state_dir, message.artifact)):
        message = message.model_copy(update={"intermediate": kept})
    return Answer(message)


def saved_model(state_dir: Path, command: TrialCommand) -> FoundModel | None:
    """A complete model of ``command``'s attempt on disk, if its worker saved one."""
    return find_saved(
        state_dir, command.artifact_dir, command.job_id, command.trial, command.attempt
    )


def kept_intermediate(state_dir: Path, artifact: str) -> Intermediate:
    """The progress reports the worker kept in the ``meta.json`` beside ``artifact``.

    Empty when there are none, or they cannot be read (a model saved by an older worker,
    which did not keep them): they are the learning curve, never needed to trust a model.
    """
    try:
        meta = orjson.loads((state_dir / artifact).with_name(META_FILE).read_bytes())
        return _INTERMEDIATE.validate_python(meta.get("intermediate") or ())
    except (OSError, orjson.JSONDecodeError, AttributeError, ValidationError):
        return ()


class Results:
    """Records answers and losses for the job actors (see the module doc)."""

    def __init__(
        self, state_dir: Path, queue: Queue, core: Committer, heartbeat_timeout_s: float
    ) -> None:
        self.state_dir = state_dir
        self.queue = queue
        self.core = core
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self._backlog = _Backlog()
        #: Whether the state directory's disk is, or just was, full (.hostpause): a worker
        #: lost then is lost to the host, its attempt not charged.
        self.host_full: Callable[[], bool] = lambda: False

    def ingest(self) -> None:
        """Every answer in ``results/`` to its job's actor, then acknowledged."""
        for path, message in self.queue.results():
            job_id, _, _ = split_command_id(message.command_id)
            job = self.core.state.jobs.get(job_id)
            actor = self.core.actors.get(job_id)
            # A stale answer (a replay, an attempt given up) decides nothing: not even checked.
            if job is not None and actor is not None and actor.current(job, message.command_id):
                # Reading the answer (its model checked) is the job's, as deciding on it is.
                read = partial(answer_of, self.state_dir, message)
                answer = self.core.guard(job_id, "reading a worker's answer", read)
                if answer is not None:
                    self.core.decide(actor, answer)
            self.queue.ack(path)

    def polled(self, polled: PollResult) -> tuple[list[WorkerLost], TakenBack]:
        """Record what the dispatcher saw; the losses and take-backs still to act on.

        What it saw happened whether or not it can be recorded now: kept until it is (a
        full disk fails this turn; the next one records it first).
        """
        backlog = self._backlog
        backlog.events += polled.events
        backlog.taken_back += polled.taken_back
        self.core.commit(backlog.events)
        backlog.events = []
        taken_back, backlog.taken_back = backlog.taken_back, []
        lost = list(backlog.lost) + [e for e in polled.events if isinstance(e, WorkerLost)]
        backlog.lost = lost[-KEPT_LOSSES:]
        return lost, taken_back

    def lost_external(self, local: set[str], lost: list[WorkerLost], taken_back: TakenBack) -> None:
        """Workers this daemon did not start (``sentinel-worker@.service``) that went silent.

        systemd restarts such a worker, but a new process does not resume the command the
        old one held; so, like the supervisor for its own workers, a worker holding commands
        whose heartbeat is older than ``workers.heartbeat_timeout_s`` is lost, and its
        commands are taken back (added to ``lost`` and ``taken_back``). Judged by the
        heartbeat file's mtime (wall clock): there is no process of ours to watch.
        """
        holders = {w for w in self.queue.in_flight().values() if w is not None and w not in local}
        found: list[WorkerLost] = []
        for worker in sorted(holders):
            beat = self.queue.last_beat(worker)
            age = beat[0] if beat is not None else float("inf")
            if age < self.heartbeat_timeout_s:
                continue
            event = self._external_lost(worker, f"external worker: no heartbeat for {age:.1f} s")
            found.append(event)
            taken_back += [(event.worker, c) for c in self.queue.take_back(worker)]
        self.core.commit(list(found))
        lost += found

    def lose(self, worker: str, reason: str) -> None:
        """A worker this daemon does not run (``sentinel-worker@``) whose trial must end
        (``trials.timeout_s``): lost now, its commands taken back and their attempts failed.

        Nothing of it can be killed from here: it is asked to stop the trial at its next
        report instead. An answer it posted before is real and ingested first; one it posts
        after is for an attempt already failed here, and decides nothing.
        """
        self.ingest()
        event = self._external_lost(WorkerId(worker), f"external worker: {reason}")
        self.core.commit([event])
        self._backlog.lost.append(event)  # its reason, should recording fail this turn
        taken = [(event.worker, c) for c in self.queue.take_back(worker, stop=True)]
        log.warning("daemon.external_worker_lost", worker=worker, reason=reason)
        self.record_taken_back([event], taken)

    def _external_lost(self, worker: WorkerId, reason: str) -> WorkerLost:
        """``worker.lost`` for an external worker (recorded as started first if unknown)."""
        beat = self.queue.last_beat(worker)
        info = beat[1] if beat is not None else {}
        pid = info.get("pid") if isinstance(info.get("pid"), int) else 0
        if worker not in self.core.state.workers:
            self.core.commit([WorkerStarted(worker=worker, pid=pid, gpu=None)])
        return WorkerLost(worker=worker, pid=pid, gpu=None, reason=reason)

    def record_taken_back(self, lost: list[WorkerLost], taken_back: TakenBack) -> None:
        """Fail the attempt of each command a lost worker held (or record its saved model)."""
        while taken_back:
            worker, command = taken_back[0]
            reason = next((e.reason for e in reversed(lost) if e.worker == worker), "lost")
            actor = self.core.actors.get(command.job_id)
            if command.job_id in self.core.state.jobs and actor is not None:
                try:
                    self.core.decide(actor, self.lost_input(actor, command, reason))
                except (LogWriteFailed, OSError):
                    self._backlog.taken_back = taken_back + self._backlog.taken_back
                    raise
            taken_back.pop(0)

    def fail_unqueued(self) -> None:
        """A running attempt whose command is in no queue folder and whose result never came.

        A worker posts its result before it finishes (removes) its command, so a command
        missing from this listing had its result posted before the listing of results that
        follows; a result that could not be read went to ``queue/bad/``. Without this check
        such a trial would wait forever; with it, the attempt fails and is retried.
        """
        in_flight = set(self.queue.in_flight())
        self.ingest()
        for job_id in list(self.core.actors):
            job = self.core.state.jobs[job_id]
            actor = self.core.actors.get(job_id)
            if actor is None:
                continue  # its job failed meanwhile
            for trial in list(job.trials.values()):
                if trial.status is TrialStatus.RUNNING:
                    command = actor.command(trial.number, trial.model, trial.params, trial.attempt)
                    if command.command_id not in in_flight:
                        self.core.decide(actor, self.lost_input(actor, command, UNQUEUED_REASON))

    def lost_input(self, actor: JobActor, command: TrialCommand, reason: str) -> Lost:
        """The actor's input for ``command``'s worker gone, with its model if one is on disk."""
        current = actor.current(self.core.state.jobs[command.job_id], command.command_id)
        found = saved_model(self.state_dir, command) if current else None
        if found is None:
            return Lost(command, reason, host=self.host_full())
        kept = kept_intermediate(self.state_dir, found.artifact)
        return Lost(command, reason, found, kept, host=self.host_full())

    def recover_saved(self) -> None:
        """At start-up: running attempts whose model is complete on disk, as saved."""
        for job in self.core.state.running_jobs():
            actor = self.core.actors.get(job.job_id)
            if actor is None:
                continue
            running = [t for t in job.trials.values() if t.status is TrialStatus.RUNNING]
            for t in running:  # not every trial: a long search holds thousands, ended
                command = actor.command(t.number, t.model, t.params, t.attempt)
                if not actor.current(job, command.command_id):
                    continue
                if (found := saved_model(self.state_dir, command)) is not None:
                    kept = kept_intermediate(self.state_dir, found.artifact)
                    self.core.decide(actor, Found(command, found, kept))
