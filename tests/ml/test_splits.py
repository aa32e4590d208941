from __future__ import annotations

import numpy as np
import pytest

from sentinel_daemon import ml
from sentinel_daemon.ml.errors import SplitError
from sentinel_daemon.ml.splits import time_split


def test_splits_follow_time_and_hold_each_row_once(prepared: ml.Prepared) -> None:
    t, s = prepared.transaction_dt, prepared.split
    assert t[s.train].max() <= t[s.valid].min() and t[s.valid].max() <= t[s.test].min()
    n = len(t)
    assert s.train.start == 0 and s.train.stop == s.valid.start and s.valid.stop == s.test.start
    assert s.test.stop == n and abs((n - s.test.start) - 0.2 * n) <= 1
    assert prepared.X_train.shape[0] + prepared.X_valid.shape[0] + prepared.X_test.shape[0] == n
    assert len(prepared.y_valid) == prepared.X_valid.shape[0]


def test_a_boundary_never_splits_equal_timestamps() -> None:
    times = np.array([1, 2, 3, 4, 5, 6, 7, 7, 7, 7])
    y = np.array([0, 1, 0, 1, 0, 1, 0, 1, 0, 1])
    split = time_split(times, y, test_fraction=0.3, valid_fraction=0.5)
    assert split.test == slice(6, 10)  # the three 7s of the last 30% pull the fourth along
    assert times[split.valid].max() < times[split.test].min()


@pytest.mark.parametrize(("test", "valid"), [(0.0, 0.2), (1.0, 0.2), (0.2, 0.0), (0.2, -1)])
def test_fractions_outside_0_1_are_refused(test: float, valid: float) -> None:
    with pytest.raises(SplitError):
        time_split(np.arange(10), np.arange(10) % 2, test_fraction=test, valid_fraction=valid)


def test_a_split_with_a_single_class_is_refused() -> None:
    y = np.array([1, 0] * 6 + [0] * 8)
    with pytest.raises(SplitError, match="test split"):
        time_split(np.arange(20), y, test_fraction=0.4, valid_fraction=0.2)
