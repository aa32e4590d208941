"""The engineered features against the raw columns on 100,000 rows (``make test-slow``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sentinel_daemon import ml
from sentinel_daemon.ml import synth

PARAMS = {
    "n_estimators": 400,
    "learning_rate": 0.05,
    "max_depth": 8,
    "subsample": 0.8,
    "colsample_bytree": 0.5,
}


@pytest.mark.slow
def test_engineered_features_beat_raw_columns_on_test_auc(tmp_path: Path) -> None:
    tx, ident = synth.generate(100_000, tmp_path / "data", seed=0)
    scores = {}
    for feature_set in ("raw", "full"):
        prepared = ml.prepare(
            tx,
            ident,
            tmp_path / "cache",
            test_fraction=0.2,
            valid_fraction=0.2,
            feature_set=feature_set,
        )
        result = ml.train_trial("xgboost", PARAMS, prepared, seed=0)
        scores[feature_set] = ml.evaluate(result, prepared, "test")["roc_auc"]
    assert scores["full"] > scores["raw"] + 0.01, scores
