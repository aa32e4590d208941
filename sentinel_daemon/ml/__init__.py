"""Sentinel's machine-learning library: IEEE-CIS data, features, splits, training, artifacts.

The worker process calls, in order: :func:`prepare` (load, validate, featurise and split,
through a content-keyed Parquet cache), :func:`space.suggest` then
:func:`training.train_trial` for each trial, :func:`artifacts.save_model` for each
finished trial, and :func:`evaluate` once on the test split for the promoted model.
"""

from __future__ import annotations

from sentinel_daemon.ml.artifacts import LoadedModel, SavedModel, load_model, save_model
from sentinel_daemon.ml.errors import (
    ArtifactError,
    DataError,
    MetricsError,
    MLError,
    SpaceError,
    SplitError,
)
from sentinel_daemon.ml.features import FEATURE_VERSION
from sentinel_daemon.ml.prepare import Prepared, prepare
from sentinel_daemon.ml.training import TrainResult, TrialPruned, evaluate, train_trial

__all__ = [
    "FEATURE_VERSION",
    "ArtifactError",
    "DataError",
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
