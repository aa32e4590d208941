from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import orjson
import pytest

from sentinel_daemon import ml
from sentinel_daemon.ml.artifacts import load_model, save_model
from sentinel_daemon.ml.errors import ArtifactError

from .helpers import SMALL

MODELS = ("xgboost", "lightgbm")


@pytest.fixture(scope="module", params=MODELS)
def trained(request: pytest.FixtureRequest, prepared: ml.Prepared) -> ml.TrainResult:
    return ml.train_trial(request.param, SMALL[request.param], prepared)


def test_saved_model_reloads_passes_its_checksum_and_predicts_identically(
    trained: ml.TrainResult, prepared: ml.Prepared, tmp_path: Path
) -> None:
    saved = save_model(trained, trained.model_kind, tmp_path / "trial-3", {"trial": 3})
    assert saved.sha256 == hashlib.sha256(saved.path.read_bytes()).hexdigest()
    assert saved.path.name == {"xgboost": "model.ubj", "lightgbm": "model.txt"}[trained.model_kind]
    loaded = load_model(saved.path, saved.sha256)
    for X in (prepared.X_valid, prepared.X_test):
        assert np.array_equal(loaded.predict(X), trained.predict(X))
    assert ml.evaluate(loaded, prepared, "valid") == trained.metrics
    assert ml.evaluate(loaded, prepared) == ml.evaluate(trained, prepared, "test")


def test_meta_json_records_what_made_the_model(
    trained: ml.TrainResult, prepared: ml.Prepared, tmp_path: Path
) -> None:
    saved = save_model(trained, trained.model_kind, tmp_path, {"trial": 3, "job_id": "j"})
    meta = orjson.loads(saved.meta_path.read_bytes())
    assert meta["sha256"] == saved.sha256 and meta["model_file"] == saved.path.name
    assert meta["params"] == trained.params and meta["metrics"]["valid"] == trained.metrics
    assert meta["feature_names"] == list(prepared.feature_names)
    assert meta["data_hash"] == prepared.data_hash
    assert meta["feature_version"] == ml.FEATURE_VERSION and meta["trial"] == 3
    assert {"xgboost", "lightgbm", "numpy", "python"} <= set(meta["libraries"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([saved.path.name, "meta.json"])


def test_a_corrupted_model_file_is_refused(trained: ml.TrainResult, tmp_path: Path) -> None:
    saved = save_model(trained, trained.model_kind, tmp_path, {})
    data = bytearray(saved.path.read_bytes())
    data[len(data) // 2] ^= 0x01
    saved.path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="sha256 mismatch") as caught:
        load_model(saved.path, saved.sha256)
    assert caught.value.path == saved.path


def test_a_truncated_or_missing_model_file_is_refused(
    trained: ml.TrainResult, tmp_path: Path
) -> None:
    saved = save_model(trained, trained.model_kind, tmp_path, {})
    saved.path.write_bytes(saved.path.read_bytes()[:100])
    with pytest.raises(ArtifactError):
        load_model(saved.path, saved.sha256)
    with pytest.raises(ArtifactError, match="cannot be read"):
        load_model(tmp_path / "gone.ubj", saved.sha256)


@pytest.mark.parametrize("name", ["model.ubj", "model.txt"])
def test_garbage_is_refused_even_with_a_matching_checksum(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"\x00\x01 not a model \xff")
    with pytest.raises(ArtifactError, match="not a valid"):
        load_model(path, hashlib.sha256(path.read_bytes()).hexdigest())


def test_a_raw_booster_can_be_saved_without_a_result(
    trained: ml.TrainResult, prepared: ml.Prepared, tmp_path: Path
) -> None:
    saved = save_model(trained.model, trained.model_kind, tmp_path / "a" / "b", {"note": "x"})
    loaded = load_model(saved.path, saved.sha256)
    assert np.array_equal(loaded.predict(prepared.X_test), trained.predict(prepared.X_test))
    with pytest.raises(ml.MLError):
        save_model(trained.model, "catboost", tmp_path, {})
