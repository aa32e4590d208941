from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import orjson
import pytest

from sentinel_daemon import ml
from sentinel_daemon.ml.artifacts import (
    ChecksumMismatch,
    find_saved,
    load_model,
    read_checked,
    save_model,
)
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


def test_read_checked_returns_the_bytes_only_when_they_hash_to_the_recorded_sha256(
    tmp_path: Path,
) -> None:
    path = tmp_path / "model.ubj"
    path.write_bytes(b"model bytes")
    digest = hashlib.sha256(b"model bytes").hexdigest()
    assert read_checked(path, digest) == b"model bytes"
    assert read_checked(path, digest.upper()) == b"model bytes"
    with pytest.raises(ChecksumMismatch, match="sha256 mismatch") as caught:
        read_checked(path, "0" * 64)
    assert (caught.value.path, caught.value.actual) == (path, digest)
    with pytest.raises(FileNotFoundError):
        read_checked(tmp_path / "gone.ubj", digest)


def test_find_saved_finds_a_complete_model_of_that_attempt_only(
    trained: ml.TrainResult, tmp_path: Path
) -> None:
    job, artifact_dir = "fraud-0123abcd", "jobs/fraud-0123abcd/trials/4"
    meta = {"job_id": job, "trial": 4, "attempt": 2}
    folder = tmp_path / artifact_dir / "2-w0-1-1"
    saved = save_model(trained, trained.model_kind, folder, meta)
    found = find_saved(tmp_path, artifact_dir, job, 4, 2)
    assert found is not None
    assert found.artifact == saved.path.relative_to(tmp_path).as_posix()
    assert (found.sha256, found.value) == (saved.sha256, trained.metrics["roc_auc"])
    assert find_saved(tmp_path, artifact_dir, job, 4, 1) is None  # another attempt's folder
    assert find_saved(tmp_path, artifact_dir, "other-0123abcd", 4, 2) is None
    saved.path.write_bytes(saved.path.read_bytes()[:-1])  # torn: not the model meta.json names
    assert find_saved(tmp_path, artifact_dir, job, 4, 2) is None
