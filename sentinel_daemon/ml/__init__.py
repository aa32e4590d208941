"""Sentinel's machine-learning library: IEEE-CIS data, features, splits, training, artifacts.

The worker process calls, in order: :func:`prepare` (load, validate, featurise and split,
through a content-keyed Parquet cache), :func:`space.suggest` then
:func:`training.train_trial` for each trial, :func:`artifacts.save_model` for each
finished trial, and :func:`evaluate` once on the test split for the promoted model.

Imports the base and the core. The core only for the search space
(:mod:`sentinel_daemon.core.space`): it is part of the job-file contract, and the trainer
and the samplers must use the very definition the job check accepted.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sentinel_daemon.core.space import SpaceError
    from sentinel_daemon.ml.artifacts import LoadedModel, SavedModel, load_model, save_model
    from sentinel_daemon.ml.devicedata import DeviceData
    from sentinel_daemon.ml.errors import (
        ArtifactError,
        DataError,
        MetricsError,
        MLError,
        SplitError,
    )
    from sentinel_daemon.ml.features import FEATURE_VERSION
    from sentinel_daemon.ml.preparation import Prepared, prepare
    from sentinel_daemon.ml.training import TrainResult, TrialPruned, evaluate, train_trial

# Importing XGBoost, LightGBM, scikit-learn and pyarrow takes over a second. The daemon
# needs only the search space (``ml.space``, Optuna alone), so the package's names load
# on first use: ``from sentinel_daemon.ml.space import suggest`` stays cheap.
_WHERE = {
    "LoadedModel": "artifacts",
    "SavedModel": "artifacts",
    "load_model": "artifacts",
    "save_model": "artifacts",
    "ArtifactError": "errors",
    "DataError": "errors",
    "MetricsError": "errors",
    "MLError": "errors",
    "SpaceError": "errors",
    "SplitError": "errors",
    "DeviceData": "devicedata",
    "FEATURE_VERSION": "features",
    "Prepared": "preparation",
    "prepare": "preparation",
    "TrainResult": "training",
    "TrialPruned": "training",
    "evaluate": "training",
    "train_trial": "training",
}


_SUBMODULES = frozenset(
    {
        "artifacts",
        "cache",
        "devicedata",
        "errors",
        "features",
        "learners",
        "loading",
        "metrics",
        "preparation",
        "schema",
        "space",
        "splits",
        "stderrguard",
        "synth",
        "training",
    }
)


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:  # ``ml.artifacts`` and the like, as an eager package allowed
        return importlib.import_module(f"{__name__}.{name}")
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "FEATURE_VERSION",
    "ArtifactError",
    "DataError",
    "DeviceData",
    "LoadedModel",
    "MLError",
    "MetricsError",
    "Prepared",
    "SavedModel",
    "SpaceError",
    "SplitError",
    "TrainResult",
    "TrialPruned",
    "evaluate",
    "load_model",
    "prepare",
    "save_model",
    "train_trial",
]
