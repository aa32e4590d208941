"""The messages of the queue directory: the trial command and a worker's answers.

A command names its job, trial, attempt, model, parameters and data; a worker answers
with ``progress`` (for the pruner), then ``saved``, ``pruned`` or ``failed``. All are
frozen pydantic models, written as JSON; ids follow :data:`~sentinel_daemon.core.ids.JOB_ID_PATTERN`
and :data:`WORKER_ID_PATTERN` because they become file names.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal, TypeAlias

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    computed_field,
    field_validator,
    model_validator,
)

from sentinel_daemon.core.events import Intermediate, Metrics, ModelKind, Params
from sentinel_daemon.core.ids import JOB_ID_PATTERN, JobId, TrialNumber, WorkerId

#: Worker ids name folders and the first dot-separated part of result names: no dots.
WORKER_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
COMMAND_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\.[0-9]+\.[0-9]+$"
TRACEBACK_CHARS = 4000
_WORKER_ID = re.compile(WORKER_ID_PATTERN)


class _Message(BaseModel):
    # NaN and infinity have no JSON form (they would come back as null and fail to load),
    # so they are refused when a message is built, in the process that made them.
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


def _inside_state(value: str) -> str:
    """A path relative to the state directory, that cannot climb out of it."""
    path = PurePosixPath(value)
    if not value or path.is_absolute() or ".." in path.parts:
        raise ValueError(f"must be a path relative to STATE, without '..': {value!r}")
    return value


class TrialData(_Message):
    """Where a job's data set comes from and how it is split.

    In every trial command (the worker prepares it and keeps it across trials) and in the
    requests of the job's ``prepare`` and ``validate`` stage processes. ``data_roots``: the
    folders the data files must resolve into when they are opened (checked again then,
    since a file can be swapped for a link after the job was accepted). None in commands
    written before the field existed: they still load, and their files are opened safely
    but not checked against roots.
    """

    transactions: Path
    identity: Path | None
    cache_dir: Path
    test_fraction: float = Field(gt=0, lt=1)
    valid_fraction: float = Field(gt=0, lt=1)
    data_roots: tuple[Path, ...] | None = None


class TrialCommand(_Message):
    """One attempt of one trial, from the daemon to a worker.

    ``device`` routes it (:mod:`sentinel_daemon.queue.routing`); a worker trains it on its
    GPU unless it says ``cpu``.

    ``command_id`` is derived from ``job_id``, ``trial`` and ``attempt``; it is written out
    for operators (``jq .command_id``) and checked against those fields when read back.
    """

    job_id: JobId = Field(pattern=JOB_ID_PATTERN)
    trial: TrialNumber = Field(ge=0)
    attempt: int = Field(ge=1)
    model: ModelKind
    params: Params
    data: TrialData
    #: Where the worker saves the model, relative to the state directory.
    artifact_dir: str
    #: Report a ``progress`` message every this many boosting rounds.
    report_every: int = Field(ge=1)
    #: The kind of worker the trial needs (:func:`sentinel_daemon.queue.routing.wanted_device`):
    #: ``gpu`` or ``cpu``. None in commands written before the field existed: they still
    #: load, go to the shared ``pending/`` and train on whatever their worker has.
    device: Literal["gpu", "cpu"] | None = None

    @model_validator(mode="before")
    @classmethod
    def _derived_command_id_must_agree(cls, data: Any) -> Any:
        if isinstance(data, dict) and "command_id" in data:
            data = dict(data)
            given = data.pop("command_id")
            expected = f"{data.get('job_id')}.{data.get('trial')}.{data.get('attempt')}"
            if given != expected:
                raise ValueError(f"command_id {given!r} does not match its fields ({expected})")
        return data

    _artifact_dir_inside_state = field_validator("artifact_dir")(_inside_state)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def command_id(self) -> str:
        return f"{self.job_id}.{self.trial}.{self.attempt}"


def split_command_id(command_id: str) -> tuple[JobId, TrialNumber, int]:
    """``(job_id, trial, attempt)`` from a command id; job ids may themselves hold dots."""
    if not re.match(COMMAND_ID_PATTERN, command_id):
        raise ValueError(f"not a command id: {command_id!r}")
    job_id, trial, attempt = command_id.rsplit(".", 2)
    return JobId(job_id), TrialNumber(int(trial)), int(attempt)


class _Report(_Message):
    worker_id: WorkerId = Field(pattern=WORKER_ID_PATTERN)
    #: Increases with every message of this worker id, across its restarts (see Outbox).
    msg_seq: int = Field(ge=1)
    command_id: str = Field(pattern=COMMAND_ID_PATTERN)


class Progress(_Report):
    """An intermediate validation score, for the pruner."""

    kind: Literal["progress"] = "progress"
    step: int = Field(ge=0)
    value: float


class Saved(_Report):
    """The trial finished and its model is on disk (``artifact`` relative to STATE)."""

    kind: Literal["saved"] = "saved"
    artifact: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    metrics: Metrics
    value: float
    #: Time in the training library alone; ``duration_s`` is the whole attempt.
    train_seconds: float = Field(ge=0)
    duration_s: float = Field(ge=0)
    #: Every ``(step, value)`` this attempt reported as ``progress``, in order. Empty in
    #: messages from workers older than the field (so they still load).
    intermediate: Intermediate = ()

    _artifact_inside_state = field_validator("artifact")(_inside_state)


class Pruned(_Report):
    """The worker stopped the trial at ``step`` because the daemon asked it to."""

    kind: Literal["pruned"] = "pruned"
    step: int = Field(ge=0)
    value: float | None = None
    #: As in :class:`Saved`: the values reported up to and including ``step``.
    intermediate: Intermediate = ()


class Failed(_Report):
    """The attempt raised; ``traceback`` keeps the last :data:`TRACEBACK_CHARS` characters."""

    kind: Literal["failed"] = "failed"
    error: str
    traceback: str = ""

    @field_validator("traceback")
    @classmethod
    def _keep_the_end(cls, value: str) -> str:
        # The innermost frames (the end) say what went wrong; an excerpt keeps files small.
        return value if len(value) <= TRACEBACK_CHARS else "..." + value[-TRACEBACK_CHARS:]


WorkerMessage: TypeAlias = Annotated[
    Progress | Saved | Pruned | Failed, Field(discriminator="kind")
]


MESSAGE_ADAPTER: TypeAdapter[WorkerMessage] = TypeAdapter(WorkerMessage)


class ReplayFilter:
    """Drops a message whose ``msg_seq`` is not above the last one seen from its worker.

    In memory only: after a daemon restart every unacknowledged result passes again, and the
    state must make ingesting it harmless.
    """

    def __init__(self) -> None:
        self._last: dict[str, int] = {}

    def fresh(self, message: WorkerMessage) -> bool:
        if message.msg_seq <= self._last.get(message.worker_id, 0):
            return False
        self._last[message.worker_id] = message.msg_seq
        return True
