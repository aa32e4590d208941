"""PNG charts for the job report, drawn with matplotlib's Agg renderer.

Figures are built as :class:`matplotlib.figure.Figure` objects, never through
``pyplot``: no global figure registry, no GUI backend to pick, nothing left open, so a
report can be drawn in any process (a daemon's child, a CLI) and from any thread. Each
function returns the PNG's bytes; writing them is the caller's business.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

WIDTH_IN = 7.0
HEIGHT_IN = 4.0
DPI = 100
BEST = "#d62728"
POINTS = "#1f77b4"
MUTED = "#999999"


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    # No "Software" or date metadata: the same inputs give the same bytes.
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def history(
    title: str,
    completed: Sequence[tuple[int, float]],
    pruned: Sequence[tuple[int, float]] = (),
) -> bytes:
    """Validation ROC AUC against trial number, with the running best as a step line."""
    fig = Figure(figsize=(WIDTH_IN, HEIGHT_IN), layout="constrained")
    ax = fig.add_subplot()
    if pruned:
        xs, ys = zip(*pruned, strict=True)
        ax.scatter(xs, ys, marker="x", color=MUTED, label="pruned (value when pruned)")
    if completed:
        xs, ys = zip(*completed, strict=True)
        ax.scatter(xs, ys, color=POINTS, label="completed trial", zorder=3)
        best: list[float] = []
        for y in ys:
            best.append(y if not best else max(best[-1], y))
        ax.step(xs, best, where="post", color=BEST, label="best so far", zorder=2)
    ax.set_title(title)
    ax.set_xlabel("trial number")
    ax.set_ylabel("validation ROC AUC")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    return _png(fig)


def bars(title: str, items: Sequence[tuple[str, float]], xlabel: str) -> bytes:
    """A horizontal bar chart of ``(label, value)``, the first item at the top."""
    height = max(HEIGHT_IN * 0.6, 0.28 * len(items) + 1.0)
    fig = Figure(figsize=(WIDTH_IN, height), layout="constrained")
    ax = fig.add_subplot()
    labels = [label for label, _ in items][::-1]
    values = [value for _, value in items][::-1]
    ax.barh(range(len(values)), values, color=POINTS)
    ax.set_yticks(range(len(labels)), labels, fontsize=8 if len(labels) > 15 else 10)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def roc(fpr: Sequence[float], tpr: Sequence[float], auc: float, title: str) -> bytes:
    """The ROC curve with the chance diagonal."""
    fig = Figure(figsize=(HEIGHT_IN + 0.5, HEIGHT_IN + 0.5), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(fpr, tpr, color=POINTS, label=f"ROC AUC {auc:.4f}")
    ax.plot([0, 1], [0, 1], linestyle="--", color=MUTED, label="chance")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    return _png(fig)


def precision_recall(
    recall: Sequence[float], precision: Sequence[float], ap: float, base_rate: float, title: str
) -> bytes:
    """The precision-recall curve with the fraud rate (a random model's precision)."""
    fig = Figure(figsize=(HEIGHT_IN + 0.5, HEIGHT_IN + 0.5), layout="constrained")
    ax = fig.add_subplot()
    ax.step(recall, precision, where="post", color=POINTS, label=f"average precision {ap:.4f}")
    ax.axhline(base_rate, linestyle="--", color=MUTED, label=f"fraud rate {base_rate:.4f}")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    return _png(fig)
