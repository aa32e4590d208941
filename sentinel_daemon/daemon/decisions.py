"""The data of a decision: what a job actor is told, and what it decides.

A :class:`~sentinel_daemon.daemon.actor.JobActor` is called as ``decide(state, input, now)``
with one of the inputs below and returns a :class:`Decision`: events to append to the log,
and effects, plain data that the core loop carries out (through
:class:`~sentinel_daemon.daemon.effects.Effector`) once those events are durable. Whatever
needs a file or a process is gathered by the loop first (a stage process that ended, the
checksum of a saved model, a model found on disk) and arrives as an input; so a decision
reads no file and starts nothing, and a test of one needs neither.

:func:`reactions` are the effects of an event whoever decided it (the actor, an operator's
cancel, the Dask dispatcher): a job that ended early has its trials withdrawn, and an ended
job gets its report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeAlias

from sentinel_daemon.core.events import (
    Event,
    Intermediate,
    JobCancelled,
    JobCompleted,
    JobFailed,
    Stage,
)
from sentinel_daemon.core.state import State
from sentinel_daemon.daemon.stages import PrepareRequest, StageOutcome, ValidateRequest
from sentinel_daemon.ml.artifacts import FoundModel
from sentinel_daemon.queue.messages import TrialCommand, WorkerMessage

# ---- inputs ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tick:
    """A turn of the loop: what does the job's state ask for next?

    ``dispatching`` is False while the daemon stops or cannot write (no new stage, no new
    trial); ``admit`` False (admission control: memory is short) holds back new trials and
    retries only. ``stage_running``: a stage process of this job runs now.
    """

    dispatching: bool
    admit: bool = True
    stage_running: bool = False


@dataclass(frozen=True)
class StageEnded:
    """The job's ``prepare`` or ``validate`` process ended, with ``outcome``."""

    stage: Stage
    outcome: StageOutcome


@dataclass(frozen=True)
class BestWritten:
    """``best/`` holds the promoted model now; ``artifact`` is its path relative to STATE."""

    artifact: str


@dataclass(frozen=True)
class Answer:
    """A worker's message. For a ``saved`` one, ``problem`` says why its model file cannot
    be trusted (unreadable, or not the sha256 the worker reported); None when it can."""

    message: WorkerMessage
    problem: str | None = None


@dataclass(frozen=True)
class Lost:
    """The worker that held ``command`` is gone; ``found`` is a complete model of that
    attempt on disk (it died after saving, before answering), if there is one, and
    ``intermediate`` the reports its ``meta.json`` kept."""

    command: TrialCommand
    reason: str
    found: FoundModel | None = None
    intermediate: Intermediate = ()
    #: The state directory's disk was full when it was lost (.hostpause): the worker most
    #: likely died of it, so the attempt is not charged.
    host: bool = False


@dataclass(frozen=True)
class Found:
    """At start-up: a complete model of ``command``'s attempt on disk that no answer
    reported, with the reports its ``meta.json`` kept."""

    command: TrialCommand
    found: FoundModel
    intermediate: Intermediate = ()


@dataclass(frozen=True)
class Redispatch:
    """At start-up: the ids of every command in a queue folder; the rest must be queued."""

    in_flight: frozenset[str]


Input: TypeAlias = Tick | StageEnded | BestWritten | Answer | Lost | Found | Redispatch

# ---- effects --------------------------------------------------------------------------------


@dataclass(frozen=True)
class PutCommand:
    """Queue a trial command (``pending/``); one already queued is not queued twice."""

    command: TrialCommand


@dataclass(frozen=True)
class RequestPrune:
    """Ask ``worker`` to stop the trial of ``command_id`` (the pruner said so)."""

    worker: str
    command_id: str


@dataclass(frozen=True)
class StartStage:
    """Start ``job_id``'s stage process for ``stage`` with ``request``."""

    job_id: str
    stage: Stage
    request: PrepareRequest | ValidateRequest


@dataclass(frozen=True)
class WriteBest:
    """Promote ``artifact`` (relative to STATE) into the job's ``best/`` with its model card.

    Carried out, it answers with :class:`BestWritten`.
    """

    job_id: str
    artifact: str
    sha256: str
    card: dict[str, Any] = field(hash=False)


@dataclass(frozen=True)
class Withdraw:
    """A job ended early: take its pending commands back, ask its workers to stop, and kill
    its stage process."""

    job_id: str


@dataclass(frozen=True)
class WriteReport:
    """Write an ended job's report (in a child process, one at a time)."""

    job_id: str


Effect: TypeAlias = PutCommand | RequestPrune | StartStage | WriteBest | Withdraw | WriteReport


class Decision(NamedTuple):
    """Events to append, then effects to carry out, in that order."""

    events: list[Event]
    effects: list[Effect]


def nothing() -> Decision:
    return Decision([], [])


def reactions(event: Event, state: State) -> list[Effect]:
    """The effects of ``event`` whoever decided it, from the state it was folded into."""
    effects: list[Effect] = []
    if isinstance(event, JobCancelled | JobFailed):
        effects.append(Withdraw(event.job_id))
    if (
        isinstance(event, JobCompleted | JobCancelled | JobFailed)
        and state.jobs[event.job_id].trial_counts  # no trial, no report
    ):
        effects.append(WriteReport(event.job_id))
    return effects
