"""Parquet cache of the feature matrix, keyed by the inputs' content and the feature version.

A cache file holds every row's features (float32), TransactionID, TransactionDT and the
target, in time order, plus JSON metadata (key, feature names, categorical info, loader
notes) in the Parquet schema. It is written through :func:`atomic_writer`, so a crash
leaves either no file or a whole one; a file that cannot be read or does not match its
key is treated as absent and rebuilt.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
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
# A read holds a few blocks of 32 columns of one row group (8 MiB each) besides the
# matrices. Larger row groups decode faster (fewer column chunks), larger blocks hold more:
# at 100,000 rows, 64-column blocks took the read's peak from 1.38x to 1.69x the matrices.
_ROW_GROUP: Final = 65_536
_COLUMN_BLOCK: Final = 32
_AHEAD: Final = 2  # blocks decoded ahead of the one being copied


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
    """Column-major float32 arrays, one per split, their memory mapped in up front."""
    return {name: _populated(split[name].stop - split[name].start, n_features) for name in SPLITS}


def _populated(rows: int, columns: int) -> np.ndarray:
    """A column-major float32 array whose pages the kernel maps in one call (MAP_POPULATE).

    Left to ``np.empty``, the pages are faulted in one by one as they are first written,
    as transparent huge pages that can stall on compaction when memory is fragmented:
    copying 180 MiB of features into fresh arrays took 0.04 to 0.45 s from run to run on
    the benchmark machine. Populated up front (4 KiB pages), the mapping takes a steady
    0.07 s, during which :func:`read` is already decoding. The array keeps the mapping
    alive; it is unmapped when the last view of it goes.
    """
    size = rows * columns * 4
    populate = getattr(mmap, "MAP_POPULATE", 0)  # Linux only
    if size == 0 or not populate:
        return np.empty((rows, columns), np.float32, order="F")
    try:
        buffer = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | populate)
    except OSError as exc:  # not a damaged cache (which read() would rebuild): out of memory
        raise MemoryError(f"cannot map {size:,} bytes for a feature matrix: {exc}") from exc
    return np.frombuffer(buffer, dtype=np.float32).reshape((rows, columns), order="F")


Piece = tuple[np.ndarray, slice, slice]  # split array, its rows, the source column's rows


def pieces(parts: dict[str, np.ndarray], split: Split, start: int, stop: int) -> list[Piece]:
    """Where rows ``start..stop`` of the whole matrix land in the split arrays."""
    found = []
    for name in SPLITS:
        lo, hi = max(start, split[name].start), min(stop, split[name].stop)
        if lo < hi:
            offset = split[name].start
            found.append(
                (parts[name], slice(lo - offset, hi - offset), slice(lo - start, hi - start))
            )
    return found


def scatter(
    parts: dict[str, np.ndarray], split: Split, j: int, start: int, column: np.ndarray
) -> None:
    """Copy rows ``start..start+len(column)`` of feature ``j`` into the split arrays."""
    for part, rows, source in pieces(parts, split, start, start + len(column)):
        part[rows, j] = column[source]


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
        pq.write_table(table, fh, compression="lz4", row_group_size=_ROW_GROUP)


class _BlockReader:
    """Blocks of a few dozen columns of one row group, decoded up to :data:`_AHEAD` ahead.

    Decoding (pyarrow, without the GIL) overlaps the caller's copying, and the first
    blocks decode while the caller maps in the split arrays. Up to 8 MiB per block.
    """

    def __init__(self, pf: pq.ParquetFile, names: tuple[str, ...], pool: Executor) -> None:
        """``pool`` must run one task at a time: a ParquetFile is not thread-safe."""
        self._pf, self._names, self._pool = pf, names, pool
        self._order = [
            (pf.metadata.row_group(group).num_rows, group, first)
            for group in range(pf.num_row_groups)
            for first in range(0, len(names), _COLUMN_BLOCK)
        ]
        self._pending: deque[Future[pa.Table]] = deque()
        self._submitted = 0
        self._fill()

    def _fill(self) -> None:
        while len(self._pending) < _AHEAD and self._submitted < len(self._order):
            self._pending.append(self._pool.submit(self._decode, self._submitted))
            self._submitted += 1

    def _decode(self, k: int) -> pa.Table:
        _, group, first = self._order[k]
        return self._pf.read_row_group(
            group, columns=list(self._names[first : first + _COLUMN_BLOCK])
        )

    def __iter__(self) -> Iterator[tuple[int, int, pa.Table]]:
        """(rows of the block's row group, its first column, the decoded block), in order."""
        for rows, _, first in self._order:
            table = self._pending.popleft().result()
            self._fill()
            yield rows, first, table


def read(path: Path, expected: dict[str, Any], split_rows: SplitRows) -> Matrix | None:
    """Load a cache file into the split matrices; None if absent, unreadable or foreign.

    ``expected`` metadata items (the key, the feature version) must all match. Blocks of
    columns of one row group at a time are copied straight into the preallocated split
    arrays, so the peak stays near the matrices' own size (plus a few blocks in flight).
    Errors of ``split_rows`` (a SplitError) propagate.
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
    # One thread decodes (a ParquetFile is not safe to read from two threads at once),
    # another maps in the split arrays meanwhile.
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cache-decode")
    mapper = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cache-allocate")
    try:
        blocks = _BlockReader(pf, names, pool)
        parts = mapper.submit(allocate, split, len(names)).result()
        start = 0
        for rows, first, table in blocks:
            where = pieces(parts, split, start, start + rows)  # once per block, not column
            for j, chunked in enumerate(table.columns, start=first):
                column = chunked.to_numpy(zero_copy_only=False)
                if len(column) != rows:
                    return None
                for part, dest, source in where:
                    part[dest, j] = column[source]
            if first + _COLUMN_BLOCK >= len(names):  # the row group's last block
                start += rows
        if start != len(ids):
            return None
    except (pa.ArrowException, OSError, ValueError):
        return None
    finally:
        mapper.shutdown()
        pool.shutdown(cancel_futures=True)
    return Matrix(
        parts, split, y, ids, times, names, dict(info["categorical"]), tuple(info["notes"])
    )
