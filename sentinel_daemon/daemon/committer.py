"""The core loop's one way to the log: append, fold, then act.

:meth:`Committer.commit` appends events (one fsync for the batch), folds them into the state
and into their job's actor, then carries out their reactions (a job that ended early has its
trials withdrawn; an ended job gets its report). Whoever decided a job's early end (its actor,
an operator's cancel, the Dask dispatcher), the batch first closes the trials it leaves open
(:func:`~sentinel_daemon.daemon.answers.closing`). :meth:`Committer.decide` has a job actor
decide on an input, commits the events, and only then carries out the effects. Every part
of the loop that records something (intake, control requests, workers' answers, start-up)
goes through here, so nothing acts before its event is durable.

Once a turn, :meth:`Committer.step` lets every job actor decide until it has nothing more to
decide: a stage process that ended first, then ticks (a stage ends, the next one starts,
trials are dispatched one by one), :data:`DECISIONS_PER_TURN` at most.

It is also the job boundary (:mod:`~sentinel_daemon.daemon.containment`): whatever one job's
work raises (its actor deciding or being built, Optuna told of a trial, an effect such as
writing ``best/``) fails that job with the error recorded (:meth:`Committer.guard`), unless
the error is the log's, the state directory's or the host's, which escapes to the loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from typing import TypeVar

from sentinel_daemon.core.events import Event
from sentinel_daemon.core.state import JobStatus, State
from sentinel_daemon.daemon import journal
from sentinel_daemon.daemon.actor import ActorContext, JobActor
from sentinel_daemon.daemon.answers import closing
from sentinel_daemon.daemon.containment import job_failed, owned_by_job
from sentinel_daemon.daemon.decisions import Input, Tick, reactions
from sentinel_daemon.daemon.effects import Effector
from sentinel_daemon.daemon.metrics import DaemonMetrics
from sentinel_daemon.log.store import Store

#: Decisions a job actor may make in one turn (a stage ends, the next one starts...).
DECISIONS_PER_TURN = 8

T = TypeVar("T")


class Committer:
    """Appends to ``store``'s log for the loop, and keeps one job actor per running job."""

    def __init__(
        self,
        store: Store,
        effector: Effector,
        metrics: DaemonMetrics,
        ctx: ActorContext,
        watch: Callable[[list[Event], float], None] | None = None,
    ) -> None:
        self.store = store
        #: Told of every batch once it is durable (the host pause looks for trials the
        #: host failed), with ``time.monotonic()``.
        self.watch = watch
        self.effector = effector
        self.metrics = metrics
        self.ctx = ctx
        self.actors: dict[str, JobActor] = {}

    @property
    def state(self) -> State:
        return self.store.state

    def actor(self, job_id: str) -> JobActor:
        """The actor of ``job_id`` (a job of the state), made on first use."""
        actor = self.actors.get(job_id)
        if actor is None:
            actor = self.actors[job_id] = JobActor(self.state.jobs[job_id], self.ctx)
        return actor

    def commit(self, events: list[Event]) -> list[int]:
        """Append ``events`` (one fsync), fold them in, then carry out their reactions."""
        if not events:
            return []
        events = closing(self.state, events)
        records = self.store.append(events)
        self.metrics.appended(len(records), self.store.appended_bytes)
        self.metrics.observe(events, self.state)
        journal.write(events, self.state)
        if self.watch is not None:
            self.watch(events, time.monotonic())
        broken: dict[str, Exception] = {}
        for event in events:
            job_id = getattr(event, "job_id", None)
            if job_id is not None and job_id in self.actors and job_id not in broken:
                try:
                    self.actors[job_id].fold(event)  # Optuna told how a trial ended
                except Exception as exc:
                    if not owned_by_job(exc):
                        raise
                    broken[job_id] = exc
            self.effector.carry_out(reactions(event, self.state))
        seqs = [r.seq for r in records]
        for job_id, error in broken.items():  # the batch is durable: now fail those jobs
            self.fail(job_id, "telling the study how a trial ended", error)
        return seqs

    def guard(self, job_id: str, where: str, work: Callable[[], T]) -> T | None:
        """``work()`` for job ``job_id``; an error the job owns fails the job (None returned).

        ``where`` says what was being done, for ``job.failed``'s reason. An error no job
        owns (the log's, the state directory's, the host's) is raised.
        """
        try:
            return work()
        except Exception as exc:
            if not owned_by_job(exc):
                raise
            self.fail(job_id, where, exc)
            return None

    def fail(self, job_id: str, where: str, exc: Exception) -> None:
        """Record ``job.failed`` for ``exc`` (its actor is dropped first: it may be broken)."""
        self.actors.pop(job_id, None)
        self.effector.stop_stage(job_id)
        job = self.state.jobs.get(job_id)
        if job is not None and job.status is JobStatus.RUNNING:
            self.commit([job_failed(job_id, where, exc)])

    def decide(self, actor: JobActor, inp: Input) -> tuple[list[Event], list[Input]]:
        """``actor`` decides on ``inp``; the events are appended, then the effects carried out.

        Returns the events, and what the effects tell the actor next (``best/`` written).
        An error the job owns fails the job (:meth:`guard`); nothing follows then.
        """

        def work() -> tuple[list[Event], list[Input]]:
            decision = actor.decide(self.state, inp, datetime.now(UTC))
            self.commit(decision.events)
            return decision.events, self.effector.carry_out(decision.effects)

        where = f"deciding on {type(inp).__name__.lower()}"
        return self.guard(actor.job_id, where, work) or ([], [])

    def step(self, dispatching: bool, admit: bool) -> None:
        """Every job actor decides on its turn (see the module doc); ended jobs' go."""
        for job_id in list(self.actors):
            self.guard(job_id, "its turn", partial(self._step_job, job_id, dispatching, admit))
            if self.state.jobs[job_id].status is not JobStatus.RUNNING:
                self.effector.stop_stage(job_id)
                self.actors.pop(job_id, None)

    def _step_job(self, job_id: str, dispatching: bool, admit: bool) -> None:
        actor = self.actors.get(job_id)
        pending: list[Input] = []
        if (ended := self.effector.stage_ended(job_id)) is not None:
            pending.append(ended)
        for _ in range(DECISIONS_PER_TURN):
            if self.actors.get(job_id) is not actor or actor is None:
                return  # failed meanwhile
            running = self.effector.stage_running(job_id)
            inp = pending.pop(0) if pending else Tick(dispatching, admit, running)
            events, follow = self.decide(actor, inp)
            pending += follow
            if not events and not follow:
                break
