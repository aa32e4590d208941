"""One job's whole history read back from the event log: its trials, stages and outcome.

The daemon's state keeps counts, not trials, once a job has ended (the state grows with
running work only), so reports and exports read the log itself. :func:`read_history`
scans ``STATE/events/`` read-only, without the daemon's lock (as ``sentinel status``
does); a torn last record, which a running daemon may be writing, is where it stops.
:func:`frozen_trials` rebuilds a model's trials as Optuna ``FrozenTrial`` objects, with
the distributions the search sampled from, for Optuna's own tools (through
:func:`sentinel_daemon.ml.study.frozen_trial`, as the daemon's job actor rebuilds its studies).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, cast

import optuna

from sentinel_daemon.core.events import (
    JobCancelled,
    JobCompleted,
    JobFailed,
    JobSubmitted,
    ModelPromoted,
    StageCompleted,
    TrialFailed,
    TrialPruned,
    TrialSaved,
    TrialStarted,
)
from sentinel_daemon.core.ids import check_job_id
from sentinel_daemon.core.jobspec import JobSpec, ModelName
from sentinel_daemon.core.space import ParamSpec, resolve_space
from sentinel_daemon.errors import UnknownJob
from sentinel_daemon.layout import EVENTS_DIR
from sentinel_daemon.log.segments import LogScan
from sentinel_daemon.log.store import decode_record
from sentinel_daemon.ml.space import distributions
from sentinel_daemon.ml.study import frozen_trial as optuna_trial


class Outcome(StrEnum):
    """How a trial ended, as the log says; ``running`` when it had not ended."""

    SAVED = "saved"
    PRUNED = "pruned"
    FAILED = "failed"
    RUNNING = "running"


@dataclass
class TrialRecord:
    """One trial across its attempts; ``started`` and ``ended`` are record timestamps."""

    number: int
    model: str
    params: dict[str, Any]
    attempts: int
    started: str
    outcome: Outcome = Outcome.RUNNING
    ended: str | None = None
    value: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    intermediate: tuple[tuple[int, float], ...] = ()
    artifact: str | None = None
    sha256: str | None = None
    duration_s: float | None = None
    pruned_step: int | None = None
    error: str = ""


@dataclass
class JobHistory:
    """What the log holds about one job. ``status`` is ``running`` until the job ended."""

    job_id: str
    name: str
    spec: dict[str, Any]
    submitted: str
    status: str = "running"
    reason: str = ""
    ended: str | None = None
    trials: dict[int, TrialRecord] = field(default_factory=dict)
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    promoted: ModelPromoted | None = None
    completed: JobCompleted | None = None

    @property
    def models(self) -> list[str]:
        return [str(m) for m in self.spec.get("models", ())]

    def job_spec(self) -> JobSpec:
        return JobSpec.from_raw(self.spec)

    def space(self, model: str) -> dict[str, ParamSpec]:
        """The search space ``model``'s trials were sampled from (defaults plus overrides)."""
        overrides = self.job_spec().search.space
        given = overrides.for_model(cast(ModelName, model)) if overrides else None
        return resolve_space(model, given)

    def trials_of(self, model: str) -> list[TrialRecord]:
        return [t for n, t in sorted(self.trials.items()) if t.model == model]


def read_history(state_dir: Path, job_id: str) -> JobHistory:
    """Scan the log of ``state_dir`` for ``job_id``; UnknownJob when it never was submitted."""
    check_job_id(job_id)
    history: JobHistory | None = None
    events_dir = Path(state_dir) / EVENTS_DIR
    if events_dir.is_dir():
        for record in LogScan(events_dir):
            # Most records belong to other jobs: compare the raw field before decoding.
            if record.payload.get("job_id") != job_id:
                continue
            event = decode_record(record)
            if isinstance(event, JobSubmitted):
                history = JobHistory(
                    job_id=job_id, name=event.name, spec=dict(event.spec), submitted=record.ts
                )
            elif history is not None:
                _fold(history, event, record.ts)
    if history is None:
        raise UnknownJob(job_id, Path(state_dir))
    return history


def _fold(h: JobHistory, event: object, ts: str) -> None:
    match event:
        case TrialStarted():
            t = h.trials.get(event.trial)
            if t is None:
                h.trials[event.trial] = TrialRecord(
                    number=event.trial,
                    model=str(event.model),
                    params=dict(event.params),
                    attempts=event.attempt,
                    started=ts,
                )
            else:  # a retry: same params, the next attempt
                t.attempts = max(t.attempts, event.attempt)
                t.outcome, t.error = Outcome.RUNNING, ""
        case TrialSaved():
            if (t := h.trials.get(event.trial)) is not None:
                t.outcome, t.ended = Outcome.SAVED, ts
                t.value, t.metrics = event.value, dict(event.metrics)
                t.intermediate = event.intermediate
                t.artifact, t.sha256 = event.artifact, event.sha256
                t.duration_s = event.duration_s
        case TrialPruned():
            if (t := h.trials.get(event.trial)) is not None:
                t.outcome, t.ended = Outcome.PRUNED, ts
                t.value, t.pruned_step = event.value, event.step
                t.intermediate = event.intermediate
        case TrialFailed():
            if (t := h.trials.get(event.trial)) is not None:
                t.error = event.error
                if not event.retry:
                    t.outcome, t.ended = Outcome.FAILED, ts
        case StageCompleted():
            h.stages[str(event.stage)] = dict(event.outputs)
        case ModelPromoted():
            h.promoted = event
        case JobCompleted():
            h.status, h.reason, h.ended, h.completed = "completed", event.reason, ts, event
        case JobFailed():
            h.status, h.reason, h.ended = "failed", event.reason, ts
        case JobCancelled():
            h.status, h.reason, h.ended = "cancelled", event.reason, ts
        case _:
            pass


def parse_ts(ts: str) -> datetime:
    """A record's timestamp as a naive UTC datetime (how Optuna keeps trial times)."""
    return datetime.fromisoformat(ts.removesuffix("Z"))


@contextlib.contextmanager
def optuna_quiet() -> Iterator[None]:
    """Optuna's INFO lines ("A new study created ...") off, for the calls inside."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(verbosity)


Distribution = optuna.distributions.BaseDistribution
Distributions = dict[str, Distribution]


def model_distributions(history: JobHistory, model: str) -> Distributions:
    """The distributions ``model``'s trials were sampled from, each wide enough for them all.

    The space is rebuilt from the job's overrides and *this* code's defaults; a default
    that changed since the job ran (or a parameter the space no longer has) could leave a
    recorded value outside it, which Optuna refuses. Such a distribution is widened to
    take every recorded value, the same for every trial, so the study stays consistent.
    """
    dists: Distributions = dict(distributions(history.space(model)))
    values: dict[str, list[Any]] = {}
    for t in history.trials_of(model):
        for name, value in t.params.items():
            values.setdefault(name, []).append(value)
    for name, seen in values.items():
        dists[name] = _widened(dists.get(name), seen)
    return dists


def _widened(dist: Distribution | None, seen: list[Any]) -> Distribution:
    """``dist`` (None: no distribution) stretched to hold every value in ``seen``."""
    dists = optuna.distributions
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in seen)
    if isinstance(dist, dists.CategoricalDistribution) or not numbers:
        choices = list(dist.choices) if isinstance(dist, dists.CategoricalDistribution) else []
        extra = [v for v in dict.fromkeys(seen) if v not in choices]
        if dist is not None and not extra:
            return dist
        return dists.CategoricalDistribution(choices + extra)
    assert dist is None or isinstance(dist, dists.IntDistribution | dists.FloatDistribution)
    low = min(seen) if dist is None else min(dist.low, *seen)
    high = max(seen) if dist is None else max(dist.high, *seen)
    ints = all(isinstance(v, int) for v in seen)
    fits = ints or isinstance(dist, dists.FloatDistribution)
    if dist is not None and (low, high) == (dist.low, dist.high) and fits:
        return dist
    log = dist is not None and dist.log
    if ints and not isinstance(dist, dists.FloatDistribution):
        return dists.IntDistribution(int(low), int(high), log=log and low >= 1)
    return dists.FloatDistribution(float(low), float(high), log=log and low > 0)


def frozen_trial(
    history: JobHistory, trial: TrialRecord, dists: Distributions | None = None
) -> optuna.trial.FrozenTrial:
    """``trial`` as Optuna would have recorded it, timestamps from the log included.

    ``dists`` defaults to :func:`model_distributions` of the trial's model. A pruned
    trial's value is the value at the step it was pruned (or its last intermediate
    value), as ``Study.tell`` does for a pruned trial.
    """
    if dists is None:
        dists = model_distributions(history, trial.model)
    outcome = trial.outcome
    if outcome is Outcome.RUNNING and history.status != "running":
        # It never ended: its job failed or was cancelled around it. No value: a failure.
        outcome = Outcome.FAILED
    value = trial.value
    if outcome is Outcome.PRUNED and value is None and trial.intermediate:
        value = trial.intermediate[-1][1]
    user_attrs: dict[str, Any] = {"attempts": trial.attempts}
    if trial.outcome is Outcome.SAVED:
        user_attrs |= {"artifact": trial.artifact, "sha256": trial.sha256}
        user_attrs |= {f"valid_{k}": v for k, v in trial.metrics.items()}
    if trial.error:
        user_attrs["error"] = trial.error[:2000]
    if trial.outcome is Outcome.RUNNING and history.status != "running":
        user_attrs["error"] = f"never ended: the job {history.status} first"
    started = parse_ts(trial.started)
    end = trial.ended or history.ended
    return optuna_trial(
        trial.number,
        outcome,
        params=trial.params,
        distributions=dists,
        value=value,
        user_attrs=user_attrs,
        intermediate=trial.intermediate,
        started=started,
        completed=parse_ts(end) if end is not None else started,
    )


def frozen_trials(history: JobHistory, model: str) -> list[optuna.trial.FrozenTrial]:
    """Every trial of ``model``, in trial-number order, as Optuna ``FrozenTrial`` objects."""
    dists = model_distributions(history, model)
    return [frozen_trial(history, t, dists) for t in history.trials_of(model)]
