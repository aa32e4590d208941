"""Model artifacts: XGBoost UBJSON or LightGBM text beside a ``meta.json``, written crash-safely.

The sha256 returned by :func:`save_model` is computed over the exact bytes written, and
:func:`load_model` refuses a file whose bytes do not hash to the expected value before
parsing anything, so a torn, corrupted or swapped file is never used. No pickle: both
formats are the libraries' own portable ones.
"""

from __future__ import annotations

import hashlib
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import orjson
import pyarrow as pa
import sklearn
import xgboost as xgb

import sentinel_daemon
from sentinel_daemon.fsutil import atomic_write_bytes, fsync_dir
from sentinel_daemon.ml.errors import ArtifactError, MLError
from sentinel_daemon.ml.training import Booster, TrainResult, predict

ARTIFACT_FORMAT = 1
MODEL_FILES = {"xgboost": "model.ubj", "lightgbm": "model.txt"}
META_FILE = "meta.json"


@dataclass(frozen=True)
class SavedModel:
    path: Path
    sha256: str
    meta_path: Path


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """A verified model read back from disk."""

    model_kind: str
    model: Booster
    path: Path
    sha256: str
    meta: dict[str, Any] = field(default_factory=dict)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Fraud probabilities; identical to those of the model before it was saved."""
        return predict(self.model_kind, self.model, X)


def library_versions() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "sentinel": sentinel_daemon.__version__,
        "xgboost": xgb.__version__,
        "lightgbm": lgb.__version__,
        "numpy": np.__version__,
        "pyarrow": pa.__version__,
        "scikit-learn": sklearn.__version__,
    }


def model_bytes(model_kind: str, model: Booster) -> bytes:
    """The portable serialisation of a booster (what :func:`save_model` writes)."""
    if model_kind == "xgboost" and isinstance(model, xgb.Booster):
        return bytes(model.save_raw(raw_format="ubj"))
    if model_kind == "lightgbm" and isinstance(model, lgb.Booster):
        return model.model_to_string(num_iteration=-1).encode("utf-8")
    raise MLError(f"a {type(model).__name__} is not a {model_kind!r} model")


def save_model(
    result_or_model: TrainResult | Booster,
    model_kind: str,
    out_dir: Path,
    meta: dict[str, Any] | None = None,
) -> SavedModel:
    """Write the model file, then ``meta.json``, each atomically and durably.

    From a :class:`TrainResult` the metadata is filled in (params, validation metrics,
    feature list, data hash, feature version, best iteration); ``meta`` adds to it or
    overrides it, except the fields that describe the file itself.
    """
    if model_kind not in MODEL_FILES:
        raise MLError(f"unknown model kind {model_kind!r}; one of {sorted(MODEL_FILES)}")
    info: dict[str, Any] = {}
    if isinstance(result_or_model, TrainResult):
        result = result_or_model
        if result.model_kind != model_kind:
            raise MLError(f"the result holds a {result.model_kind} model, not {model_kind}")
        booster = result.model
        info = {
            "params": result.params,
            "native_params": result.native_params,
            "metrics": {"valid": result.metrics},
            "best_iteration": result.best_iteration,
            "rounds": result.rounds,
            "train_seconds": result.train_seconds,
            "score_seconds": result.score_seconds,
            "device": result.device,
            "feature_names": list(result.feature_names),
            "data_hash": result.data_hash,
            "feature_version": result.feature_version,
            "feature_set": result.feature_set,
            "notes": list(result.notes),
        }
    else:
        booster = result_or_model
    data = model_bytes(model_kind, booster)
    digest = hashlib.sha256(data).hexdigest()
    out_dir = Path(out_dir)
    _make_dirs(out_dir)
    path = out_dir / MODEL_FILES[model_kind]
    atomic_write_bytes(path, data)
    info |= meta or {}
    info |= {
        "format": ARTIFACT_FORMAT,
        "model_kind": model_kind,
        "model_file": path.name,
        "sha256": digest,
        "size_bytes": len(data),
        "libraries": library_versions(),
    }
    meta_path = out_dir / META_FILE
    options = orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY
    atomic_write_bytes(meta_path, orjson.dumps(info, option=options) + b"\n")
    return SavedModel(path, digest, meta_path)


def _make_dirs(path: Path) -> None:
    """Create ``path`` and make each new folder's entry durable in its parent."""
    missing = []
    probe = path
    while not probe.exists():
        missing.append(probe)
        probe = probe.parent
    for folder in reversed(missing):
        folder.mkdir(exist_ok=True)
        fsync_dir(folder.parent)


def load_model(path: Path, expected_sha256: str) -> LoadedModel:
    """Read a model file, verify its sha256, then parse it; ArtifactError on any mismatch."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ArtifactError(path, f"cannot be read ({exc.strerror or exc})") from exc
    digest = hashlib.sha256(data).hexdigest()
    if digest != expected_sha256.lower():
        raise ArtifactError(
            path, f"sha256 mismatch: expected {expected_sha256}, the file hashes to {digest}"
        )
    meta = _read_meta(path, digest)
    kind = meta.get("model_kind") or _kind_from_name(path)
    booster = _parse(path, kind, data)
    names = meta.get("feature_names")
    if names is not None and _n_features(kind, booster) != len(names):
        raise ArtifactError(path, f"the model has {_n_features(kind, booster)} features, "
                                  f"meta.json lists {len(names)}")  # fmt: skip
    return LoadedModel(kind, booster, path, digest, meta)


def _read_meta(path: Path, digest: str) -> dict[str, Any]:
    meta_path = path.with_name(META_FILE)
    if not meta_path.exists():
        return {}
    try:
        meta = orjson.loads(meta_path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise ArtifactError(meta_path, f"unreadable metadata ({exc})") from exc
    if not isinstance(meta, dict):
        raise ArtifactError(meta_path, "metadata is not a JSON object")
    if meta.get("model_file") == path.name and meta.get("sha256") not in (None, digest):
        raise ArtifactError(meta_path, "records another sha256 than the model file beside it")
    return meta if meta.get("model_file") == path.name else {}


def _kind_from_name(path: Path) -> str:
    for kind, name in MODEL_FILES.items():
        if path.suffix == Path(name).suffix:
            return kind
    raise ArtifactError(path, "unknown model format: expected a .ubj or .txt file")


def _parse(path: Path, kind: str, data: bytes) -> Booster:
    try:
        if kind == "xgboost":
            booster = xgb.Booster()
            booster.load_model(bytearray(data))
            return booster
        if kind == "lightgbm":
            return lgb.Booster(model_str=data.decode("utf-8"))
    except (xgb.core.XGBoostError, lgb.basic.LightGBMError, UnicodeDecodeError) as exc:
        raise ArtifactError(path, f"not a valid {kind} model ({str(exc)[:200]})") from exc
    raise ArtifactError(path, f"unknown model kind {kind!r}")


def _n_features(kind: str, booster: Booster) -> int:
    if isinstance(booster, xgb.Booster):
        return int(booster.num_features())
    return int(booster.num_feature())
