"""Read and validate the IEEE-CIS files (CSV or Parquet) into one compact frame.

The transaction file is required, the identity file optional (left-joined on
``TransactionID``). Each is opened once, safely (:mod:`~sentinel_daemon.ml.datafile`), and
a CSV file is read strictly (:mod:`~sentinel_daemon.ml.strictcsv`). Known columns are parsed
with fixed types (see ``schema``), so a mistyped value is caught where it is read and
reported with file, line, column and value.
The result is sorted by (TransactionDT, TransactionID), the order every feature and
split relies on, and downcast: float32 for measurements, the smallest integer type for
whole-number columns without gaps, categoricals for strings.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from sentinel_daemon.ml import strictcsv
from sentinel_daemon.ml.datafile import DataFile, opened
from sentinel_daemon.ml.errors import DataError
from sentinel_daemon.ml.schema import (
    ALIASES,
    AMOUNT,
    IDENTITY_COLUMNS,
    KEY,
    REQUIRED_IDENTITY,
    REQUIRED_TRANSACTION,
    TARGET,
    TIME,
    TRANSACTION_COLUMNS,
    Kind,
)

_ARROW_TYPES: dict[Kind, pa.DataType] = {
    "id": pa.int64(),
    "time": pa.int64(),
    "target": pa.float64(),  # parsed as a number, then checked to be 0 or 1
    "amount": pa.float64(),  # float64 so that cents survive for the amount features
    "num": pa.float32(),
    "cat": pa.dictionary(pa.int32(), pa.string()),
}
_CSV_COLUMN = re.compile(r"In CSV column #(\d+)")
_PARQUET_SUFFIXES = {".parquet", ".pq", ".parq"}


@dataclass(frozen=True, eq=False)
class Loaded:
    """The joined, validated, time-sorted frame and what the operator should know about it."""

    frame: pd.DataFrame
    notes: tuple[str, ...]


def load(
    transactions: Path | DataFile,
    identity: Path | DataFile | None = None,
    *,
    data_roots: Sequence[Path] | None = None,
) -> Loaded:
    """Read, validate, join and sort the input files; raise :class:`DataError` on bad data.

    A path is opened by :func:`~sentinel_daemon.ml.datafile.open_data` (a regular file,
    under ``data_roots`` when given); an open :class:`DataFile` is read as it is.
    """
    with opened(transactions, data_roots) as tx_file:
        if identity is None:
            return _load(tx_file, None)
        with opened(identity, data_roots) as ident_file:
            return _load(tx_file, ident_file)


def _load(tx_file: DataFile, ident_file: DataFile | None) -> Loaded:
    notes: list[str] = []
    layout = TRANSACTION_COLUMNS | IDENTITY_COLUMNS
    tx = _read(tx_file, layout, REQUIRED_TRANSACTION, notes)
    _check_transactions(tx_file.path, tx)
    frame = tx.to_pandas(split_blocks=True, self_destruct=True)
    del tx
    if ident_file is not None:
        ident_path = ident_file.path
        ident = _read(ident_file, IDENTITY_COLUMNS, REQUIRED_IDENTITY, notes)
        _check_key(ident_path, ident)
        both = [c for c in ident.column_names if c != KEY and c in frame.columns]
        if both:
            raise DataError(
                ident_path, both[0], "this column is also in the transaction file; keep it in one"
            )
        ident_frame = ident.to_pandas(split_blocks=True, self_destruct=True).set_index(KEY)
        unmatched = int((~ident_frame.index.isin(frame[KEY])).sum())
        if unmatched:
            notes.append(f"{ident_path}: {unmatched} identity rows match no transaction")
        frame = frame.join(ident_frame, on=KEY)
    absent = [c for c in layout if c not in frame.columns]
    if absent:
        notes.append(f"{len(absent)} known columns absent, read as missing: {_short(absent)}")
    frame = _sort_by_time(frame)
    return Loaded(_downcast(frame), tuple(notes))


def _short(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _read(
    data: DataFile, layout: dict[str, Kind], required: tuple[str, ...], notes: list[str]
) -> pa.Table:
    path = data.path
    if data.size == 0:
        raise DataError(path, None, "the file is empty")
    parquet = path.suffix.lower() in _PARQUET_SUFFIXES or data.pread(4, 0) == b"PAR1"
    header = _parquet_header(data) if parquet else strictcsv.header(data)
    names = [ALIASES.get(h, h) for h in header]
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise DataError(path, name, "the column appears twice in the header")
        seen.add(name)
    for name in required:
        if name not in seen:
            raise DataError(path, name, "required column is missing")
    unknown = [h for h, n in zip(header, names, strict=True) if n not in layout]
    if unknown:
        notes.append(f"{path}: {len(unknown)} unknown columns ignored: {_short(unknown)}")
    wanted = {h: layout[n] for h, n in zip(header, names, strict=True) if n in layout}
    table = _read_parquet(data, wanted) if parquet else _read_csv(data, header, wanted)
    table = table.rename_columns([ALIASES.get(c, c) for c in table.column_names])
    if table.num_rows == 0:
        raise DataError(path, None, "the file has a header but no data rows")
    return table


def _read_csv(data: DataFile, header: list[str], wanted: dict[str, Kind]) -> pa.Table:
    shape = strictcsv.scan(data)
    convert = pacsv.ConvertOptions(
        column_types={h: _ARROW_TYPES[k] for h, k in wanted.items()},
        include_columns=list(wanted),
        strings_can_be_null=True,
    )
    try:
        return strictcsv.read(data, shape, convert)
    except pa.ArrowInvalid as exc:
        line, message = strictcsv.error_line(str(exc))
        match = _CSV_COLUMN.search(message)
        column = header[int(match.group(1))] if match else None
        detail = message.split(": ", 1)[-1] if match else message
        if column is not None:
            kind = wanted.get(column)
            detail = f"expected {_describe(kind)}: {detail}" if kind else detail
        name = ALIASES.get(column, column) if column else None
        raise DataError(data.path, name, detail, line=line) from exc


def _describe(kind: Kind | None) -> str:
    return {
        "id": "whole numbers",
        "time": "whole numbers of seconds",
        "target": "0 or 1",
        "amount": "numbers",
        "num": "numbers",
        "cat": "text",
        None: "a known type",
    }[kind]


def _parquet_header(data: DataFile) -> list[str]:
    try:
        return list(pq.ParquetFile(data.reader()).schema_arrow.names)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(data.path, None, f"not a readable Parquet file ({exc})") from exc


def _read_parquet(data: DataFile, wanted: dict[str, Kind]) -> pa.Table:
    try:
        table = pq.read_table(data.reader(), columns=list(wanted))
    except (pa.ArrowException, OSError) as exc:
        raise DataError(data.path, None, f"not a readable Parquet file ({exc})") from exc
    columns = []
    for name, kind in wanted.items():
        columns.append(_cast(data.path, ALIASES.get(name, name), table.column(name), kind))
    return pa.Table.from_arrays(columns, names=list(wanted))


def _cast(path: Path, name: str, column: pa.ChunkedArray, kind: Kind) -> pa.ChunkedArray:
    """Bring a Parquet column to the canonical type, or name the first value that won't fit."""
    typ = column.type
    if kind == "cat":
        if pa.types.is_dictionary(typ):
            column = column.cast(pa.string())
        elif not (pa.types.is_string(typ) or pa.types.is_large_string(typ)):
            column = column.cast(pa.string())  # numbers as labels are still labels
        return column.cast(pa.string()).dictionary_encode().cast(_ARROW_TYPES[kind])
    numeric = pa.types.is_integer(typ) or pa.types.is_floating(typ)
    if not (numeric or pa.types.is_string(typ) or pa.types.is_large_string(typ)):
        raise DataError(path, name, f"expected {_describe(kind)}, found type {typ}")
    try:
        return column.cast(_ARROW_TYPES[kind])  # safe cast: refuses 1.5 -> int64
    except pa.ArrowInvalid as exc:
        raise DataError(path, name, f"expected {_describe(kind)}: {exc}") from exc


def _check_key(path: Path, table: pa.Table) -> None:
    key = table.column(KEY)
    if key.null_count:
        raise DataError(path, KEY, f"{key.null_count} rows have no TransactionID")
    counts = pc.value_counts(key)
    repeated = pc.filter(counts, pc.greater(counts.field("counts"), 1))
    if len(repeated):
        first = repeated[0].as_py()
        raise DataError(
            path,
            KEY,
            f"{len(repeated)} TransactionIDs appear more than once, e.g. {first['values']} "
            f"({first['counts']} times); IDs must be unique",
        )


def _check_transactions(path: Path, table: pa.Table) -> None:
    _check_key(path, table)
    for name in (TARGET, TIME, AMOUNT):
        nulls = table.column(name).null_count
        if nulls:
            raise DataError(path, name, f"{nulls} rows have no value; every row needs one")
    target = table.column(TARGET)
    bad = pc.filter(target, pc.invert(pc.is_in(target, pa.array([0.0, 1.0]))))
    if len(bad):
        found = sorted({v.as_py() for v in pc.unique(bad)[:5]})
        raise DataError(path, TARGET, f"the target must be 0 or 1; found {found}")
    if pc.min(table.column(AMOUNT)).as_py() < 0:
        raise DataError(path, AMOUNT, "amounts must not be negative")


def _sort_by_time(frame: pd.DataFrame) -> pd.DataFrame:
    t = frame[TIME].to_numpy()
    k = frame[KEY].to_numpy()
    if len(t) > 1 and np.all((t[1:] > t[:-1]) | ((t[1:] == t[:-1]) & (k[1:] > k[:-1]))):
        return frame.reset_index(drop=True)  # already ordered: no copy of a large frame
    order = np.lexsort((k, t))
    return frame.take(order).reset_index(drop=True)


def _downcast(frame: pd.DataFrame) -> pd.DataFrame:
    """Whole-number float32 columns without gaps become the smallest fitting integer type."""
    out = {}
    for name in frame.columns:
        col = frame[name]
        values = col.to_numpy() if not isinstance(col.dtype, pd.CategoricalDtype) else None
        if name == TARGET:
            out[name] = col.to_numpy().astype(np.int8)
        elif name == TIME and values is not None:
            small = (
                values.min() >= np.iinfo(np.int32).min and values.max() <= np.iinfo(np.int32).max
            )
            out[name] = values.astype(np.int32) if small else values
        elif values is not None and values.dtype == np.float32:
            out[name] = _smallest_int(values)
        else:
            out[name] = col
    return pd.DataFrame(out, copy=False)


def _smallest_int(values: np.ndarray) -> np.ndarray:
    if len(values) == 0 or np.isnan(values).any() or not np.all(values == np.round(values)):
        return values
    lo, hi = values.min(), values.max()
    for typ in (np.int8, np.int16, np.int32):
        info = np.iinfo(typ)
        if lo >= info.min and hi <= info.max:
            return values.astype(typ)
    return values
