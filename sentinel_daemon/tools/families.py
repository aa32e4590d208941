"""The report's model families: how each family's best model does on the test split, with
bootstrap intervals, where it would operate at 1% false-positive rate, and whether the
validation margin that chose the winner is larger than noise.

The candidates are the ones the daemon compares: each model's best saved trial on
validation ROC AUC (the earliest on a tie), and the winner among them, as the validate
stage recorded it. The runner-up is the best candidate of another model; in a job of one
model, that model's second-best saved trial. Their models are loaded from the trials'
artifacts (checksums verified) and score the job's data prepared again through its cache.

"Within noise" is defined on the page: the winner's validation ROC AUC minus the
runner-up's, with a paired bootstrap interval (both models scored on the same resampled
validation rows, :data:`~sentinel_daemon.tools.uncertainty.RESAMPLES` times); when that
interval holds 0, another sample of the same data could have chosen the other model.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sentinel_daemon.layout import CACHE_DIR
from sentinel_daemon.tools import reportkit as rk
from sentinel_daemon.tools.history import JobHistory, Outcome, TrialRecord
from sentinel_daemon.tools.uncertainty import (
    LEVEL,
    RESAMPLES,
    SEED,
    Interval,
    bootstrap_scores,
    operating_point,
    paired_auc_difference,
)

MAX_FPR = 0.01


@dataclass(frozen=True)
class Scored:
    """One trial's model, scored on the validation and test rows."""

    trial: TrialRecord
    valid: np.ndarray
    test: np.ndarray


@dataclass(frozen=True)
class Scoring:
    """The candidates' scores; ``best`` maps each model to its best trial's."""

    y_valid: np.ndarray
    y_test: np.ndarray
    best: dict[str, Scored]
    winner: Scored
    runner_up: Scored | None


def best_saved(trials: Iterable[TrialRecord]) -> TrialRecord | None:
    """The saved trial with the highest value; on a tie the first given (the earliest)."""
    best: TrialRecord | None = None
    for t in trials:
        if t.outcome is not Outcome.SAVED or t.value is None:
            continue
        if best is None or t.value > (best.value or -math.inf):
            best = t
    return best


def candidates(
    h: JobHistory,
) -> tuple[dict[str, TrialRecord], TrialRecord | None, TrialRecord | None]:
    """Each model's best trial, the winner (as recorded by validate, if it ran) and the
    runner-up."""
    best = {m: b for m in h.models if (b := best_saved(h.trials_of(m))) is not None}
    ordered = [h.trials[n] for n in sorted(h.trials)]
    winner = best_saved(ordered)
    recorded = (h.stages.get("validate") or {}).get("winner") or {}
    if isinstance(recorded.get("trial"), int) and recorded["trial"] in h.trials:
        winner = h.trials[recorded["trial"]]
    if winner is None:
        return best, None, None
    others = sorted((b for m, b in best.items() if m != winner.model), key=lambda t: t.number)
    runner_up = best_saved(others)
    if runner_up is None:  # one model: its second-best trial
        runner_up = best_saved(t for t in h.trials_of(winner.model) if t.number != winner.number)
    return best, winner, runner_up


def prepare(state_dir: Path, h: JobHistory) -> Any:
    """The job's data prepared as its trials saw it (a cache hit after the job's prepare)."""
    from sentinel_daemon import ml

    spec = h.job_spec()
    identity = spec.data.identity
    return ml.prepare(
        state_dir / spec.data.transactions,  # an absolute path wins over the state dir
        state_dir / identity if identity else None,
        state_dir / CACHE_DIR,
        test_fraction=spec.validation.test_fraction,
        valid_fraction=spec.validation.valid_fraction,
    )


def score(state_dir: Path, h: JobHistory, prepared: Any) -> Scoring | None:
    """Load and score the candidates; ``None`` when no trial was saved.

    Raises ``ml.MLError`` (a model file changed or gone) and ``OSError``.
    """
    from sentinel_daemon import ml

    best, winner, runner_up = candidates(h)
    if winner is None:
        return None
    X_valid, y_valid = prepared.rows("valid")
    X_test, y_test = prepared.rows("test")
    done: dict[int, Scored] = {}

    def scored(t: TrialRecord) -> Scored:
        if t.number not in done:
            assert t.artifact is not None and t.sha256 is not None
            model = ml.load_model(state_dir / t.artifact, t.sha256)
            done[t.number] = Scored(t, model.predict(X_valid), model.predict(X_test))
        return done[t.number]

    return Scoring(
        np.asarray(y_valid),
        np.asarray(y_test),
        {m: scored(t) for m, t in best.items()},
        scored(winner),
        None if runner_up is None else scored(runner_up),
    )


# ---- HTML ------------------------------------------------------------------------------


def _num(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def _ci(interval: Interval) -> str:
    return rk.nowrap(f"{_num(interval.value)} [{_num(interval.low)}, {_num(interval.high)}]")


def _trial(t: TrialRecord, optuna: Mapping[int, int]) -> str:
    number = optuna.get(t.number)
    return rk.nowrap(f"{t.number}" + ("" if number is None else f" (Optuna #{number})"))


def families_html(s: Scoring, optuna: Mapping[int, int]) -> str:
    """The test-split table with intervals, the operating points, and the margin note."""
    pct = f"{LEVEL:.0%}"
    rows = []
    ops = []
    for model, c in s.best.items():
        ci = bootstrap_scores(s.y_test, c.test)
        rows.append(
            [
                rk.esc(model),
                _trial(c.trial, optuna),
                rk.nowrap(_num(c.trial.value)),
                _ci(ci["roc_auc"]),
                _ci(ci["pr_auc"]),
            ]
        )
        op = operating_point(s.y_test, c.test, MAX_FPR)
        threshold = (
            "none (no score is that rare)" if op.threshold is None else f"{op.threshold:.6g}"
        )
        ops.append(
            [
                rk.esc(model),
                rk.nowrap(threshold),
                rk.nowrap(_num(op.recall)),
                rk.nowrap(_num(op.precision)),
                rk.nowrap(_num(op.fpr)),
                *(rk.nowrap(f"{n:,}") for n in (op.tp, op.fp, op.fn, op.tn)),
            ]
        )
    fraud = int(np.sum(s.y_test))
    head = ["model", "its best trial", "validation ROC AUC", f"test ROC AUC [{pct} interval]"]
    return (
        rk.table([*head, f"test PR AUC [{pct} interval]"], rows)
        + rk.hint(
            f"{len(s.y_test):,} test rows, {fraud:,} fraud. Intervals: percentile bootstrap, "
            f"{RESAMPLES:,} resamples of the test rows with replacement, seed {SEED}. PR AUC "
            f"is average precision. Optuna # is the trial's number in the study JOB/MODEL "
            f"written by sentinel export-optuna (optuna-dashboard shows it)."
        )
        + f"<h3>Operating point at {MAX_FPR:.0%} false-positive rate (test split)</h3>\n"
        + rk.table(
            [
                "model",
                "threshold (flag score >=)",
                "recall",
                "precision",
                "false-positive rate",
                "fraud flagged (TP)",
                "legit flagged (FP)",
                "fraud missed (FN)",
                "legit passed (TN)",
            ],
            ops,
        )
        + rk.hint(
            f"The threshold that catches the most fraud while flagging at most {MAX_FPR:.0%} "
            f"of legitimate transactions, and the confusion matrix it gives on the test split."
        )
        + margin_html(s)
    )


def margin_html(s: Scoring) -> str:
    """Whether the validation margin between winner and runner-up exceeds noise."""
    w, r = s.winner, s.runner_up
    what = (
        f"Within noise means: the {LEVEL:.0%} interval of the winner's validation ROC AUC "
        f"minus the runner-up's, from a paired bootstrap ({RESAMPLES:,} resamples of the "
        f"validation rows, both models scored on the same resample, seed {SEED}), holds 0. "
        f"The runner-up is the best trial of another model (of the same model, in a job "
        f"of one)."
    )
    if r is None:
        return "<h3>Selection margin</h3>\n" + rk.hint(
            f"Trial {w.trial.number} ({w.trial.model}) was the only saved trial: there was "
            f"no choice to judge."
        )
    diff = paired_auc_difference(s.y_valid, w.valid, r.valid)
    told = (
        f"Trial {w.trial.number} ({w.trial.model}) won on validation ROC AUC "
        f"{_num(w.trial.value)} against trial {r.trial.number} ({r.trial.model}) "
        f"{_num(r.trial.value)}: a margin of {_num((w.trial.value or 0) - (r.trial.value or 0))}"
        f", {LEVEL:.0%} interval [{_num(diff.low)}, {_num(diff.high)}]."
    )
    if diff.contains(0.0) or math.isnan(diff.low):
        verdict = rk.note(
            f"{told} The margin is within noise: the interval holds 0, so the validation "
            f"split cannot tell these two apart. Weigh their test scores above before "
            f"relying on the choice."
        )
    else:
        verdict = (
            f"<p>{rk.esc(told)} The margin is larger than noise: the interval excludes 0.</p>\n"
        )
    return "<h3>Selection margin</h3>\n" + verdict + rk.hint(what)
