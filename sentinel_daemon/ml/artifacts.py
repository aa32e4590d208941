"""Model artifacts: XGBoost UBJSON or LightGBM text beside a ``meta.json``, written crash-safely.

The sha256 returned by :func:`save_model` is computed over the exact bytes written, and
:func:`read_checked` is the one check of a model file against its sha256: :func:`load_model`
refuses a file whose bytes do not hash to the expected value before parsing anything, so a
torn, corrupted or swapped file is never used; the daemon checks a worker's saved model and
the promoted copy in ``best/`` with it too. :func:`find_saved` finds a complete model of one
trial attempt on disk (a worker, or a restarted daemon, never trains it twice). No pickle:
both formats are the libraries' own portable ones.

The checks and :func:`find_saved` need neither XGBoost nor LightGBM: those (and NumPy,
pyarrow, scikit-learn) are imported by the functions that build or parse a model, so the
daemon and a worker's start-up import this module cheaply.
"""

from __future__ import annotations

import hashlib
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

import sentinel_daemon
from sentinel_daemon.fsutil import atomic_write_bytes, fsync_dir
from sentinel_daemon.ml.errors import ArtifactError, MLError

if TYPE_CHECKING:
    import numpy as np

    from sentinel_daemon.ml.training import Booster, TrainResult

ARTIFACT_FORMAT = 1
MODEL_FILES = {"xgboost": "model.ubj", "lightgbm": "model.txt"}
META_FILE = "meta.json"


class ChecksumMismatch(ArtifactError):
    """A model file whose bytes do not hash to the sha256 recorded for it."""

    def __init__(self, path: Path, expected: str, actual: str) -> None:
        self.expected = expected
        self.actual = actual
        super().__init__(path, f"sha256 mismatch: expected {expected}, the file hashes to {actual}")


def read_checked(path: Path, sha256: str) -> bytes:
    """The bytes of the model file ``path``, once they hash to ``sha256`` (either case).

    OSError when the file cannot be read (callers say what that means for them);
    :class:`ChecksumMismatch` when its bytes are not the ones recorded.
    """
    data = Path(path).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256.lower():
        raise ChecksumMismatch(Path(path), sha256, digest)
    return data


@dataclass(frozen=True)
class FoundModel:
    """A complete model of one trial attempt on disk: the fields of a ``saved`` answer."""

    artifact: str  # relative to the state directory
    sha256: str
    metrics: dict[str, float]
    value: float
    train_seconds: float
    duration_s: float


def find_saved(
    state_dir: Path, artifact_dir: str, job_id: str, trial: int, attempt: int
) -> FoundModel | None:
    """A complete model of attempt ``attempt`` of ``job_id``'s trial ``trial``, if one is on disk.

    A model folder of the attempt (``<artifact_dir>/<attempt>-*/``, relative to
    ``state_dir``) whose ``meta.json`` names this job, trial and attempt and whose model
    file matches its sha256; None when there is none (the usual case: one glob).
    """
    folder = Path(state_dir) / artifact_dir
    for meta_path in sorted(folder.glob(f"{attempt}-*/meta.json")):
        try:
            meta = orjson.loads(meta_path.read_bytes())
            model = meta_path.with_name(str(meta["model_file"]))
            fits = (meta.get("job_id"), meta.get("trial"), meta.get("attempt")) == (
                job_id,
                trial,
                attempt,
            )
            metrics = {str(k): float(v) for k, v in meta["metrics"]["valid"].items()}
            if not fits or "roc_auc" not in metrics:
                continue
            sha256 = str(meta["sha256"]).lower()
            read_checked(model, sha256)
            artifact = model.relative_to(state_dir).as_posix()
        except (OSError, ValueError, KeyError, TypeError, AttributeError, ArtifactError):
            continue  # not a complete model of this attempt
        seconds = round(float(meta.get("train_seconds", 0.0)), 6)
        return FoundModel(
            artifact=artifact,
            sha256=sha256,
            metrics=metrics,
            value=metrics["roc_auc"],
            train_seconds=seconds,
            duration_s=seconds,
        )
    return None


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
        from sentinel_daemon.ml.training import predict

        return predict(self.model_kind, self.model, X)


def library_versions() -> dict[str, str]:
    import lightgbm as lgb
    import numpy as np
    import pyarrow as pa
    import sklearn
    import xgboost as xgb

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
    import lightgbm as lgb
    import xgboost as xgb

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
    from sentinel_daemon.ml.training import TrainResult

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
        data = read_checked(path, expected_sha256)
    except OSError as exc:
        raise ArtifactError(path, f"cannot be read ({exc.strerror or exc})") from exc
    digest = expected_sha256.lower()
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
    import lightgbm as lgb
    import xgboost as xgb

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
    import xgboost as xgb

    if isinstance(booster, xgb.Booster):
        return int(booster.num_features())
    return int(booster.num_feature())
