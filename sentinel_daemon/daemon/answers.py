"""What a worker's answer, or its loss, means for a trial: the events, from the state.

Pure functions for the job actor (:mod:`sentinel_daemon.daemon.actor`). An answer counts
only for the attempt that is running (:func:`current_trial`): a replayed result, or one
for an attempt already given up, decides nothing. A ``saved`` answer whose model file
cannot be trusted (the loop checked it) fails the attempt; a model found complete on disk
(its worker died after saving it, before answering) counts as saved. A failed attempt is retried
while attempts are left; one that could not read the job's data fails the job. A job that
ends early (failed or cancelled) first closes the trials it leaves open (:func:`closing`).
"""

from __future__ import annotations

from typing import Any

from sentinel_daemon.core.events import (
    Event,
    Intermediate,
    JobCancelled,
    JobFailed,
    TrialFailed,
    TrialPruned,
    TrialSaved,
    TrialStarted,
)
from sentinel_daemon.core.ids import JobId, TrialNumber
from sentinel_daemon.core.state import JobState, JobStatus, State, TrialState, TrialStatus
from sentinel_daemon.daemon.hostpause import host_condition
from sentinel_daemon.ml.artifacts import FoundModel
from sentinel_daemon.queue.messages import Failed, Pruned, Saved, WorkerMessage, split_command_id

#: How a worker's Failed message starts when the trial's data could not be read.
DATA_ERROR = "DataError"
#: Attempts of one trial that the host may fail without charging them (see :func:`failed`).
MAX_UNCHARGED = 10


def current_trial(job: JobState, command_id: str) -> TrialState | None:
    """The trial of ``command_id`` while that command is its running attempt, else None."""
    _, number, attempt = split_command_id(command_id)
    trial = job.trials.get(number)
    if (
        job.status is not JobStatus.RUNNING
        or trial is None
        or trial.attempt != attempt
        or trial.status is not TrialStatus.RUNNING
    ):
        return None
    return trial


def answered(
    trial: TrialState, message: WorkerMessage, problem: str | None, max_attempts: int
) -> list[Event]:
    """The events of ``trial``'s running attempt ending with ``message`` (not ``progress``).

    ``problem``: why the model file of a ``saved`` answer cannot be trusted, if it cannot.
    """
    job_id = JobId(message.command_id.rsplit(".", 2)[0])
    number = TrialNumber(trial.number)
    match message:
        case Saved() if problem is not None:
            return [failed(job_id, trial, problem, max_attempts)]
        case Saved():
            return [
                TrialSaved(
                    job_id=job_id,
                    trial=number,
                    model=trial.model,
                    value=message.value,
                    metrics=message.metrics,
                    artifact=message.artifact,
                    sha256=message.sha256,
                    duration_s=round(message.duration_s, 6),
                    intermediate=message.intermediate,
                )
            ]
        case Pruned():
            return [
                TrialPruned(
                    job_id=job_id,
                    trial=number,
                    model=trial.model,
                    step=message.step,
                    value=message.value,
                    intermediate=message.intermediate,
                )
            ]
        case Failed():
            attempt_failed = failed(job_id, trial, message.error, max_attempts)
            if message.error.startswith(DATA_ERROR) and attempt_failed.charged:
                # The job's own data no longer reads (deleted, replaced by garbage): every
                # other attempt would fail the same way, so the job stops here.
                return [
                    attempt_failed.model_copy(update={"retry": False}),
                    JobFailed(job_id=job_id, reason=f"its data: {message.error}"),
                ]
            return [attempt_failed]
    return []


def saved_on_disk(
    job_id: JobId, trial: TrialState, found: FoundModel, intermediate: Intermediate = ()
) -> TrialSaved:
    """``trial.saved`` for a model a worker saved whole but never reported, from its metadata
    (``intermediate``: the reports its ``meta.json`` kept)."""
    return TrialSaved(
        job_id=job_id,
        trial=TrialNumber(trial.number),
        model=trial.model,
        value=found.value,
        metrics=found.metrics,
        artifact=found.artifact,
        sha256=found.sha256,
        duration_s=found.duration_s,
        intermediate=intermediate,
    )


def failed(
    job_id: JobId, trial: TrialState, error: str, max_attempts: int, *, host: bool = False
) -> TrialFailed:
    """The running attempt of ``trial`` failed with ``error``; retried while attempts remain.

    An error that says the host failed it (a full disk: :func:`.hostpause.host_condition`),
    or ``host`` (its worker was lost while the disk was full), is not charged: it is retried
    without using an attempt, :data:`MAX_UNCHARGED` times at most (then it is charged).
    """
    by_host = host or host_condition(error)
    charged = not (by_host and trial.uncharged < MAX_UNCHARGED)
    spent = trial.attempt - trial.uncharged
    return TrialFailed(
        job_id=job_id,
        trial=TrialNumber(trial.number),
        model=trial.model,
        error=error[:2000],
        attempt=trial.attempt,
        retry=not charged or spent < max_attempts,
        charged=charged,
    )


#: ``trial.failed``'s error for a trial left open by its job's end (then the reason).
CLOSED_BY_FAILURE = "its job failed: "
CLOSED_BY_CANCEL = "cancelled with its job"


def closing(state: State, events: list[Event]) -> list[Event]:
    """``events``, with a ``trial.failed`` (``retry: false``) before each ``job.failed`` or
    ``job.cancelled`` for every trial of that job still open (running, or waiting for a
    retry) at that point of the batch.

    So the log closes every trial it opened, with a record an operator can read, and no
    trial of an ended job stays "running" in ``sentinel tail`` or the exported studies.
    A trial the batch itself ends earlier (the attempt whose data error failed the job) is
    not closed twice.
    """
    if not any(isinstance(e, JobFailed | JobCancelled) for e in events):
        return events
    out: list[Event] = []
    open_: dict[str, dict[int, TrialFailed]] = {}  # job id -> trial -> its closing record
    for event in events:
        job_id = getattr(event, "job_id", None)
        if not isinstance(job_id, str):
            out.append(event)
            continue
        if job_id not in open_:
            job = state.jobs.get(job_id)
            running = job is not None and job.status is JobStatus.RUNNING
            open_[job_id] = {
                t.number: _closed(job_id, t.number, t.model, t.attempt)
                for t in (job.trials.values() if job is not None and running else ())
                if not t.status.ended
            }
        trials = open_[job_id]
        match event:
            # Open: an attempt started, or one failed and another follows.
            case TrialStarted() | TrialFailed() if getattr(event, "retry", True):
                trials[event.trial] = _closed(job_id, event.trial, event.model, event.attempt)
            case TrialSaved() | TrialPruned() | TrialFailed():
                trials.pop(event.trial, None)
            case JobFailed() | JobCancelled():
                why = (
                    CLOSED_BY_CANCEL
                    if isinstance(event, JobCancelled)
                    else (CLOSED_BY_FAILURE + event.reason)[:2000]
                )
                out += [t.model_copy(update={"error": why}) for _, t in sorted(trials.items())]
                trials.clear()
            case _:
                pass
        out.append(event)
    return out


def _closed(job_id: str, trial: int, model: Any, attempt: int) -> TrialFailed:
    return TrialFailed(
        job_id=JobId(job_id),
        trial=TrialNumber(trial),
        model=model,
        error="",
        attempt=attempt,
        retry=False,
    )
