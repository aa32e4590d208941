"""Parquet cache of the feature matrix, keyed by the inputs' content and the feature version.

A cache file holds every row's features (float32), TransactionID, TransactionDT and the
target, in time order, plus JSON metadata (key, feature names, categorical info, loader
notes) in the Parquet schema. It is written through :func:`atomic_writer`, so a crash
leaves either no file or a whole one; a file that cannot be read or does not match its
key is treated as absent and rebuilt.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import hashlib
import mmap
import os
import sys
import threading
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
from sentinel_daemon.ml.datafile import DataFile, opened
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
    """Column-major float32 arrays, one per split, in anonymous mappings.

    Their pages are mapped in as they are first written, unless :class:`_Populator` maps
    them in first.
    """
    return {name: _mapped(split[name].stop - split[name].start, n_features) for name in SPLITS}


def _mapped(rows: int, columns: int) -> np.ndarray:
    """A column-major float32 array of its own anonymous mapping, unmapped with its last view."""
    size = rows * columns * 4
    if size == 0:
        return np.empty((rows, columns), np.float32, order="F")
    try:
        buffer = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    except OSError as exc:  # not a damaged cache (which read() would rebuild): out of memory
        raise MemoryError(f"cannot map {size:,} bytes for a feature matrix: {exc}") from exc
    return np.frombuffer(buffer, dtype=np.float32).reshape((rows, columns), order="F")


#: madvise(2) advice that maps a range's pages in, writable (Linux 5.14+); Python 3.11's
#: mmap module does not name it.
_MADV_POPULATE_WRITE: Final = 23


@functools.cache
def _libc_madvise() -> Callable[[int, int, int], int] | None:
    """libc's ``madvise``, called through ctypes, which releases the GIL during the call.

    ``mmap.madvise`` and ``mmap.mmap(..., MAP_POPULATE)`` hold the GIL while the kernel
    maps pages in (0.057 s for 180 MiB on the benchmark machine), which stalls the decode
    thread of :func:`read` for as long.
    """
    if not sys.platform.startswith("linux"):  # the advice's number means something else
        return None
    try:
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    madvise.restype = ctypes.c_int
    return madvise


class _Populator:
    """Maps in the split arrays' pages on its own thread, one column block at a time.

    The copy of a block waits only until that block's columns are mapped in, so mapping,
    decoding and copying overlap instead of mapping everything first. Where the kernel
    cannot populate a range (before Linux 5.14), the copy maps pages in by writing them,
    as it would without this class. A populate that fails for lack of memory is raised as
    :class:`MemoryError` from :meth:`wait`, in the copying thread.
    """

    def __init__(self, parts: dict[str, np.ndarray], n_features: int) -> None:
        self._parts = [part for part in parts.values() if part.size]
        self._n = n_features
        self._ready = 0  # column blocks mapped in
        self._error: Exception | None = None
        self._finished = False
        self._stopped = False
        self._changed = threading.Condition()

    def run(self) -> None:
        madvise = _libc_madvise()
        try:
            for block, first in enumerate(range(0, self._n, _COLUMN_BLOCK)):
                if self._stopped:
                    return
                last = min(first + _COLUMN_BLOCK, self._n)
                for part in self._parts:
                    if madvise is not None and not self._populate(madvise, part, first, last):
                        madvise = None  # unsupported: the copy faults the pages in itself
                with self._changed:
                    self._ready = block + 1
                    self._changed.notify_all()
        except Exception as exc:  # MemoryError, or a bug: either is raised in the copy
            with self._changed:
                self._error = exc
                self._changed.notify_all()
        finally:
            with self._changed:  # whatever happened, never leave wait() hanging
                self._finished = True
                self._changed.notify_all()

    @staticmethod
    def _populate(
        madvise: Callable[[int, int, int], int], part: np.ndarray, first: int, last: int
    ) -> bool:
        """Map in the pages of columns ``first..last`` of ``part``; False if unsupported."""
        rows = part.shape[0]
        start, stop = first * rows * 4, last * rows * 4
        start -= start % mmap.PAGESIZE  # populating a page twice is harmless
        if madvise(part.ctypes.data + start, stop - start, _MADV_POPULATE_WRITE) == 0:
            return True
        code = ctypes.get_errno()
        if code in (errno.EINVAL, errno.ENOSYS):
            return False
        message = f"cannot map in {stop - start:,} bytes of a feature matrix: {os.strerror(code)}"
        raise MemoryError(message)

    def wait(self, first: int) -> None:
        """Until the block of columns starting at ``first`` is mapped in."""
        block = first // _COLUMN_BLOCK
        with self._changed:
            self._changed.wait_for(lambda: self._ready > block or self._finished)
            if self._error is not None:
                raise self._error

    def stop(self) -> None:
        self._stopped = True


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


def file_sha256(source: Path | DataFile) -> str:
    """Hex sha256 of a data file's bytes (opened by :func:`open_data` if given as a path)."""
    digest = hashlib.sha256()
    with opened(source) as data:
        for chunk in data.chunks(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


#: A remembered digest is trusted only for a file last changed longer ago than this, the
#: "racy git" rule: a write within the same timestamp tick as our stat could go unseen.
_RACY_SECONDS = 2.0


def remembered_sha256(
    source: Path | DataFile, memo_dir: Path, *, racy_seconds: float = _RACY_SECONDS
) -> str:
    """:func:`file_sha256`, remembered per file while its identity is unchanged.

    A second job on the same data must not pay for reading every byte again just to find
    its cache. The digest is kept in ``memo_dir`` with the file's device, inode, size,
    mtime and ctime (which no user call can set back); if any of them differs, or the file
    changed too recently to tell, it is hashed again. Like git's index, this trusts the
    file system's timestamps. The identity is the open file's (``fstat``), so the digest
    is of the very file that is read afterwards.
    """
    with opened(source) as data:
        identity = _identity(os.fstat(data.fileno()))
        real = data.real
        key = hashlib.sha256(real.encode("utf-8", "surrogateescape")).hexdigest()[:32]
        memo = Path(memo_dir) / "digests" / f"{key}.json"
        try:
            saved = orjson.loads(memo.read_bytes())
            if saved.get("path") == real and saved.get("identity") == identity:
                return str(saved["sha256"])
        except (OSError, orjson.JSONDecodeError, AttributeError, KeyError):
            pass  # no memo, or a damaged one: hash the file
        digest = file_sha256(data)
        after = os.fstat(data.fileno())
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

    Decoding (pyarrow, without the GIL) overlaps the caller's copying. Up to 8 MiB per
    block.
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
    # One thread decodes ahead (a ParquetFile is not safe to read from two threads at once),
    # another maps in the split arrays' pages, while this one copies.
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cache-decode")
    mapper = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cache-map")
    populator = None
    try:
        blocks = _BlockReader(pf, names, pool)
        parts = allocate(split, len(names))
        populator = _Populator(parts, len(names))
        mapper.submit(populator.run)
        start = 0
        for rows, first, table in blocks:
            populator.wait(first)
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
        if populator is not None:
            populator.stop()
        mapper.shutdown()
        pool.shutdown(cancel_futures=True)
    return Matrix(
        parts, split, y, ids, times, names, dict(info["categorical"]), tuple(info["notes"])
    )
