"""How sure a report can be of a score: bootstrap intervals and the operating point at 1% FPR.

The bootstrap resamples rows with replacement and scores each resample again. Scoring is
the cost, so the rows are ranked once (scores sorted, equal scores grouped) and a resample
is a vector of row counts: ROC AUC and average precision of a weighted sample are then a
few cumulative sums over the groups, O(rows) per resample with no sort, and equal to
scikit-learn's ``roc_auc_score`` and ``average_precision_score`` with those counts as
``sample_weight`` (a test checks). :data:`RESAMPLES` resamples with seed :data:`SEED`
keep a report of 100,000 test rows within seconds and the same inputs give the same page.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: Resamples per interval (the percentile bootstrap's usual 1,000).
RESAMPLES = 1000
SEED = 0
LEVEL = 0.95


@dataclass(frozen=True)
class Ranked:
    """Rows sorted by descending score; ``starts`` opens each group of equal scores, and
    ``hits`` are the groups that hold a positive label."""

    order: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    starts: np.ndarray
    hits: np.ndarray

    @classmethod
    def of(cls, y_true: np.ndarray, y_score: np.ndarray) -> Ranked:
        score = np.asarray(y_score, dtype=np.float64)
        order = np.argsort(-score, kind="stable")
        ranked = score[order]
        starts = np.concatenate(([0], np.flatnonzero(np.diff(ranked)) + 1))
        labels = np.asarray(y_true)[order].astype(np.float64)
        hits = np.flatnonzero(np.add.reduceat(labels, starts) > 0)
        return cls(order, labels, ranked, starts, hits)

    def __len__(self) -> int:
        return len(self.order)

    def cumulative(
        self, weights: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Per score group, descending: the positive and negative weight in it, and the
        positive and negative weight at or above it. ``weights`` are in ranked order."""
        pos = weights * self.labels
        neg = weights - pos
        if len(self.starts) < len(self.labels):  # ties: sum each group (distinct: no need)
            pos, neg = np.add.reduceat(pos, self.starts), np.add.reduceat(neg, self.starts)
        return pos, neg, np.cumsum(pos), np.cumsum(neg)


def weighted_scores(ranked: Ranked, weights: np.ndarray) -> tuple[float, float]:
    """ROC AUC and average precision of the rows weighted by ``weights`` (ranked order).

    ROC AUC: each negative counts the positives ranked above it, and half those tied with
    it. Average precision: the precision at each score, weighted by the positives there
    (only groups holding a positive can add to it). NaN when a class has no weight.
    """
    group_pos, group_neg, tp, fp = ranked.cumulative(weights)
    positives, negatives = tp[-1], fp[-1]
    if positives <= 0 or negatives <= 0:
        return math.nan, math.nan
    # einsum: one pass, no BLAS threads to wake for a vector product.
    above = np.einsum("i,i->", group_neg, tp)
    if len(ranked.starts) < len(ranked):  # only a group with ties mixes both classes
        above -= 0.5 * np.einsum("i,i->", group_neg, group_pos)
    auc = above / (positives * negatives)
    hit_tp, hit_fp = tp[ranked.hits], fp[ranked.hits]
    flagged = hit_tp + hit_fp
    precision = np.divide(hit_tp, flagged, out=np.zeros_like(hit_tp), where=flagged > 0)
    ap = np.einsum("i,i->", group_pos[ranked.hits], precision) / positives
    return float(auc), float(ap)


@dataclass(frozen=True)
class Interval:
    """A point estimate and its percentile bootstrap interval at :data:`LEVEL`."""

    value: float
    low: float
    high: float

    def contains(self, x: float) -> bool:
        return self.low <= x <= self.high


def _interval(value: float, samples: np.ndarray) -> Interval:
    tail = (1 - LEVEL) / 2 * 100
    kept = samples[np.isfinite(samples)]
    if len(kept) == 0:
        return Interval(value, math.nan, math.nan)
    low, high = np.percentile(kept, [tail, 100 - tail])
    return Interval(value, float(low), float(high))


def _counts(rng: np.random.Generator, n: int) -> np.ndarray:
    """How often each of ``n`` rows is drawn in one resample of ``n`` rows."""
    return np.bincount(rng.integers(0, n, n), minlength=n).astype(np.float64)


def bootstrap_scores(
    y_true: np.ndarray, y_score: np.ndarray, *, resamples: int = RESAMPLES, seed: int = SEED
) -> dict[str, Interval]:
    """``roc_auc`` and ``pr_auc`` (average precision) with their bootstrap intervals."""
    ranked = Ranked.of(y_true, y_score)
    auc, ap = weighted_scores(ranked, np.ones(len(ranked)))
    rng = np.random.default_rng(seed)
    samples = np.empty((resamples, 2))
    for i in range(resamples):
        # Rows are exchangeable, so a resample may be drawn in ranked order directly.
        samples[i] = weighted_scores(ranked, _counts(rng, len(ranked)))
    return {"roc_auc": _interval(auc, samples[:, 0]), "pr_auc": _interval(ap, samples[:, 1])}


def paired_auc_difference(
    y_true: np.ndarray,
    score_a: np.ndarray,
    score_b: np.ndarray,
    *,
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> Interval:
    """ROC AUC of ``a`` minus that of ``b`` on the same rows, with a paired bootstrap
    interval: both models are scored on the same resampled rows each time."""
    a, b = Ranked.of(y_true, score_a), Ranked.of(y_true, score_b)
    ones = np.ones(len(a))
    diff = weighted_scores(a, ones)[0] - weighted_scores(b, ones)[0]
    rng = np.random.default_rng(seed)
    samples = np.empty(resamples)
    for i in range(resamples):
        counts = _counts(rng, len(a))
        samples[i] = weighted_scores(a, counts[a.order])[0] - weighted_scores(b, counts[b.order])[0]
    return _interval(diff, samples)


@dataclass(frozen=True)
class OperatingPoint:
    """Flagging every score at or above ``threshold``: the confusion matrix and its rates.

    ``threshold`` is ``None`` when even the highest score would pass ``max_fpr`` (nothing
    is flagged then); ``precision`` is ``None`` when nothing is flagged.
    """

    max_fpr: float
    threshold: float | None
    tp: int
    fp: int
    fn: int
    tn: int

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else math.nan

    @property
    def precision(self) -> float | None:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else None

    @property
    def fpr(self) -> float:
        return self.fp / (self.fp + self.tn) if self.fp + self.tn else math.nan


def operating_point(
    y_true: np.ndarray, y_score: np.ndarray, max_fpr: float = 0.01
) -> OperatingPoint:
    """The threshold with the highest recall whose false-positive rate is at most ``max_fpr``.

    The same choice as ``recall_at_1pct_fpr`` in :mod:`sentinel_daemon.ml.metrics` (the
    highest true-positive rate among thresholds with FPR <= 1%), with its threshold.
    """
    ranked = Ranked.of(y_true, y_score)
    _, _, tp, fp = ranked.cumulative(np.ones(len(ranked)))
    positives, negatives = int(tp[-1]), int(fp[-1])
    allowed = np.flatnonzero(fp <= max_fpr * negatives)
    if len(allowed) == 0:
        return OperatingPoint(max_fpr, None, 0, 0, positives, negatives)
    g = int(allowed[-1])  # cumulative counts only grow: the last allowed group recalls most
    hit, false = int(tp[g]), int(fp[g])
    threshold = float(ranked.scores[ranked.starts[g]])
    return OperatingPoint(max_fpr, threshold, hit, false, positives - hit, negatives - false)
