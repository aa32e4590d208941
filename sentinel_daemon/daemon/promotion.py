"""The decisions of a job's last two stages: the quality gate, and the promotion of its winner.

Pure functions of the state, for the job actor (:mod:`sentinel_daemon.daemon.actor`):
``validate`` scores each model's best trial (and the model last promoted under the same job
name) on the held-out test split in a child process; :func:`gate` turns its outputs into
``stage.completed`` and, when the winner fails the gate, ``job.completed`` without
promotion. ``export`` records ``model.promoted`` (:func:`promote`), has ``best/`` written
with :func:`model_card`, then completes the job (:func:`completed`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from sentinel_daemon.core.events import (
    Event,
    JobCompleted,
    ModelKind,
    ModelPromoted,
    Stage,
    StageCompleted,
    StageStarted,
)
from sentinel_daemon.core.gate import quality_gate
from sentinel_daemon.core.ids import JobId, TrialNumber
from sentinel_daemon.core.jobspec import JobSpec
from sentinel_daemon.core.state import JobState, StageStatus, State, TrialState
from sentinel_daemon.daemon.stages import Candidate, ValidateRequest
from sentinel_daemon.layout import best_artifact
from sentinel_daemon.queue.messages import TrialData


def winner(job: JobState) -> TrialState:
    """The best saved trial across models, chosen on validation (never on test)."""
    best = job.best_saved()
    assert best is not None, "search completes only with a saved trial"
    return best


def previous_promotion(state: State, job: JobState) -> JobState | None:
    """The latest earlier job of the same name that promoted a model."""
    found: JobState | None = None
    for other in state.jobs.values():
        if (
            other.name == job.name
            and other.promoted is not None
            and other.submitted_seq < job.submitted_seq
            and (found is None or other.submitted_seq > found.submitted_seq)
        ):
            found = other
    return found


def validate_request(
    state: State, job: JobState, models: Sequence[str], data: TrialData
) -> ValidateRequest:
    """What the validate process scores: each model's best trial, and the last promoted."""
    candidates = {}
    for model in models:
        best = job.best_saved(ModelKind(model))
        if best is not None and best.artifact and best.sha256:
            candidates[model] = Candidate(
                trial=best.number, artifact=best.artifact, sha256=best.sha256
            )
    prev = previous_promotion(state, job)
    previous = None
    if prev is not None and prev.promoted is not None:
        p = prev.promoted
        previous = Candidate(trial=p.trial, artifact=p.artifact, sha256=p.sha256)
    return ValidateRequest(data=data, candidates=candidates, previous=previous)


def gate(state: State, job: JobState, spec: JobSpec, outputs: dict[str, Any]) -> list[Event]:
    """``validate`` ended with ``outputs``: the stage completes; a refused winner ends the job."""
    job_id = JobId(job.job_id)
    best = winner(job)
    test = outputs.get("test", {})
    previous = previous_promotion(state, job)
    prev_metrics = outputs.get("previous")
    passed, reason = quality_gate(
        test_auc=float(test[best.model]["roc_auc"]),
        min_test_auc=spec.quality_gate.min_test_auc,
        allow_regression=spec.quality_gate.allow_regression,
        previous_job=previous.job_id if previous is not None else None,
        previous_auc=float(prev_metrics["roc_auc"]) if prev_metrics else None,
        previous_error=outputs.get("previous_error"),
    )
    outputs = {**outputs, "winner": {"trial": best.number, "model": str(best.model)}}
    outputs["gate"] = {"passed": passed, "reason": reason}
    done = StageCompleted(job_id=job_id, stage=Stage.VALIDATE, outputs=outputs)
    if passed:
        return [done]
    return [
        done,
        JobCompleted(
            job_id=job_id,
            best_trial=TrialNumber(best.number),
            best_value=best.value,
            promoted=False,
            reason=reason,
        ),
    ]


def promote(job: JobState) -> list[Event]:
    """``export`` starts: the winner is promoted (``best/`` is written after this is durable)."""
    job_id = JobId(job.job_id)
    best = winner(job)
    assert best.artifact is not None and best.sha256 is not None
    return [
        StageStarted(job_id=job_id, stage=Stage.EXPORT),
        ModelPromoted(
            job_id=job_id,
            trial=TrialNumber(best.number),
            model=best.model,
            artifact=best_artifact(job_id, Path(best.artifact).name),
            sha256=best.sha256,
            value=float(best.value or 0.0),
        ),
    ]


def model_card(job: JobState, promoted: TrialState, now: datetime) -> dict[str, Any]:
    """``best/model-card.json``: what was promoted, how it scored, from which data, when."""
    validate = job.stages[Stage.VALIDATE].outputs
    return {
        "job_id": job.job_id,
        "name": job.name,
        "trial": promoted.number,
        "model": str(promoted.model),
        "params": promoted.params,
        "attempt": promoted.attempt,
        "validation": promoted.metrics,
        "test": validate.get("test", {}).get(promoted.model),
        "quality_gate": validate.get("gate"),
        "data": job.stages[Stage.PREPARE].outputs,
        "trial_artifact": promoted.artifact,
        "sha256": promoted.sha256,
        "job_file_sha256": job.file_sha256,
        "promoted_at": now.isoformat(timespec="seconds"),
    }


def completed(job: JobState, artifact: str) -> list[Event]:
    """``best/`` holds the promoted model (``artifact``): export and the job are done."""
    export = job.stages.get(Stage.EXPORT)
    if job.promoted is None or export is None or export.status is not StageStatus.RUNNING:
        return []
    job_id = JobId(job.job_id)
    promoted = job.trials[job.promoted.trial]
    gate_outputs = job.stages[Stage.VALIDATE].outputs.get("gate") or {}
    return [
        StageCompleted(job_id=job_id, stage=Stage.EXPORT, outputs={"artifact": artifact}),
        JobCompleted(
            job_id=job_id,
            best_trial=TrialNumber(promoted.number),
            best_value=promoted.value,
            promoted=True,
            reason=str(gate_outputs.get("reason", "")),
        ),
    ]
