"""From input files to split feature matrices, through the Parquet cache."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sentinel_daemon.ml import cache, features, loading
from sentinel_daemon.ml.datafile import DataFile, open_data
from sentinel_daemon.ml.features import FEATURE_VERSION, FeatureSet
from sentinel_daemon.ml.schema import KEY, TARGET, TIME
from sentinel_daemon.ml.splits import Split, time_split


@dataclass(frozen=True, eq=False)
class Prepared:
    """The split feature matrices in time order, with what identifies how they were made.

    ``X_train``, ``X_valid`` and ``X_test`` are column-major float32 arrays (rows in time
    order); together they hold each row once. Category codes are numbered by first
    appearance, with NaN for missing; ``categorical`` maps those feature names to their
    number of codes. ``data_hash`` names the input files' content.
    """

    parts: Mapping[str, np.ndarray]
    y: np.ndarray
    transaction_id: np.ndarray
    transaction_dt: np.ndarray
    feature_names: tuple[str, ...]
    categorical: Mapping[str, int]
    split: Split
    data_hash: str
    feature_version: str
    feature_set: str
    from_cache: bool
    cache_path: Path
    notes: tuple[str, ...]

    def rows(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(X, y) of the split ``train``, ``valid`` or ``test``."""
        return self.parts[name], self.y[self.split[name]]

    @property
    def X_train(self) -> np.ndarray:
        return self.parts["train"]

    @property
    def y_train(self) -> np.ndarray:
        return self.y[self.split.train]

    @property
    def X_valid(self) -> np.ndarray:
        return self.parts["valid"]

    @property
    def y_valid(self) -> np.ndarray:
        return self.y[self.split.valid]

    @property
    def X_test(self) -> np.ndarray:
        return self.parts["test"]

    @property
    def y_test(self) -> np.ndarray:
        return self.y[self.split.test]

    @property
    def nbytes(self) -> int:
        """Bytes held by the three feature matrices."""
        return sum(part.nbytes for part in self.parts.values())


def prepare(
    transactions: Path,
    identity: Path | None,
    cache_dir: Path,
    *,
    test_fraction: float,
    valid_fraction: float,
    feature_set: FeatureSet = "full",
    data_roots: Sequence[Path] | None = None,
) -> Prepared:
    """Load, validate and featurise the inputs (or take them from the cache), then split.

    The cache key is the sha256 of the input files' bytes with the feature version and
    set; the split fractions are applied after the cache, since no feature depends on
    them. Each input is opened once (:func:`~sentinel_daemon.ml.datafile.open_data`: a
    regular file, without blocking, under ``data_roots`` when given), and both its hash
    and its rows are read from that open file. Raises DataError for bad inputs and
    SplitError for unusable fractions.
    """
    if feature_set not in features.FEATURE_SETS:
        raise ValueError(f"unknown feature set {feature_set!r}; one of {features.FEATURE_SETS}")
    with contextlib.ExitStack() as files:
        tx = files.enter_context(open_data(Path(transactions), data_roots))
        ident = (
            files.enter_context(open_data(Path(identity), data_roots))
            if identity is not None
            else None
        )
        return _prepare(tx, ident, Path(cache_dir), test_fraction, valid_fraction, feature_set)


def _prepare(
    tx: DataFile,
    ident: DataFile | None,
    cache_dir: Path,
    test_fraction: float,
    valid_fraction: float,
    feature_set: FeatureSet,
) -> Prepared:
    tx_sha = cache.remembered_sha256(tx, cache_dir)
    id_sha = cache.remembered_sha256(ident, cache_dir) if ident is not None else None
    digest = cache.data_hash(tx_sha, id_sha)
    key = cache.cache_key(digest, FEATURE_VERSION, feature_set)
    path = cache.cache_path(Path(cache_dir), key, feature_set)
    expected = {"key": key, "feature_version": FEATURE_VERSION, "feature_set": feature_set}

    def split_rows(times: np.ndarray, y: np.ndarray) -> Split:
        return time_split(times, y, test_fraction=test_fraction, valid_fraction=valid_fraction)

    matrix = cache.read(path, expected, split_rows)
    from_cache = matrix is not None
    if matrix is None:
        info = expected | {"data_hash": digest}
        matrix = _build(tx, ident, feature_set, path, info, split_rows)
    return Prepared(
        parts=matrix.parts,
        y=matrix.y,
        transaction_id=matrix.transaction_id,
        transaction_dt=matrix.transaction_dt,
        feature_names=matrix.feature_names,
        categorical=matrix.categorical,
        split=matrix.split,
        data_hash=digest,
        feature_version=FEATURE_VERSION,
        feature_set=feature_set,
        from_cache=from_cache,
        cache_path=path,
        notes=matrix.notes,
    )


def _build(
    transactions: DataFile,
    identity: DataFile | None,
    feature_set: FeatureSet,
    path: Path,
    info: dict[str, Any],
    split_rows: cache.SplitRows,
) -> cache.Matrix:
    loaded = loading.load(transactions, identity)
    frame, notes = loaded.frame, loaded.notes
    del loaded
    built = features.build(frame, feature_set)
    side = {
        "id": frame[KEY].to_numpy().astype(np.int64),
        "time": frame[TIME].to_numpy().astype(np.int64),
        "target": frame[TARGET].to_numpy().astype(np.int8),
    }
    del frame  # the raw frame is done with: free it before the matrices are filled
    split = split_rows(side["time"], side["target"])
    info = info | {"categorical": built.categorical, "notes": list(notes)}
    cache.write(path, built.columns, side, info)
    names = built.names
    parts = cache.allocate(split, len(names))
    for j, name in enumerate(names):
        cache.scatter(parts, split, j, 0, built.columns.pop(name))
    return cache.Matrix(
        parts,
        split,
        side["target"],
        side["id"],
        side["time"],
        names,
        built.categorical,
        notes,
    )
