"""The daemon's state: nothing but a fold of :func:`apply` over the event log.

``apply(state, event)`` has no I/O, no clock and no randomness: the same events always
give the same state, which is what makes replay after a crash trustworthy. Like the
``mutate`` of eventsourcing's aggregates it updates ``state`` in place and returns it, so
that replaying a million events costs a million small updates rather than a million
copies; callers that need the value before an event copy it first (:meth:`State.copy_state`).

The state is made of slotted dataclasses, cheap to update during replay; snapshots turn
it into JSON-ready data and back through a pydantic ``TypeAdapter``, so a snapshot is
validated when it loads (:func:`state_as_dict`, :func:`state_from_data`;
:func:`state_to_json` gives the same as bytes).
"""

from __future__ import annotations

import copy
import math
from bisect import bisect_left
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, assert_never

from pydantic import TypeAdapter

from sentinel_daemon.core.events import (
    DaemonStarted,
    DaemonStopped,
    Event,
    JobCancelled,
    JobCompleted,
    JobFailed,
    JobRejected,
    JobSubmitted,
    LogRepaired,
    Metrics,
    ModelKind,
    ModelPromoted,
    Params,
    Stage,
    StageCompleted,
    StageStarted,
    TrialFailed,
    TrialPruned,
    TrialSaved,
    TrialStarted,
    WorkerExited,
    WorkerLost,
    WorkerStarted,
)

#: Bump when the shape of State changes; a snapshot of another version is ignored
#: (with a warning) and the log is replayed from the start.
STATE_VERSION = 3  # 2: only the latest ended workers stay in ``workers``; ``workers_ended``
# 3: ``trial_durations``

#: Upper bounds, in seconds, of the histogram of saved trials' durations that the state
#: keeps (:class:`DurationTally`; Prometheus's ``sentinel_trial_duration_seconds``): trials
#: last from seconds to hours. Changing them changes the state's shape: bump STATE_VERSION.
TRIAL_DURATION_BUCKETS: tuple[float, ...] = (
    1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400,
)  # fmt: skip

#: Ended workers kept in ``State.workers`` besides the live ones. The daemon asks whether a
#: worker holding commands is one of its own (a predecessor's, whose commands go back to
#: the queue at start-up) by looking it up there; those are always among the latest to end.
KEPT_ENDED_WORKERS = 256


class JobStatus(StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class StageStatus(StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"


class TrialStatus(StrEnum):
    RUNNING = "running"
    RETRYING = "retrying"  # an attempt failed and another will follow
    SAVED = "saved"
    PRUNED = "pruned"
    FAILED = "failed"  # failed with no retry left

    @property
    def ended(self) -> bool:
        return self in (TrialStatus.SAVED, TrialStatus.PRUNED, TrialStatus.FAILED)


class WorkerStatus(StrEnum):
    ALIVE = "alive"
    EXITED = "exited"
    LOST = "lost"


@dataclass(slots=True)
class TrialState:
    number: int
    model: ModelKind
    params: Params
    attempt: int
    status: TrialStatus = TrialStatus.RUNNING
    value: float | None = None
    metrics: Metrics = field(default_factory=dict)
    artifact: str | None = None
    sha256: str | None = None
    duration_s: float | None = None
    error: str | None = None
    pruned_step: int | None = None
    #: Failed attempts not charged to ``trials.max_attempts`` (the host failed them).
    uncharged: int = 0


@dataclass(slots=True)
class StageState:
    status: StageStatus = StageStatus.RUNNING
    outputs: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Promotion:
    trial: int
    model: ModelKind
    artifact: str
    sha256: str
    value: float


@dataclass(slots=True)
class JobState:
    job_id: str
    name: str
    spec: dict[str, Any]
    file: str
    file_sha256: str
    submitted_seq: int
    status: JobStatus = JobStatus.RUNNING
    stages: dict[Stage, StageState] = field(default_factory=dict)
    trials: dict[int, TrialState] = field(default_factory=dict)
    promoted: Promotion | None = None
    best_trial: int | None = None
    best_value: float | None = None
    reason: str = ""
    #: Once a job has ended its trials are folded into counts (model -> status -> n), so
    #: the state, and every snapshot, grows with running work, not with history. Each
    #: trial stays in the log (``sentinel tail --job``).
    trial_counts: dict[str, dict[str, int]] = field(default_factory=dict)

    def ended_trials(self, model: ModelKind) -> int:
        """Trials of ``model`` that ended: saved, pruned, or failed with no retry left."""
        live = sum(1 for t in self.trials.values() if t.model == model and t.status.ended)
        counts = self.trial_counts.get(model, {})
        return live + sum(n for status, n in counts.items() if TrialStatus(status).ended)

    def compact(self) -> None:
        """Fold the trials of an ended job into counts and keep its best."""
        if self.best_trial is None and (best := self.best_saved()) is not None:
            self.best_trial, self.best_value = best.number, best.value
        for trial in self.trials.values():
            per_model = self.trial_counts.setdefault(trial.model, {})
            per_model[trial.status] = per_model.get(trial.status, 0) + 1
        self.trials = {}

    def best_saved(self, model: ModelKind | None = None) -> TrialState | None:
        """The saved trial with the highest value (the earliest started on ties)."""
        best: TrialState | None = None
        for t in self.trials.values():
            if t.status is not TrialStatus.SAVED or (model is not None and t.model != model):
                continue
            assert t.value is not None
            if best is None or t.value > (best.value or float("-inf")):
                best = t
        return best


@dataclass(slots=True)
class DurationTally:
    """Durations as a histogram: how many fell in each bucket, and their sum.

    ``counts[i]`` counts durations up to ``TRIAL_DURATION_BUCKETS[i]`` (and above the bucket
    before it); the last one counts those above every bound. Not cumulative: the metrics
    add them up as Prometheus's ``le`` buckets need.
    """

    counts: list[int] = field(default_factory=lambda: [0] * (len(TRIAL_DURATION_BUCKETS) + 1))
    sum_s: float = 0.0

    def add(self, seconds: float) -> None:
        if not (math.isfinite(seconds) and seconds >= 0):
            return  # a duration no clock gives; summing it would spoil every later value
        self.counts[bisect_left(TRIAL_DURATION_BUCKETS, seconds)] += 1
        self.sum_s += seconds


@dataclass(slots=True)
class WorkerState:
    worker: str
    pid: int
    gpu: int | None
    status: WorkerStatus = WorkerStatus.ALIVE
    exit_code: int | None = None
    signal: int | None = None
    reason: str = ""


@dataclass(slots=True)
class State:
    """Everything the daemon knows, as of the event with seq ``last_seq``."""

    version: int = STATE_VERSION
    last_seq: int = 0
    jobs: dict[str, JobState] = field(default_factory=dict)
    #: Every live worker and the :data:`KEPT_ENDED_WORKERS` that ended last (those in the
    #: order they ended): the state does not grow with every worker a long-running daemon
    #: ever started.
    workers: dict[str, WorkerState] = field(default_factory=dict)
    #: Workers that ever ended, by how (``exited`` / ``lost``): counts survive the pruning.
    workers_ended: dict[str, int] = field(default_factory=dict)
    rejected: int = 0
    daemon_pid: int | None = None
    daemon_starts: int = 0
    log_repairs: int = 0
    #: Events that name a job, trial or worker the log never introduced. A correct
    #: daemon never writes one; counting them keeps replay total instead of crashing.
    orphans: int = 0
    #: The durations of every ``trial.saved`` in the log (an ended job keeps no trials).
    trial_durations: DurationTally = field(default_factory=DurationTally)

    def copy_state(self) -> State:
        """A deep copy, for callers that must keep the value from before an :func:`apply`."""
        return copy.deepcopy(self)

    def running_jobs(self) -> list[JobState]:
        return [j for j in self.jobs.values() if j.status is JobStatus.RUNNING]


_STATE_ADAPTER: TypeAdapter[State] = TypeAdapter(State)


def state_to_json(state: State) -> bytes:
    """The state as JSON bytes (for snapshots)."""
    return _STATE_ADAPTER.dump_json(state)


def state_as_dict(state: State) -> dict[str, Any]:
    """The state as JSON-ready data (for snapshots, tests and ``status``)."""
    data: dict[str, Any] = _STATE_ADAPTER.dump_python(state, mode="json")
    return data


def state_from_data(data: object) -> State:
    """Validate data shaped like :func:`state_as_dict` back into a state.

    Raises ``pydantic.ValidationError`` (a ``ValueError``) when it does not fit.
    """
    return _STATE_ADAPTER.validate_python(data)


def apply(state: State, event: Event) -> State:
    """Fold one event into ``state`` (in place) and return it."""
    # The hot cases (trial events) come first: a match tries its cases in order.
    match event:
        case TrialStarted():
            if (job := _job(state, event.job_id)) is not None:
                before = job.trials.get(event.trial)
                job.trials[event.trial] = TrialState(
                    number=event.trial,
                    model=event.model,
                    params=event.params,
                    attempt=event.attempt,
                    uncharged=0 if before is None else before.uncharged,
                )
        case TrialSaved():
            state.trial_durations.add(event.duration_s)
            if (trial := _trial(state, event.job_id, event.trial)) is not None:
                trial.status = TrialStatus.SAVED
                trial.value = event.value
                trial.metrics = event.metrics
                trial.artifact = event.artifact
                trial.sha256 = event.sha256
                trial.duration_s = event.duration_s
        case TrialPruned():
            if (trial := _trial(state, event.job_id, event.trial)) is not None:
                trial.status = TrialStatus.PRUNED
                trial.pruned_step = event.step
                trial.value = event.value
        case TrialFailed():
            if (trial := _trial(state, event.job_id, event.trial)) is not None:
                trial.status = TrialStatus.RETRYING if event.retry else TrialStatus.FAILED
                trial.error = event.error
                trial.attempt = event.attempt
                trial.uncharged += 0 if event.charged else 1
        case DaemonStarted():
            state.daemon_pid = event.pid
            state.daemon_starts += 1
        case DaemonStopped():
            state.daemon_pid = None
        case LogRepaired():
            state.log_repairs += 1
        case JobSubmitted():
            state.jobs[event.job_id] = JobState(
                job_id=event.job_id,
                name=event.name,
                spec=event.spec,
                file=event.file,
                file_sha256=event.file_sha256,
                submitted_seq=state.last_seq + 1,
            )
        case JobRejected():
            state.rejected += 1
        case StageStarted():
            if (job := _job(state, event.job_id)) is not None:
                job.stages[event.stage] = StageState()
        case StageCompleted():
            if (job := _job(state, event.job_id)) is not None:
                job.stages[event.stage] = StageState(
                    status=StageStatus.COMPLETED, outputs=event.outputs
                )
        case JobCompleted():
            if (job := _job(state, event.job_id)) is not None:
                job.status = JobStatus.COMPLETED
                job.best_trial = event.best_trial
                job.best_value = event.best_value
                job.reason = event.reason
                job.compact()
        case JobFailed() | JobCancelled():
            if (job := _job(state, event.job_id)) is not None:
                job.status = (
                    JobStatus.FAILED if isinstance(event, JobFailed) else JobStatus.CANCELLED
                )
                job.reason = event.reason
                job.compact()
        case ModelPromoted():
            if (job := _job(state, event.job_id)) is not None:
                job.promoted = Promotion(
                    trial=event.trial,
                    model=event.model,
                    artifact=event.artifact,
                    sha256=event.sha256,
                    value=event.value,
                )
        case WorkerStarted():
            state.workers[event.worker] = WorkerState(
                worker=event.worker, pid=event.pid, gpu=event.gpu
            )
        case WorkerExited() | WorkerLost():
            if (worker := state.workers.get(event.worker)) is None:
                state.orphans += 1
            else:
                was_alive = worker.status is WorkerStatus.ALIVE
                lost = isinstance(event, WorkerLost)
                worker.status = WorkerStatus.LOST if lost else WorkerStatus.EXITED
                worker.exit_code = event.exit_code
                worker.signal = event.signal
                worker.reason = event.reason if isinstance(event, WorkerLost) else ""
                if was_alive:
                    state.workers_ended[worker.status] = (
                        state.workers_ended.get(worker.status, 0) + 1
                    )
                    state.workers[event.worker] = state.workers.pop(event.worker)  # to the end
                    _prune_ended_workers(state)
        case _:
            assert_never(event)
    return state


def _prune_ended_workers(state: State) -> None:
    """Forget the workers that ended earliest, beyond :data:`KEPT_ENDED_WORKERS`.

    A worker that ends moves to the end of ``state.workers``, so the ended ones are in the
    order they ended: a worker that ran for months and ended last is kept.
    """
    ended = [w for w, s in state.workers.items() if s.status is not WorkerStatus.ALIVE]
    for worker in ended[: max(0, len(ended) - KEPT_ENDED_WORKERS)]:
        del state.workers[worker]


def fold(events: list[Event] | tuple[Event, ...], state: State | None = None) -> State:
    """Apply ``events`` in order, numbering them after ``state.last_seq``."""
    state = State() if state is None else state
    for event in events:
        apply(state, event)
        state.last_seq += 1
    return state


def _job(state: State, job_id: str) -> JobState | None:
    job = state.jobs.get(job_id)
    if job is None:
        state.orphans += 1
    return job


def _trial(state: State, job_id: str, number: int) -> TrialState | None:
    job = _job(state, job_id)
    if job is None:
        return None
    trial = job.trials.get(number)
    if trial is None:
        state.orphans += 1
    return trial


__all__ = [
    "STATE_VERSION",
    "TRIAL_DURATION_BUCKETS",
    "DurationTally",
    "JobState",
    "JobStatus",
    "Promotion",
    "Stage",
    "StageState",
    "StageStatus",
    "State",
    "TrialState",
    "TrialStatus",
    "WorkerState",
    "WorkerStatus",
    "apply",
    "fold",
    "state_as_dict",
    "state_from_data",
    "state_to_json",
]
