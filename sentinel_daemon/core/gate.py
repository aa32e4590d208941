"""The quality gate: whether the winner of a job may be promoted, and why."""

from __future__ import annotations


def quality_gate(
    *,
    test_auc: float,
    min_test_auc: float,
    allow_regression: bool,
    previous_job: str | None,
    previous_auc: float | None,
    previous_error: str | None = None,
) -> tuple[bool, str]:
    """Whether the winner may be promoted, and why (a sentence for operators)."""
    if test_auc < min_test_auc:
        return False, (
            f"test ROC AUC {test_auc:.4f} is below the quality gate's min_test_auc "
            f"{min_test_auc:.4f}; no model promoted"
        )
    if previous_job is None or allow_regression:
        return True, f"test ROC AUC {test_auc:.4f} passes min_test_auc {min_test_auc:.4f}"
    if previous_auc is None:
        return True, (
            f"test ROC AUC {test_auc:.4f} passes; the model promoted by {previous_job} could "
            f"not be scored on this test split ({previous_error or 'unknown reason'})"
        )
    if test_auc < previous_auc:
        return False, (
            f"test ROC AUC {test_auc:.4f} is worse than {previous_auc:.4f} of the model "
            f"promoted by {previous_job} on the same test split; set "
            f"quality_gate.allow_regression: true to promote anyway"
        )
    return True, (
        f"test ROC AUC {test_auc:.4f} passes min_test_auc {min_test_auc:.4f} and is no "
        f"worse than {previous_auc:.4f} of {previous_job}"
    )
