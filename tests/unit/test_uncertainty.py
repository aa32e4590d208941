"""Bootstrap intervals, the operating point at 1% FPR, and the report's selection-margin
verdict, on numbers whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from sentinel_daemon.ml import metrics
from sentinel_daemon.tools.families import Scored, Scoring, candidates, margin_html
from sentinel_daemon.tools.history import JobHistory, Outcome, TrialRecord
from sentinel_daemon.tools.uncertainty import (
    Ranked,
    bootstrap_scores,
    operating_point,
    paired_auc_difference,
    weighted_scores,
)


def labelled(n: int, seed: int, *, ties: bool) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.1).astype(np.int8)
    score = rng.random(n) * 0.6 + y * 0.3
    return y, np.round(score, 2) if ties else score


@pytest.mark.parametrize("ties", [False, True])
def test_weighted_scores_equal_scikit_learns_with_the_counts_as_sample_weights(
    ties: bool,
) -> None:
    y, score = labelled(3000, 1, ties=ties)
    ranked = Ranked.of(y, score)
    rng = np.random.default_rng(2)
    for _ in range(5):
        counts = np.bincount(rng.integers(0, len(y), len(y)), minlength=len(y)).astype(float)
        auc, ap = weighted_scores(ranked, counts[ranked.order])
        assert auc == pytest.approx(roc_auc_score(y, score, sample_weight=counts), abs=1e-12)
        assert ap == pytest.approx(
            average_precision_score(y, score, sample_weight=counts), abs=1e-12
        )


def test_bootstrap_intervals_hold_the_estimate_narrow_with_more_rows_and_repeat_exactly() -> None:
    small = bootstrap_scores(*labelled(300, 3, ties=False), resamples=300)
    large = bootstrap_scores(*labelled(30000, 3, ties=False), resamples=300)
    for name in ("roc_auc", "pr_auc"):
        assert small[name].low <= small[name].value <= small[name].high
        assert large[name].high - large[name].low < (small[name].high - small[name].low) / 3
    again = bootstrap_scores(*labelled(300, 3, ties=False), resamples=300)
    assert again == small  # a fixed seed: the same page for the same inputs


def test_a_paired_difference_is_within_noise_for_twins_and_not_for_a_much_better_model() -> None:
    y, score = labelled(5000, 4, ties=False)
    rng = np.random.default_rng(5)
    twin = score + rng.normal(0, 0.01, len(y))
    same = paired_auc_difference(y, score, twin, resamples=300)
    assert same.contains(0.0)
    worse = rng.random(len(y))  # no skill at all
    better = paired_auc_difference(y, score, worse, resamples=300)
    assert better.low > 0.2


def test_the_operating_point_is_the_one_recall_at_1pct_fpr_reports_with_its_threshold() -> None:
    for ties in (False, True):
        y, score = labelled(20000, 6, ties=ties)
        op = operating_point(y, score, 0.01)
        assert op.recall == pytest.approx(metrics.compute(y, score)["recall_at_1pct_fpr"])
        assert op.threshold is not None
        flagged = score >= op.threshold
        assert (op.tp, op.fp) == (int(np.sum(flagged & (y == 1))), int(np.sum(flagged & (y == 0))))
        assert op.tp + op.fp + op.fn + op.tn == len(y) and op.fpr <= 0.01
        assert op.precision == pytest.approx(op.tp / (op.tp + op.fp))


def test_when_the_top_score_is_already_too_common_nothing_is_flagged() -> None:
    y = np.array([1, 0, 0, 0, 1, 0])
    score = np.array([0.9, 0.9, 0.9, 0.2, 0.1, 0.1])  # 2 of 4 negatives share the top score
    op = operating_point(y, score, 0.01)
    assert op.threshold is None and (op.tp, op.fp, op.fn, op.tn) == (0, 0, 2, 4)
    assert op.precision is None and op.recall == 0.0


# ---- the selection margin ---------------------------------------------------------------


def trial(
    number: int, model: str, value: float | None, outcome: Outcome = Outcome.SAVED
) -> TrialRecord:
    return TrialRecord(
        number=number,
        model=model,
        params={},
        attempts=1,
        started="2025-06-02T08:00:00.000000Z",
        outcome=outcome,
        value=value,
        artifact=f"jobs/j/trials/{number}/model",
        sha256="0" * 64,
    )


def history(*trials: TrialRecord, models: tuple[str, ...] = ("xgboost", "lightgbm")) -> JobHistory:
    h = JobHistory("j", "fraud", {"models": list(models)}, "2025-06-02T08:00:00.000000Z")
    h.trials = {t.number: t for t in trials}
    return h


def test_the_runner_up_is_another_models_best_or_in_a_one_model_job_the_second_best() -> None:
    h = history(
        trial(0, "xgboost", 0.90),
        trial(1, "lightgbm", 0.93),
        trial(2, "xgboost", 0.95),
        trial(3, "lightgbm", 0.97, Outcome.PRUNED),
        trial(4, "xgboost", 0.95),  # a tie: the earlier trial stays the best
    )
    best, winner, runner_up = candidates(h)
    assert {m: t.number for m, t in best.items()} == {"xgboost": 2, "lightgbm": 1}
    assert (winner.number if winner else None, runner_up.number if runner_up else None) == (2, 1)
    h.stages["validate"] = {"winner": {"trial": 1, "model": "lightgbm"}}  # what was recorded
    assert candidates(h)[1] == h.trials[1]
    one = history(trial(0, "xgboost", 0.90), trial(1, "xgboost", 0.91), models=("xgboost",))
    _, winner, runner_up = candidates(one)
    assert (winner.number if winner else None, runner_up.number if runner_up else None) == (1, 0)


def scoring(winner_valid: np.ndarray, runner_valid: np.ndarray, y: np.ndarray) -> Scoring:
    w = Scored(trial(2, "lightgbm", 0.9412), winner_valid, winner_valid)
    r = Scored(trial(1, "xgboost", 0.9403), runner_valid, runner_valid)
    return Scoring(y, y, {"lightgbm": w, "xgboost": r}, w, r)


def test_the_margin_note_warns_only_when_the_margin_is_within_noise() -> None:
    y, score = labelled(4000, 7, ties=False)
    rng = np.random.default_rng(8)
    close = margin_html(scoring(score, score + rng.normal(0, 0.01, len(y)), y))
    assert 'class="note"' in close and "within noise" in close
    assert "a margin of 0.0009" in close and "Within noise means" in close
    clear = margin_html(scoring(score, rng.random(len(y)), y))
    assert 'class="note"' not in clear and "larger than noise" in clear
