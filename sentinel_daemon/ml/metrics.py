"""Scores of a binary fraud model: ranking, precision-recall, calibration, and recall at 1% FPR."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, log_loss, roc_auc_score, roc_curve

from sentinel_daemon.ml.errors import MetricsError

METRIC_NAMES = ("roc_auc", "pr_auc", "log_loss", "recall_at_1pct_fpr")
_EPS = 1e-7  # keeps log loss finite for a score of exactly 0 or 1


def compute(y_true: np.ndarray, y_score: np.ndarray) -> dict[str, float]:
    """ROC AUC, PR AUC (average precision), log loss and recall at 1% false-positive rate.

    ``y_score`` is the predicted probability of fraud. Recall at 1% FPR is the highest
    true-positive rate among thresholds whose false-positive rate is at most 1%, the
    share of fraud caught when analysts can afford to review 1% of honest traffic.
    """
    y = np.asarray(y_true).astype(np.int8, copy=False)
    score = np.asarray(y_score, dtype=np.float64)
    if y.shape != score.shape or y.ndim != 1:
        raise MetricsError(f"labels {y.shape} and scores {score.shape} must be equal 1-d arrays")
    if len(y) == 0 or y.min() == y.max():
        raise MetricsError("the labels hold a single class, so AUC is undefined")
    if not np.all(np.isfinite(score)):
        raise MetricsError("the scores contain NaN or infinity")
    fpr, tpr, _ = roc_curve(y, score, drop_intermediate=False)
    return {
        "roc_auc": float(roc_auc_score(y, score)),
        "pr_auc": float(average_precision_score(y, score)),
        "log_loss": float(log_loss(y, np.clip(score, _EPS, 1 - _EPS), labels=[0, 1])),
        "recall_at_1pct_fpr": float(tpr[fpr <= 0.01].max()),
    }
