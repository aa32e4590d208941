from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, log_loss, roc_auc_score

from sentinel_daemon.ml.errors import MetricsError
from sentinel_daemon.ml.metrics import compute


def test_metrics_agree_with_their_definitions() -> None:
    rng = np.random.default_rng(0)
    y = (rng.random(2000) < 0.1).astype(int)
    score = np.clip(0.3 * y + rng.random(2000) * 0.7, 0, 1)
    got = compute(y, score)
    assert got["roc_auc"] == pytest.approx(roc_auc_score(y, score))
    assert got["pr_auc"] == pytest.approx(average_precision_score(y, score))
    assert got["log_loss"] == pytest.approx(log_loss(y, np.clip(score, 1e-7, 1 - 1e-7)))


def test_recall_at_1pct_fpr_counts_fraud_above_the_1pct_negative_threshold() -> None:
    negatives = np.arange(1000) / 1000  # 0.000 .. 0.999
    positives = np.array([0.9995, 0.9992, 0.995, 0.5, 0.1])  # 2 above every negative
    y = np.r_[np.zeros(1000), np.ones(5)]
    score = np.r_[negatives, positives]
    # At most 10 negatives (1%) may score above the threshold: 0.990 .. 0.999.
    # Positives above 0.990 are 0.9995, 0.9992 and 0.995: recall 3/5.
    assert compute(y, score)["recall_at_1pct_fpr"] == pytest.approx(0.6)


def test_perfect_scores_give_perfect_metrics() -> None:
    y = np.array([0, 0, 1, 1])
    got = compute(y, np.array([0.0, 0.1, 0.9, 1.0]))
    assert got["roc_auc"] == 1.0 and got["pr_auc"] == 1.0 and got["recall_at_1pct_fpr"] == 1.0


def test_single_class_or_bad_scores_are_refused() -> None:
    with pytest.raises(MetricsError, match="single class"):
        compute(np.zeros(5), np.linspace(0, 1, 5))
    with pytest.raises(MetricsError, match="NaN"):
        compute(np.array([0, 1]), np.array([0.2, np.nan]))
    with pytest.raises(MetricsError):
        compute(np.array([0, 1]), np.array([0.2, 0.3, 0.4]))
