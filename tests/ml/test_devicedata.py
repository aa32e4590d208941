"""XGBoost's matrices kept across trials: built once per data set and shape, same results."""

from __future__ import annotations

import dataclasses
import gc
import weakref

import numpy as np
import pytest
import xgboost as xgb

from sentinel_daemon import ml
from sentinel_daemon.ml.devicedata import DEFAULT_MAX_BIN, DeviceData

from .helpers import SMALL

PARAMS = SMALL["xgboost"]


def test_matrices_are_built_once_across_trials_with_the_same_shape(
    prepared: ml.Prepared,
) -> None:
    data = DeviceData(nthread=2)
    first = ml.train_trial("xgboost", PARAMS, prepared, data=data)
    built = data.cached
    for depth in (2, 4):
        ml.train_trial("xgboost", PARAMS | {"max_depth": depth}, prepared, data=data)
    assert data.builds == 1 and data.reuses == 2
    assert data.cached is built  # the very same matrices
    assert built is not None and built.shape.max_bin == DEFAULT_MAX_BIN
    assert first.native_params["max_bin"] == DEFAULT_MAX_BIN  # the booster's matches them


def test_matrices_are_rebuilt_when_max_bin_changes(prepared: ml.Prepared) -> None:
    data = DeviceData()
    coarse = data.xgboost(prepared, device="cpu", max_bin=16)
    assert data.xgboost(prepared, device="cpu", max_bin=16) is coarse
    fine = data.xgboost(prepared, device="cpu", max_bin=64)
    assert fine is not coarse and fine.shape.max_bin == 64
    assert data.builds == 2 and data.reuses == 1
    # A trial at the default max_bin rebuilds again, and trains at what it was built with.
    result = ml.train_trial("xgboost", PARAMS, prepared, data=data)
    assert data.builds == 3 and result.native_params["max_bin"] == DEFAULT_MAX_BIN


def test_a_new_data_set_releases_the_old_matrices_first(prepared: ml.Prepared) -> None:
    data = DeviceData()
    old = weakref.ref(data.xgboost(prepared, device="cpu").train)
    other = dataclasses.replace(prepared)  # another preparation: another data set
    data.xgboost(other, device="cpu")
    gc.collect()
    assert old() is None, "the first data set's matrices are still alive"
    assert data.builds == 2
    data.release()
    assert data.cached is None


def test_max_bin_under_two_is_refused(prepared: ml.Prepared) -> None:
    with pytest.raises(ValueError, match="max_bin"):
        DeviceData().xgboost(prepared, device="cpu", max_bin=1)


def test_cached_trials_score_and_predict_as_uncached_ones(prepared: ml.Prepared) -> None:
    data = DeviceData()
    for params in (PARAMS, PARAMS | {"max_depth": 5, "subsample": 0.8}):
        plain = ml.train_trial("xgboost", params, prepared, seed=3)
        cached = ml.train_trial("xgboost", params, prepared, seed=3, data=data)
        assert cached.best_iteration == plain.best_iteration
        assert cached.rounds == plain.rounds
        assert cached.metrics == pytest.approx(plain.metrics, abs=1e-9)
        np.testing.assert_allclose(
            cached.predict(prepared.X_valid), plain.predict(prepared.X_valid), atol=1e-6
        )
        # The saved model scores the test split as the uncached one does.
        assert ml.evaluate(cached, prepared) == pytest.approx(
            ml.evaluate(plain, prepared), abs=1e-9
        )
    assert data.builds == 1


def test_the_validation_matrix_is_binned_on_a_gpu_and_plain_on_the_cpu(
    prepared: ml.Prepared,
) -> None:
    # Building needs no GPU (without CuPy they are built on the host, copied at first use).
    data = DeviceData()
    on_gpu = data.xgboost(prepared, device="cuda", max_bin=32)
    assert isinstance(on_gpu.valid, xgb.QuantileDMatrix) and not on_gpu.from_device_arrays
    on_cpu = data.xgboost(prepared, device="cpu", max_bin=32)  # another shape: rebuilt
    assert isinstance(on_cpu.train, xgb.QuantileDMatrix)
    assert not isinstance(on_cpu.valid, xgb.QuantileDMatrix)  # cheaper to evaluate each round
    assert data.builds == 2
