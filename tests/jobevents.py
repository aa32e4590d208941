"""Event builders for a job's life, shared by the operator-command tests."""

from __future__ import annotations

from typing import Any

from sentinel_daemon.core.events import (
    Event,
    JobCompleted,
    JobFailed,
    JobSubmitted,
    ModelPromoted,
    StageCompleted,
    StageStarted,
    TrialSaved,
    TrialStarted,
    WorkerStarted,
)

SPEC: dict[str, Any] = {
    "name": "fraud",
    "models": ["xgboost", "lightgbm"],
    "search": {"n_trials": 2},
}


def submitted(job: str) -> JobSubmitted:
    return JobSubmitted(
        job_id=job, name="fraud", spec=SPEC, file=f"{job}.yaml", file_sha256="0" * 64
    )


def started(job: str, trial: int, model: str) -> TrialStarted:
    return TrialStarted(job_id=job, trial=trial, model=model, params={"max_depth": 4}, attempt=1)


def saved(job: str, trial: int, model: str, value: float) -> TrialSaved:
    return TrialSaved(
        job_id=job,
        trial=trial,
        model=model,
        value=value,
        metrics={"roc_auc": value},
        artifact=f"jobs/{job}/trials/{trial}/model",
        sha256="a" * 64,
        duration_s=1.0,
    )


def running(job: str) -> list[Event]:
    """Submitted, prepared, searching: xgboost 2/2 ended (best 0.9, trial 1), lightgbm 0/2
    with trial 2 running."""
    return [
        submitted(job),
        StageStarted(job_id=job, stage="prepare"),
        StageCompleted(job_id=job, stage="prepare", outputs={"rows": 200}),
        StageStarted(job_id=job, stage="search"),
        started(job, 0, "xgboost"),
        saved(job, 0, "xgboost", 0.8),
        started(job, 1, "xgboost"),
        saved(job, 1, "xgboost", 0.9),
        started(job, 2, "lightgbm"),
    ]


def finish(job: str) -> list[Event]:
    """What completes a :func:`running` job, promoting trial 1."""
    return [
        saved(job, 2, "lightgbm", 0.85),
        started(job, 3, "lightgbm"),
        saved(job, 3, "lightgbm", 0.7),
        StageCompleted(job_id=job, stage="search"),
        ModelPromoted(
            job_id=job,
            trial=1,
            model="xgboost",
            artifact=f"jobs/{job}/model",
            sha256="b" * 64,
            value=0.9,
        ),
        JobCompleted(job_id=job, best_trial=1, best_value=0.9, promoted=True),
    ]


def failed(job: str, reason: str = "prepare: data file unreadable") -> list[Event]:
    return [submitted(job), JobFailed(job_id=job, reason=reason)]


def worker(name: str, pid: int, gpu: int | None = None) -> WorkerStarted:
    return WorkerStarted(worker=name, pid=pid, gpu=gpu)
