"""Typed domain events: the catalogue of everything that can happen to the daemon.

Each event is a frozen pydantic model discriminated by a literal ``type``, with a schema
version ``v``. Types are append-only: never rename or reuse one. When a type's fields
change, bump its version and register an upcaster in :data:`UPCASTERS` that turns the
older record into the newer shape before validation; the golden logs in
``events/golden/`` prove that every older log still replays.

The domain never sees bytes or envelopes (``seq``, ``ts``, the checksum): :func:`encode`
and :func:`decode` turn an event into a plain dict and back (upcasting on the way in);
:mod:`sentinel_daemon.log.records` wraps that dict in its envelope as one checksummed line,
and :class:`sentinel_daemon.log.store.Store` is where the two meet.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from typing import Annotated, Any, Literal, TypeAlias

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

from sentinel_daemon.core.ids import JobId, TrialNumber, WorkerId

JsonScalar: TypeAlias = str | int | float | bool | None
Params: TypeAlias = dict[str, JsonScalar]
Metrics: TypeAlias = dict[str, float]
#: A trial's intermediate validation values as the pruner saw them: ``(step, value)`` pairs
#: in the order reported, a JSON array of ``[step, value]`` arrays in a record.
Intermediate: TypeAlias = tuple[tuple[int, float], ...]


class Stage(StrEnum):
    """The stages of a job, in the order they run."""

    PREPARE = "prepare"
    SEARCH = "search"
    VALIDATE = "validate"
    EXPORT = "export"


class ModelKind(StrEnum):
    """The model families a job can search."""

    XGBOOST = "xgboost"
    LIGHTGBM = "lightgbm"


class _Event(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", use_enum_values=False)


# ---- daemon ---------------------------------------------------------------------------


class DaemonStarted(_Event):
    """The daemon finished replay and took over the state directory."""

    type: Literal["daemon.started"] = "daemon.started"
    v: Literal[1] = 1
    pid: int
    version: str


class DaemonStopped(_Event):
    """The daemon stopped on purpose (not written after a crash)."""

    type: Literal["daemon.stopped"] = "daemon.stopped"
    v: Literal[1] = 1
    pid: int
    version: str
    reason: str = ""


class LogRepaired(_Event):
    """Bytes were cut from the log (a torn tail, or by ``sentinel log repair`` a corrupt tail,
    a duplicated line or a stray empty segment); they were copied aside first."""

    type: Literal["log.repaired"] = "log.repaired"
    v: Literal[1] = 1
    segment: str
    offset: int
    bytes_cut: int
    backup: str
    reason: str


# ---- jobs -----------------------------------------------------------------------------


class JobSubmitted(_Event):
    """A job file passed validation and was accepted."""

    type: Literal["job.submitted"] = "job.submitted"
    v: Literal[1] = 1
    job_id: JobId
    name: str
    spec: dict[str, Any]
    file: str
    file_sha256: str


class JobRejected(_Event):
    """A job file failed validation; it was moved to ``STATE/rejected/``."""

    type: Literal["job.rejected"] = "job.rejected"
    v: Literal[1] = 1
    file: str
    reason: str
    file_sha256: str | None = None


class StageStarted(_Event):
    type: Literal["stage.started"] = "stage.started"
    v: Literal[1] = 1
    job_id: JobId
    stage: Stage


class StageCompleted(_Event):
    type: Literal["stage.completed"] = "stage.completed"
    v: Literal[1] = 1
    job_id: JobId
    stage: Stage
    outputs: dict[str, Any] = Field(default_factory=dict)


class JobCompleted(_Event):
    """The job ran every stage; ``promoted`` says whether a model passed the quality gate."""

    type: Literal["job.completed"] = "job.completed"
    v: Literal[1] = 1
    job_id: JobId
    best_trial: TrialNumber | None
    best_value: float | None
    promoted: bool
    reason: str = ""


class JobFailed(_Event):
    type: Literal["job.failed"] = "job.failed"
    v: Literal[1] = 1
    job_id: JobId
    reason: str


class JobCancelled(_Event):
    type: Literal["job.cancelled"] = "job.cancelled"
    v: Literal[1] = 1
    job_id: JobId
    reason: str


# ---- trials ---------------------------------------------------------------------------


class TrialStarted(_Event):
    """A trial command was written to the queue (``attempt`` counts from 1)."""

    type: Literal["trial.started"] = "trial.started"
    v: Literal[1] = 1
    job_id: JobId
    trial: TrialNumber
    model: ModelKind
    params: Params
    attempt: int = Field(ge=1)


class TrialSaved(_Event):
    """A trial finished and its model is on disk with the given checksum."""

    type: Literal["trial.saved"] = "trial.saved"
    v: Literal[2] = 2  # v2 added intermediate; v1 records are upcast with none
    job_id: JobId
    trial: TrialNumber
    model: ModelKind
    value: float
    metrics: Metrics
    artifact: str
    sha256: str
    duration_s: float
    intermediate: Intermediate = ()


class TrialPruned(_Event):
    """The pruner stopped a trial early, at ``step``; it ends the trial."""

    type: Literal["trial.pruned"] = "trial.pruned"
    v: Literal[2] = 2  # v2 added intermediate; v1 records are upcast with none
    job_id: JobId
    trial: TrialNumber
    model: ModelKind
    step: int
    value: float | None = None
    intermediate: Intermediate = ()


class TrialFailed(_Event):
    """A trial attempt failed; ``retry`` says whether another attempt will follow.

    ``charged`` is false when the host failed it (a full disk): the attempt does not count
    towards ``trials.max_attempts``.
    """

    type: Literal["trial.failed"] = "trial.failed"
    v: Literal[2] = 2  # v2 added charged; v1 records are upcast as charged
    job_id: JobId
    trial: TrialNumber
    model: ModelKind
    error: str
    attempt: int = Field(ge=1)
    retry: bool
    charged: bool = True


class ModelPromoted(_Event):
    type: Literal["model.promoted"] = "model.promoted"
    v: Literal[1] = 1
    job_id: JobId
    trial: TrialNumber
    model: ModelKind
    artifact: str
    sha256: str
    value: float


# ---- workers --------------------------------------------------------------------------


class WorkerStarted(_Event):
    """A worker started: its GPU (or none), the kind of trials it takes, its CPU threads."""

    type: Literal["worker.started"] = "worker.started"
    v: Literal[2] = 2  # v2 added device and threads; v1 records are upcast (see below)
    worker: WorkerId
    pid: int
    gpu: int | None
    #: ``gpu``: a GPU worker (takes GPU trials), ``cpu``: a CPU worker; None: either kind
    #: (a Dask slot, whose tasks ask the cluster for the resource each needs).
    device: Literal["gpu", "cpu"] | None = None
    #: CPU threads the worker trains with; None: not set (all cores, or a Dask worker's).
    threads: int | None = Field(default=None, ge=1)


class WorkerExited(_Event):
    """A worker process ended; exactly one of ``exit_code`` and ``signal`` is set."""

    type: Literal["worker.exited"] = "worker.exited"
    v: Literal[1] = 1
    worker: WorkerId
    pid: int
    gpu: int | None
    exit_code: int | None = None
    signal: int | None = None

    @model_validator(mode="after")
    def _exit_code_or_signal(self) -> WorkerExited:
        if (self.exit_code is None) == (self.signal is None):
            raise ValueError("worker.exited needs exactly one of exit_code and signal")
        return self


class WorkerLost(_Event):
    """A worker crashed or stopped heartbeating; its trial, if any, is handed back."""

    type: Literal["worker.lost"] = "worker.lost"
    v: Literal[1] = 1
    worker: WorkerId
    pid: int
    gpu: int | None
    reason: str
    exit_code: int | None = None
    signal: int | None = None


Event: TypeAlias = Annotated[
    DaemonStarted
    | DaemonStopped
    | LogRepaired
    | JobSubmitted
    | JobRejected
    | StageStarted
    | StageCompleted
    | JobCompleted
    | JobFailed
    | JobCancelled
    | TrialStarted
    | TrialSaved
    | TrialPruned
    | TrialFailed
    | ModelPromoted
    | WorkerStarted
    | WorkerExited
    | WorkerLost,
    Field(discriminator="type"),
]

EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)

EVENT_TYPES: dict[str, type[_Event]] = {
    cls.model_fields["type"].default: cls
    for cls in (
        DaemonStarted,
        DaemonStopped,
        LogRepaired,
        JobSubmitted,
        JobRejected,
        StageStarted,
        StageCompleted,
        JobCompleted,
        JobFailed,
        JobCancelled,
        TrialStarted,
        TrialSaved,
        TrialPruned,
        TrialFailed,
        ModelPromoted,
        WorkerStarted,
        WorkerExited,
        WorkerLost,
    )
}

CURRENT_VERSION: dict[str, int] = {
    name: int(cls.model_fields["v"].default) for name, cls in EVENT_TYPES.items()
}

Upcaster: TypeAlias = Callable[[dict[str, Any]], dict[str, Any]]


def _add_no_intermediate(payload: dict[str, Any]) -> dict[str, Any]:
    """v1 -> v2 of ``trial.saved`` and ``trial.pruned``: v1 recorded no intermediate values."""
    return {**payload, "v": 2, "intermediate": []}


def _add_charged(payload: dict[str, Any]) -> dict[str, Any]:
    """v1 -> v2 of ``trial.failed``: before v2 every failed attempt was charged."""
    return {**payload, "v": 2, "charged": True}


def _worker_device_from_gpu(payload: dict[str, Any]) -> dict[str, Any]:
    """v1 -> v2 of ``worker.started``: a v1 worker with a GPU trained on it, one without on
    the CPU (each took every kind of trial); its threads were not recorded."""
    device = "cpu" if payload.get("gpu") is None else "gpu"
    return {**payload, "v": 2, "device": device, "threads": None}


#: ``(type, from_version) -> function`` turning a version-N payload into version N+1.
#: Each must be pure (a new dict; the input is left alone) and must set ``v`` to N+1.
UPCASTERS: dict[tuple[str, int], Upcaster] = {
    ("trial.saved", 1): _add_no_intermediate,
    ("trial.pruned", 1): _add_no_intermediate,
    ("trial.failed", 1): _add_charged,
    ("worker.started", 1): _worker_device_from_gpu,
}


class UnknownEventVersion(ValueError):
    """A payload's version is newer than this code, or has no upcaster path."""


def upcast(
    payload: dict[str, Any],
    upcasters: dict[tuple[str, int], Upcaster] | None = None,
    current: dict[str, int] | None = None,
) -> dict[str, Any]:
    """Bring a stored payload up to the current version of its type.

    ``upcasters`` and ``current`` default to the module's registries; tests pass their own.
    """
    table = UPCASTERS if upcasters is None else upcasters
    versions = CURRENT_VERSION if current is None else current
    type_ = payload.get("type")
    v = payload.get("v")
    if not isinstance(type_, str) or type_ not in versions:
        raise UnknownEventVersion(f"unknown event type {type_!r}")
    if not isinstance(v, int):
        raise UnknownEventVersion(f"event {type_!r} has no integer version")
    target = versions[type_]
    if v > target:
        raise UnknownEventVersion(
            f"event {type_!r} is at v{v} but this Sentinel reads up to v{target}"
        )
    while v < target:
        step = table.get((type_, v))
        if step is None:
            raise UnknownEventVersion(f"no upcaster for {type_!r} from v{v}")
        payload = step(payload)
        if payload.get("v") != v + 1:
            raise UnknownEventVersion(f"upcaster for {type_!r} v{v} did not produce v{v + 1}")
        v += 1
    return payload


_validate = EVENT_ADAPTER.validate_python


def decode(payload: dict[str, Any]) -> Event:
    """Validate a payload (without envelope) into its event, upcasting older versions."""
    if payload.get("v") != CURRENT_VERSION.get(payload.get("type"), -1):  # type: ignore[arg-type]
        payload = upcast(payload)
    return _validate(payload)


def encode(event: Event) -> dict[str, Any]:
    """The event as a JSON-ready mapping, ``type`` and ``v`` first."""
    return event.model_dump(mode="json")
