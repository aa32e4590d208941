"""Helpers shared by the ML tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

ROWS = 3000
SMALL = {
    "xgboost": {"n_estimators": 30, "max_depth": 3, "learning_rate": 0.2},
    "lightgbm": {
        "n_estimators": 30,
        "num_leaves": 8,
        "learning_rate": 0.2,
        "min_child_samples": 10,
    },
}


@dataclass(frozen=True)
class Synthetic:
    folder: Path
    transactions: Path
    identity: Path


def minimal_transactions(n: int = 40) -> pd.DataFrame:
    """A tiny transaction table holding only the required columns."""
    i = np.arange(n)
    return pd.DataFrame(
        {
            "TransactionID": 3_000_000 + i,
            "isFraud": (i % 5 == 0).astype(int),
            "TransactionDT": 86_400 + 600 * i,
            "TransactionAmt": 10.0 + i,
            "ProductCD": np.where(i % 2 == 0, "W", "C"),
            "card1": 1000 + i % 4,
            "addr1": 300.0,
            "D1": 0.0,
        }
    )
