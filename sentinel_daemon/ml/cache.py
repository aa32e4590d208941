"""Parquet cache of the feature matrix, keyed by the inputs' content and the feature version.

A cache file holds every row's features (float32), TransactionID, TransactionDT and the
target, in time order, plus JSON metadata (key, feature names, categorical info, loader
notes) in the Parquet schema. It is written through :func:`atomic_writer`, so a crash
leaves either no file or a whole one; a file that cannot be read or does not match its
key is treated as absent and rebuilt.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from sentinel_daemon.fsutil import atomic_write_bytes, atomic_writer
from sentinel_daemon.ml.errors import DataError
from sentinel_daemon.ml.splits import SPLITS, Split

CACHE_FORMAT: Final = 1
_META_KEY: Final = b"sentinel.ml"
_ID, _TIME, _TARGET = "__TransactionID", "__TransactionDT", "__isFraud"
_ROW_GROUP: Final = 16_384  # small row groups bound the memory of a batched read
_COLUMN_BLOCK: Final = 64


@dataclass(frozen=True, eq=False)
class Matrix:
    """The split feature matrices and the columns that travel beside them, in time order.

    Each split is its own Fortran-ordered float32 array: a column is contiguous, so
    filling one from a Parquet column is a plain copy, and XGBoost and LightGBM take
    column-major input without converting it.
    """

    parts: dict[str, np.ndarray]  # "train" / "valid" / "test" -> (rows, features)
    split: Split
    y: np.ndarray  # int8, 0/1
    transaction_id: np.ndarray  # int64
    transaction_dt: np.ndarray  # int64
    feature_names: tuple[str, ...]
    categorical: dict[str, int]
    notes: tuple[str, ...]


SplitRows = Callable[[np.ndarray, np.ndarray], Split]


def allocate(split: Split, n_features: int) -> dict[str, np.ndarray]:
    """Empty column-major float32 arrays, one per split."""
    return {
        name: np.empty((split[name].stop - split[name].start, n_features), np.float32, order="F")
        for name in SPLITS
    }


def scatter(
    parts: dict[str, np.ndarray], split: Split, j: int, start: int, column: np.ndarray
) -> None:
    """Copy rows ``start..start+len(column)`` of feature ``j`` into the split arrays."""
    stop = start + len(column)
    for name in SPLITS:
        lo, hi = max(start, split[name].start), min(stop, split[name].stop)
        if lo < hi:
            offset = split[name].start
            parts[name][lo - offset : hi - offset, j] = column[lo - start : hi - start]


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
    except FileNotFoundError as exc:
        raise DataError(Path(path), None, "file not found") from exc
    except IsADirectoryError as exc:
        raise DataError(Path(path), None, "is a folder, not a data file") from exc
    return digest.hexdigest()


#: A remembered digest is trusted only for a file last changed longer ago than this, the
#: "racy git" rule: a write within the same timestamp tick as our stat could go unseen.
_RACY_SECONDS = 2.0


def remembered_sha256(path: Path, memo_dir: Path, *, racy_seconds: float = _RACY_SECONDS) -> str:
    """:func:`file_sha256`, remembered per file while its identity is unchanged.

    A second job on the same data must not pay for reading every byte again just to find
    its cache. The digest is kept in ``memo_dir`` with the file's device, inode, size,
    mtime and ctime (which no user call can set back); if any of them differs, or the file
    changed too recently to tell, it is hashed again. Like git's index, this trusts the
    file system's timestamps.
    """
    path = Path(path)
    try:
        before = os.stat(path)
    except FileNotFoundError as exc:
        raise DataError(path, None, "file not found") from exc
    identity = _identity(before)
    real = os.path.realpath(path)
    memo = Path(memo_dir) / "digests" / f"{hashlib.sha256(real.encode()).hexdigest()[:32]}.json"
    try:
        saved = orjson.loads(memo.read_bytes())
        if saved.get("path") == real and saved.get("identity") == identity:
            return str(saved["sha256"])
    except (OSError, orjson.JSONDecodeError, AttributeError, KeyError):
        pass  # no memo, or a damaged one: hash the file
    digest = file_sha256(path)
    after = os.stat(path)
    unchanged = identity == _identity(after)
    settled = time.time() - max(after.st_mtime, after.st_ctime) >= racy_seconds
    if unchanged and settled:
        memo.parent.mkdir(parents=True, exist_ok=True)
        record = {"path": real, "identity": identity, "sha256": digest}
        atomic_write_bytes(memo, orjson.dumps(record))
    return digest


def _identity(st: os.stat_result) -> list[int]:
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def data_hash(transactions_sha256: str, identity_sha256: str | None) -> str:
    """One content hash naming the pair of input files."""
    text = f"transactions:{transactions_sha256}\nidentity:{identity_sha256 or '-'}\n"
    return hashlib.sha256(text.encode()).hexdigest()


def cache_key(data_sha256: str, feature_version: str, feature_set: str) -> str:
    text = f"cache:{CACHE_FORMAT}\ndata:{data_sha256}\nfeatures:{feature_version}/{feature_set}\n"
    return hashlib.sha256(text.encode()).hexdigest()


def cache_path(cache_dir: Path, key: str, feature_set: str) -> Path:
    return Path(cache_dir) / f"features-{feature_set}-{key[:32]}.parquet"


def write(
    path: Path, columns: dict[str, np.ndarray], side: dict[str, np.ndarray], info: dict[str, Any]
) -> None:
    """Write the feature ``columns`` and the side columns (id, time, target), crash-safely."""
    names = list(columns)
    arrays = [pa.array(columns[name]) for name in names]
    arrays += [pa.array(side["id"]), pa.array(side["time"]), pa.array(side["target"])]
    meta = info | {"format": CACHE_FORMAT, "features": names}
    schema = pa.schema(
        [pa.field(name, pa.float32()) for name in names]
        + [pa.field(_ID, pa.int64()), pa.field(_TIME, pa.int64()), pa.field(_TARGET, pa.int8())],
        metadata={_META_KEY: orjson.dumps(meta)},
    )
    table = pa.Table.from_arrays(arrays, schema=schema)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_writer(path) as fh:
        pq.write_table(table, fh, compression="zstd", row_group_size=_ROW_GROUP)


def read(path: Path, expected: dict[str, Any], split_rows: SplitRows) -> Matrix | None:
    """Load a cache file into the split matrices; None if absent, unreadable or foreign.

    ``expected`` metadata items (the key, the feature version) must all match. Blocks of
    columns of one row group at a time are copied straight into the preallocated split
    arrays, so the peak stays near the matrices' own size. Errors of ``split_rows``
    (a SplitError) propagate.
    """
    if not path.is_file():
        return None
    try:
        pf = pq.ParquetFile(path)
        info = orjson.loads(pf.schema_arrow.metadata[_META_KEY])
        if info.get("format") != CACHE_FORMAT or any(info.get(k) != v for k, v in expected.items()):
            return None
        names = tuple(info["features"])
        side = pf.read(columns=[_ID, _TIME, _TARGET])
        ids = side.column(_ID).to_numpy()
        times = side.column(_TIME).to_numpy()
        y = side.column(_TARGET).to_numpy()
    except (pa.ArrowException, OSError, KeyError, TypeError, ValueError, orjson.JSONDecodeError):
        return None  # a damaged or foreign file is only a cache miss: rebuild it
    split = split_rows(times, y)
    parts = allocate(split, len(names))
    try:
        start = 0
        for group in range(pf.num_row_groups):
            rows = pf.metadata.row_group(group).num_rows
            # A few dozen columns of one row group at a time: a few MiB decoded in flight.
            for first in range(0, len(names), _COLUMN_BLOCK):
                block = list(names[first : first + _COLUMN_BLOCK])
                table = pf.read_row_group(group, columns=block)
                for j, name in enumerate(block, start=first):
                    column = table.column(name).to_numpy(zero_copy_only=False)
                    scatter(parts, split, j, start, column)
            start += rows
        if start != len(ids):
            return None
    except (pa.ArrowException, OSError, ValueError):
        return None
    return Matrix(
        parts, split, y, ids, times, names, dict(info["categorical"]), tuple(info["notes"])
    )
