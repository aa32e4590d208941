"""Time-ordered splits: train, then validation, then test, never shuffled across time.

The last ``test_fraction`` of rows by TransactionDT is the test set, held out and scored
once; the last ``valid_fraction`` of the rest is what the search optimises. A boundary
never separates rows with the same TransactionDT: they all go to the later split.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sentinel_daemon.ml.errors import SplitError

SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class Split:
    """Row ranges of a time-sorted matrix."""

    train: slice
    valid: slice
    test: slice

    def __getitem__(self, name: str) -> slice:
        if name not in SPLITS:
            raise KeyError(name)
        return getattr(self, name)  # type: ignore[no-any-return]


def time_split(
    times: np.ndarray, y: np.ndarray, *, test_fraction: float, valid_fraction: float
) -> Split:
    """Cut time-sorted rows into train / valid / test; raise SplitError if one is unusable."""
    for name, value in (("test_fraction", test_fraction), ("valid_fraction", valid_fraction)):
        if not 0.0 < value < 1.0:
            raise SplitError(f"{name} must lie strictly between 0 and 1, not {value}")
    if len(times) > 1 and np.any(np.diff(times) < 0):
        raise SplitError("rows are not sorted by TransactionDT")
    n = len(times)
    test_start = _cut(times, n - round(n * test_fraction), 0, n)
    valid_start = _cut(times, test_start - round(test_start * valid_fraction), 0, test_start)
    split = Split(slice(0, valid_start), slice(valid_start, test_start), slice(test_start, n))
    for name in SPLITS:
        part = y[split[name]]
        if len(part) == 0:
            raise SplitError(f"the {name} split of {n} rows would be empty")
        if part.min() == part.max():
            raise SplitError(
                f"the {name} split ({len(part)} rows) holds only isFraud={int(part[0])}; "
                f"both classes are needed to train and score"
            )
    return split


def _cut(times: np.ndarray, index: int, low: int, high: int) -> int:
    """Move a cut back to the first row sharing its TransactionDT, within [low, high]."""
    index = min(max(index, low), high)
    if index >= high or index == low:
        return index
    return int(np.searchsorted(times[low:high], times[index], side="left")) + low
