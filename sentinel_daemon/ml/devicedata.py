"""XGBoost's training and validation matrices, built once per data set and kept across trials.

A worker trains many trials on one prepared data set. Building XGBoost's matrices for
each trial costs a pass over the data, and on a GPU a host-to-device copy of it too.
:class:`DeviceData` builds them once (a :class:`xgboost.QuantileDMatrix` for the train
split; for the validation split, on a GPU one that takes its bins from it through
``ref=``, on the CPU a plain :class:`xgboost.DMatrix`, because XGBoost's CPU predictor
evaluates every round on a QuantileDMatrix far more slowly: ``bench/matrices.py``) and
hands the same pair to every later trial with the same data set and the same *shaping*
parameters: those that change what the matrices hold, which for XGBoost's
``hist`` method are the device and ``max_bin`` (XGBoost refuses a booster whose
``max_bin`` differs from its QuantileDMatrix's). Anything else a trial searches
(depth, rates, sampling) reuses them.

On a GPU (``device`` ``cuda`` or ``cuda:N``) the matrices are built from device arrays
when CuPy is installed (the data is copied to the GPU once, sketched and binned there);
without CuPy they are built from the host arrays and XGBoost copies the binned matrix to
the GPU at the first trial and keeps it there, in the matrix, for the next ones. Either
way a trial does no host-to-device copy of the data, and scoring predicts on the cached
validation matrix (``Booster.predict``), so no ``inplace_predict`` on host data meets a
GPU booster (XGBoost's "Falling back to prediction using DMatrix due to mismatched
devices").

Bounded: one data set at a time. A different data set, device or ``max_bin`` releases
the old matrices before the new ones are built, and :meth:`DeviceData.release` frees
them when the worker drops its prepared data.
"""

from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import structlog
import xgboost as xgb

from sentinel_daemon.ml.preparation import Prepared

log = structlog.get_logger(__name__)

#: XGBoost's own default ``max_bin`` for ``tree_method=hist``.
DEFAULT_MAX_BIN = 256


@dataclass(frozen=True)
class Shape:
    """What the cached matrices depend on, besides the data set itself."""

    device: str
    max_bin: int


@dataclass(eq=False)
class XGBoostMatrices:
    """The train and validation matrices of one data set, for one :class:`Shape`."""

    train: xgb.QuantileDMatrix
    valid: xgb.DMatrix  # a QuantileDMatrix (ref= train) on a GPU
    shape: Shape
    #: Built from device arrays (CuPy); False: from host arrays, copied at first use.
    from_device_arrays: bool
    build_seconds: float

    def predict_valid(self, booster: xgb.Booster, rounds: int) -> np.ndarray:
        """Probabilities of the validation rows from the first ``rounds`` rounds of
        ``booster``, computed where the matrix lives (on the GPU for a GPU booster)."""
        return np.asarray(booster.predict(self.valid, iteration_range=(0, rounds)))


def cupy_available() -> bool:
    """Whether CuPy is installed (it is imported only to build on a GPU)."""
    return importlib.util.find_spec("cupy") is not None


class DeviceData:
    """One worker's cached XGBoost matrices: one data set, one shape, at a time.

    ``nthread`` caps the threads XGBoost uses to build them (None: all cores).
    ``builds`` and ``reuses`` count what :meth:`xgboost` did, for logs and tests.
    """

    def __init__(self, nthread: int | None = None) -> None:
        self.nthread = nthread
        self.builds = 0
        self.reuses = 0
        self._prepared: Prepared | None = None
        self._matrices: XGBoostMatrices | None = None

    @property
    def cached(self) -> XGBoostMatrices | None:
        return self._matrices

    def xgboost(
        self, prepared: Prepared, *, device: str, max_bin: int = DEFAULT_MAX_BIN
    ) -> XGBoostMatrices:
        """The matrices of ``prepared`` for ``device`` and ``max_bin``: cached, or built now.

        The data set is matched by identity (the very :class:`Prepared` object), so two
        preparations of the same files count as two data sets.
        """
        if max_bin < 2:
            raise ValueError(f"max_bin must be at least 2, not {max_bin}")
        shape = Shape(device, int(max_bin))
        cached = self._matrices
        if cached is not None and self._prepared is prepared and cached.shape == shape:
            self.reuses += 1
            return cached
        changed = (
            "data set" if cached is None or self._prepared is not prepared else "shaping parameter"
        )
        self.release()  # never two data sets' matrices at once
        started = time.perf_counter()
        train, valid, from_device = _build(prepared, shape, self.nthread)
        self._matrices = XGBoostMatrices(
            train, valid, shape, from_device, time.perf_counter() - started
        )
        self._prepared = prepared
        self.builds += 1
        log.info(
            "xgboost.matrices_built",
            reason=changed if cached is not None else "first trial",
            device=device,
            max_bin=shape.max_bin,
            from_device_arrays=from_device,
            rows=int(prepared.X_train.shape[0] + prepared.X_valid.shape[0]),
            seconds=round(self._matrices.build_seconds, 3),
        )
        return self._matrices

    def release(self) -> None:
        """Drop the cached matrices (and with them their GPU memory)."""
        self._matrices = None
        self._prepared = None


def _build(
    prepared: Prepared, shape: Shape, nthread: int | None
) -> tuple[xgb.QuantileDMatrix, xgb.DMatrix, bool]:
    """Build the pair; from device arrays when on a GPU and CuPy is there."""
    threads = nthread or -1
    names = list(prepared.feature_names)
    if shape.device.startswith("cuda") and cupy_available():
        return (*_build_on_device(prepared, shape, threads, names), True)
    train = xgb.QuantileDMatrix(
        prepared.X_train,
        label=prepared.y_train,
        max_bin=shape.max_bin,
        nthread=threads,
        feature_names=names,
    )
    valid: xgb.DMatrix
    if shape.device.startswith("cuda"):
        # Binned like the train matrix, and kept on the GPU once copied there.
        valid = xgb.QuantileDMatrix(
            prepared.X_valid,
            label=prepared.y_valid,
            ref=train,
            max_bin=shape.max_bin,
            nthread=threads,
            feature_names=names,
        )
    else:
        valid = xgb.DMatrix(
            prepared.X_valid, label=prepared.y_valid, nthread=threads, feature_names=names
        )
    return train, valid, False


def _build_on_device(
    prepared: Prepared, shape: Shape, threads: int, names: list[str]
) -> tuple[xgb.QuantileDMatrix, xgb.QuantileDMatrix]:  # pragma: no cover - needs a GPU
    import cupy  # only where installed: never a dependency of the package

    index = int(shape.device.split(":", 1)[1]) if ":" in shape.device else 0
    matrices: list[Any] = []
    with cupy.cuda.Device(index):
        for X, y in ((prepared.X_train, prepared.y_train), (prepared.X_valid, prepared.y_valid)):
            # The device arrays are freed once binned: the matrix keeps its own copy.
            # Row-major on the device (the host matrices are column-major).
            X_dev, y_dev = cupy.ascontiguousarray(cupy.asarray(X)), cupy.asarray(y)
            matrices.append(
                xgb.QuantileDMatrix(
                    X_dev,
                    label=y_dev,
                    ref=matrices[0] if matrices else None,
                    max_bin=shape.max_bin,
                    nthread=threads,
                    feature_names=names,
                )
            )
            del X_dev, y_dev
    return matrices[0], matrices[1]
