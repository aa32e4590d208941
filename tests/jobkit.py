"""A state directory holding one ended job, written without the daemon (for reports, exports).

Real data (``ml.synth``, 1500 rows), real models (``ml.train_trial``, a few tiny trees,
saved with ``ml.save_model``) and the events the daemon would have appended, through
:class:`~sentinel_daemon.log.store.Store`. The story of :func:`build_job`, per model:

- ``xgboost``: trials 0 and 2 saved, trial 4 pruned at its first report;
- ``lightgbm``: trial 1 failed once then saved on attempt 2, trial 3 saved, trial 5
  failed with no retry left;

then validate, and either promotion (``promote=True``) or a refusal by the quality gate.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sentinel_daemon import ml
from sentinel_daemon.core.events import (
    Event,
    JobCompleted,
    JobSubmitted,
    ModelKind,
    ModelPromoted,
    Stage,
    StageCompleted,
    StageStarted,
    TrialFailed,
    TrialPruned,
    TrialSaved,
    TrialStarted,
)
from sentinel_daemon.core.ids import JobId, TrialNumber
from sentinel_daemon.core.jobspec import JobSpec
from sentinel_daemon.daemon.stages import export_best
from sentinel_daemon.log.store import Store
from sentinel_daemon.ml import synth

NAME = "fraud-report"
JOB = "fraud-report-0badc0de"
SPACE = {
    "xgboost": {"n_estimators": [10, 40], "max_depth": [2, 4], "learning_rate": [0.1, 0.4]},
    "lightgbm": {"n_estimators": [10, 40], "num_leaves": [4, 16], "learning_rate": [0.1, 0.4]},
}
PARAMS: dict[int, dict[str, Any]] = {
    0: {"n_estimators": 30, "max_depth": 3, "learning_rate": 0.3},
    1: {"n_estimators": 30, "num_leaves": 8, "learning_rate": 0.2, "min_child_samples": 10},
    2: {"n_estimators": 20, "max_depth": 2, "learning_rate": 0.15},
    3: {"n_estimators": 25, "num_leaves": 4, "learning_rate": 0.35, "min_child_samples": 10},
    4: {"n_estimators": 40, "max_depth": 4, "learning_rate": 0.1},
    5: {"n_estimators": 40, "num_leaves": 16, "learning_rate": 0.1, "min_child_samples": 10},
}
MODELS = {n: ("xgboost" if n % 2 == 0 else "lightgbm") for n in PARAMS}


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2025, 6, 2, 8, 0, 0, 125000, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class BuiltJob:
    state_dir: Path
    job_id: str
    data: tuple[Path, Path]
    #: What the log says of each trial: outcome, value, intermediate values, params.
    trials: dict[int, dict[str, Any]] = field(default_factory=dict)
    promoted: int | None = None


def make_data(folder: Path) -> tuple[Path, Path]:
    return synth.generate(1500, folder, seed=5, fraud_rate=0.1)


def job_spec(data: tuple[Path, Path]) -> dict[str, Any]:
    spec = JobSpec.from_raw(
        {
            "name": NAME,
            "data": {"transactions": str(data[0]), "identity": str(data[1])},
            "models": ["xgboost", "lightgbm"],
            "search": {
                "n_trials": 3,
                "parallelism": 1,
                "sampler": "tpe",
                "seed": 1,
                "space": SPACE,
            },
        }
    )
    return spec.model_dump(mode="json", exclude_none=True)


def build_job(state_dir: Path, data: tuple[Path, Path], *, promote: bool = True) -> BuiltJob:
    """Write the story (module doc) into ``state_dir``; ``data`` from :func:`make_data`."""
    built = BuiltJob(state_dir, JOB, data)
    clock = Clock()
    store = Store.open(state_dir, clock=clock)
    job = JobId(JOB)

    def put(after_s: float, *events: Event) -> None:
        clock.advance(after_s)
        store.append(list(events))

    try:
        spec = job_spec(data)
        put(0, JobSubmitted(job_id=job, name=NAME, spec=spec, file="f.yaml", file_sha256="0" * 64))
        put(0.1, StageStarted(job_id=job, stage=Stage.PREPARE))
        prepared = ml.prepare(
            data[0], data[1], state_dir / "cache", test_fraction=0.2, valid_fraction=0.2
        )
        put(1.5, StageCompleted(job_id=job, stage=Stage.PREPARE, outputs={"rows": 1500}))
        put(0.1, StageStarted(job_id=job, stage=Stage.SEARCH))
        saved: dict[int, TrialSaved] = {}
        for number, params in PARAMS.items():
            model = ModelKind(MODELS[number])
            trial = TrialNumber(number)
            put(0.2, TrialStarted(job_id=job, trial=trial, model=model, params=params, attempt=1))
            if number == 1:  # a lost worker: attempt 1 fails and is retried
                put(3, TrialFailed(job_id=job, trial=trial, model=model, error="worker lost",
                                   attempt=1, retry=True))  # fmt: skip
                put(0.1, TrialStarted(job_id=job, trial=trial, model=model, params=params,
                                      attempt=2))  # fmt: skip
            if number == 5:
                put(2, TrialFailed(job_id=job, trial=trial, model=model, error="out of memory",
                                   attempt=1, retry=False))  # fmt: skip
                built.trials[number] = {"outcome": "failed", "params": params}
                continue
            curve: list[tuple[int, float]] = []
            prune = number == 4

            def report(
                step: int, value: float, curve: list[tuple[int, float]] = curve, prune: bool = prune
            ) -> bool:
                curve.append((step, value))
                return prune

            try:
                result = ml.train_trial(
                    str(model), params, prepared, n_threads=1, report=report, report_every=10
                )
            except ml.TrialPruned as exc:
                put(1, TrialPruned(job_id=job, trial=trial, model=model, step=exc.step,
                                   value=exc.value, intermediate=tuple(curve)))  # fmt: skip
                built.trials[number] = {
                    "outcome": "pruned", "value": exc.value, "params": params,
                    "intermediate": tuple(curve),
                }  # fmt: skip
                continue
            out = state_dir / "jobs" / JOB / "trials" / str(number) / "1-w0"
            model_file = ml.save_model(
                result, str(model), out, {"job_id": JOB, "trial": number, "attempt": 1}
            )
            event = TrialSaved(
                job_id=job,
                trial=trial,
                model=model,
                value=result.metrics["roc_auc"],
                metrics=result.metrics,
                artifact=model_file.path.relative_to(state_dir).as_posix(),
                sha256=model_file.sha256,
                duration_s=round(result.train_seconds, 6),
                intermediate=tuple(curve),
            )
            put(2 + number, event)
            saved[number] = event
            built.trials[number] = {
                "outcome": "saved", "value": event.value, "params": params,
                "intermediate": tuple(curve),
            }  # fmt: skip
        best = {
            m: max((e for e in saved.values() if e.model == m), key=lambda e: e.value)
            for m in ("xgboost", "lightgbm")
        }
        put(0.1, StageCompleted(job_id=job, stage=Stage.SEARCH, outputs={
            m: {"trial": e.trial, "value": e.value} for m, e in best.items()}))  # fmt: skip
        put(0.1, StageStarted(job_id=job, stage=Stage.VALIDATE))
        test = {}
        for m, e in best.items():
            loaded = ml.load_model(state_dir / e.artifact, e.sha256)
            test[m] = ml.evaluate(loaded, prepared, split="test")
        winner = max(best.values(), key=lambda e: e.value)
        min_auc = 0.5 if promote else 0.999
        passed = test[winner.model]["roc_auc"] >= min_auc
        assert passed == promote
        reason = (
            f"test ROC AUC {test[winner.model]['roc_auc']:.4f} passes min_test_auc {min_auc}"
            if passed
            else f"test ROC AUC {test[winner.model]['roc_auc']:.4f} is below min_test_auc "
            f"{min_auc}; no model promoted"
        )
        outputs = {
            "test": test,
            "previous": None,
            "previous_error": None,
            "winner": {"trial": winner.trial, "model": str(winner.model)},
            "gate": {"passed": passed, "reason": reason},
        }
        put(2, StageCompleted(job_id=job, stage=Stage.VALIDATE, outputs=outputs))
        if not promote:
            put(0, JobCompleted(job_id=job, best_trial=winner.trial, best_value=winner.value,
                                promoted=False, reason=reason))  # fmt: skip
            return built
        name = Path(winner.artifact).name
        put(0.1, StageStarted(job_id=job, stage=Stage.EXPORT),
            ModelPromoted(job_id=job, trial=winner.trial, model=winner.model,
                          artifact=f"jobs/{JOB}/best/{name}", sha256=winner.sha256,
                          value=winner.value))  # fmt: skip
        path = export_best(
            state_dir, state_dir / "jobs" / JOB, winner.artifact, winner.sha256, {"job_id": JOB}
        )
        put(0.3, StageCompleted(job_id=job, stage=Stage.EXPORT, outputs={"artifact": path}),
            JobCompleted(job_id=job, best_trial=winner.trial, best_value=winner.value,
                         promoted=True, reason=reason))  # fmt: skip
        built.promoted = winner.trial
        assert hashlib.sha256((state_dir / path).read_bytes()).hexdigest() == winner.sha256
        return built
    finally:
        store.close(snapshot=False)
