"""What the daemon's own log (stderr, the journal) says about each event it records.

The event log holds everything; the journal is where a person on call looks first, so each
event recorded becomes one log line at a level that says whether it needs someone:

- error: ``job.failed``;
- warning: ``job.cancelled``, ``job.rejected``, ``job.completed`` with nothing promoted,
  ``trial.failed`` with no retry left, ``worker.lost``, ``log.repaired``;
- info: ``job.submitted``, ``job.completed`` with a model promoted, ``stage.started``,
  ``stage.completed``, ``model.promoted``, ``trial.failed`` that will be retried;
- debug: ``trial.started``, ``trial.saved``, ``trial.pruned``, ``worker.started``,
  ``worker.exited``, ``daemon.started``, ``daemon.stopped`` (the daemon logs its own start
  and stop as ``daemon.ready`` and ``daemon.stopped``);

so ``journalctl -u sentinel -p warning`` (journald priorities: see
:mod:`sentinel_daemon.logs`) lists what went wrong and nothing else. Each line is named
after its event type and carries the event's identifiers (``job_id``, ``trial``,
``worker``) under the event log's own names, so the same ``jq`` filter reads both.

:func:`lines` is the mapping (events and the state that already includes them in, lines
out, no I/O); :func:`write` sends them to a logger. The match is exhaustive: a new event
type that is not given a line here fails type checking.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, assert_never

import structlog

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
    ModelPromoted,
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
from sentinel_daemon.core.state import JobState, StageStatus, State

Level = Literal["debug", "info", "warning", "error"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Line:
    """One log call: ``logger.<level>(event, **fields)``."""

    level: Level
    event: str
    fields: dict[str, Any] = field(default_factory=dict)


def lines(events: Iterable[Event], state: State) -> list[Line]:
    """The log lines for ``events``, just recorded; ``state`` already includes them."""
    return [line_of(event, state) for event in events]


def write(events: Iterable[Event], state: State, logger: Any = None) -> None:
    """Log :func:`lines` of ``events`` (to this module's logger unless ``logger`` is given)."""
    logger = log if logger is None else logger
    for line in lines(events, state):
        getattr(logger, line.level)(line.event, **line.fields)


def line_of(event: Event, state: State) -> Line:
    """The log line of one event (see the module doc for the levels)."""
    match event:
        case TrialStarted():
            return Line("debug", event.type, _trial(event) | {"attempt": event.attempt})
        case TrialSaved():
            return Line("debug", event.type, _trial(event) | {"value": event.value})
        case TrialPruned():
            return Line("debug", event.type, _trial(event) | {"step": event.step})
        case TrialFailed():
            fields = _trial(event) | {
                "attempt": event.attempt,
                "retry": event.retry,
                "error": event.error,
            }
            return Line("info" if event.retry else "warning", event.type, fields)
        case JobSubmitted():
            return Line(
                "info", event.type, {"job_id": event.job_id, "name": event.name, "file": event.file}
            )
        case JobRejected():
            return Line("warning", event.type, {"file": event.file, "reason": event.reason})
        case JobCompleted():
            job = state.jobs.get(event.job_id)
            fields = _job(event.job_id, job) | {
                "promoted": event.promoted,
                "best_trial": event.best_trial,
                "best_value": event.best_value,
                "trials": _counts(job),
            }
            if job is not None and job.promoted is not None:
                fields["model"] = str(job.promoted.model)
            if event.reason:
                fields["reason"] = event.reason
            # Completed with nothing promoted (the quality gate said no) needs a look.
            return Line("info" if event.promoted else "warning", event.type, fields)
        case JobFailed():
            job = state.jobs.get(event.job_id)
            fields = _job(event.job_id, job) | {"reason": event.reason}
            if job is not None and (stage := _last_stage(job)) is not None:
                fields["stage"] = stage
            return Line("error", event.type, fields)
        case JobCancelled():
            fields = _job(event.job_id, state.jobs.get(event.job_id)) | {"reason": event.reason}
            return Line("warning", event.type, fields)
        case StageStarted():
            return Line("info", event.type, {"job_id": event.job_id, "stage": str(event.stage)})
        case StageCompleted():
            fields = {"job_id": event.job_id, "stage": str(event.stage)}
            return Line("info", event.type, fields | _scalars(event.outputs))
        case ModelPromoted():
            fields = _trial(event) | {"value": event.value, "artifact": event.artifact}
            return Line("info", event.type, fields)
        case WorkerStarted():
            return Line("debug", event.type, _worker(event))
        case WorkerExited():
            fields = _worker(event) | {"exit_code": event.exit_code, "signal": event.signal}
            return Line("debug", event.type, fields)
        case WorkerLost():
            fields = _worker(event) | {
                "reason": event.reason,
                "exit_code": event.exit_code,
                "signal": event.signal,
            }
            return Line("warning", event.type, fields)
        case LogRepaired():
            return Line(
                "warning",
                event.type,
                {
                    "segment": event.segment,
                    "offset": event.offset,
                    "bytes_cut": event.bytes_cut,
                    "backup": event.backup,
                    "reason": event.reason,
                },
            )
        case DaemonStarted() | DaemonStopped():
            return Line("debug", event.type, {"pid": event.pid, "version": event.version})
        case _:
            assert_never(event)


def _trial(
    event: TrialStarted | TrialSaved | TrialPruned | TrialFailed | ModelPromoted,
) -> dict[str, Any]:
    return {"job_id": event.job_id, "trial": event.trial, "model": str(event.model)}


def _job(job_id: str, job: JobState | None) -> dict[str, Any]:
    return {"job_id": job_id, "name": job.name if job is not None else None}


def _worker(event: WorkerStarted | WorkerExited | WorkerLost) -> dict[str, Any]:
    return {"worker": event.worker, "pid": event.pid, "gpu": event.gpu}


def _counts(job: JobState | None) -> dict[str, dict[str, int]]:
    """An ended job's trials by model and outcome, with plain string keys (for JSON)."""
    if job is None:
        return {}
    return {str(m): {str(s): n for s, n in c.items()} for m, c in job.trial_counts.items()}


def _last_stage(job: JobState) -> str | None:
    """The stage a job was in: the last one started and not completed, else the last one."""
    running = [s for s, st in job.stages.items() if st.status is StageStatus.RUNNING]
    if running:
        return str(running[-1])
    return str(list(job.stages)[-1]) if job.stages else None


def _scalars(outputs: dict[str, Any]) -> dict[str, Any]:
    """The plain values of a stage's outputs (rows, features...); nested ones stay in the log."""
    return {
        k: v
        for k, v in outputs.items()
        if isinstance(v, str | int | float | bool) and k not in ("job_id", "stage")
    }


__all__ = ["Line", "line_of", "lines", "write"]
