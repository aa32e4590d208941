"""Reading a CSV file strictly: anything malformed is a DataError naming file and line.

pyarrow's CSV reader is fast but lenient in ways that lose data silently: one unterminated
``"`` at the start of row 3 of 3,000 rows made it read 1,552 rows, without a word (a
quoted value runs on, across newlines, to the next quote). And Python's ``csv`` module,
used for the header, crashed on a 30 MB header field. So, before pyarrow parses a file:

- :func:`scan` reads its bytes once (numpy, a few percent of the parse's time) and
  refuses a NUL byte, a line over :data:`MAX_LINE_BYTES`, and a line with an odd number
  of ``"`` (a value may hold a quote only doubled inside a quoted value, and no newline:
  every line must balance its quotes);
- :func:`read` parses with pyarrow, then requires one row for each non-blank line after
  the header; when pyarrow refuses a row (a field count that differs from the header's, a
  value of the wrong type), it parses again on one thread, where pyarrow numbers the
  rows, to name the line.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from sentinel_daemon.ml.datafile import DataFile
from sentinel_daemon.ml.errors import DataError

#: The longest line a data file may have. An IEEE-CIS line is a few KiB; a line past this is
#: damage, or not a CSV file, and the parser would need all of it in memory at once.
MAX_LINE_BYTES = 1 << 20
#: pyarrow's block size: a line must fit in one block, so twice the longest line allowed.
_BLOCK_BYTES = 2 * MAX_LINE_BYTES
_CHUNK_BYTES = 1 << 24
_ROW = re.compile(r"Row #(\d+): ")
_NL, _CR, _QUOTE = 10, 13, 34


@dataclass(frozen=True)
class Shape:
    """What :func:`scan` counted: non-blank lines (the header included) and blank ones."""

    lines: int
    blank: int


def header(data: DataFile) -> list[str]:
    """The column names on line 1."""
    first = data.pread(MAX_LINE_BYTES + 1, 0)
    end = first.find(b"\n")
    if end < 0 and len(first) > MAX_LINE_BYTES:
        raise DataError(data.path, None, _too_long(), line=1)
    line = first if end < 0 else first[:end]
    try:
        text = line.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        # Without this the operator saw "'utf-8' codec can't decode byte..." and no file name.
        raise DataError(data.path, None, f"not a UTF-8 text (CSV) file ({exc.reason} at "
                                         f"byte {exc.start})", line=1) from exc  # fmt: skip
    if "\x00" in text:
        raise DataError(data.path, None, "not a UTF-8 text (CSV) file: it holds a NUL byte", line=1)
    if not text.strip():
        raise DataError(data.path, None, "the file is empty (no header line)", line=1)
    if text.count('"') % 2:
        raise DataError(data.path, None, _unbalanced(), line=1)
    try:
        return next(csv.reader([text.rstrip("\r")], strict=True))
    except csv.Error as exc:  # a name longer than csv's own field limit, say
        raise DataError(data.path, None, f"the header does not parse: {exc}", line=1) from exc


def scan(data: DataFile) -> Shape:
    """Check every line's bytes (see the module doc) and count the lines."""
    lines = blank = 0
    for block in _blocks(data):
        buf, end = block.buf, block.end
        nul = buf.find(b"\x00", 0, end)
        if nul >= 0:
            line = block.first_line + int(np.searchsorted(block.ends, nul))
            raise DataError(data.path, None, "a NUL byte: a CSV file holds text", line=line)
        lengths = block.ends - block.starts
        if int(lengths.max()) > MAX_LINE_BYTES:
            line = block.first_line + int(np.argmax(lengths > MAX_LINE_BYTES))
            raise DataError(data.path, None, _too_long(), line=line)
        if buf.count(b'"', 0, end):
            quotes = np.flatnonzero(block.bytes == _QUOTE)
            per_line = np.searchsorted(quotes, block.ends) - np.searchsorted(quotes, block.starts)
            odd = np.flatnonzero(per_line % 2)
            if len(odd):
                line = block.first_line + int(odd[0])
                raise DataError(data.path, None, _unbalanced(), line=line)
        n_blank = len(block.blank())
        blank += n_blank
        lines += len(block.ends) - n_blank
    return Shape(lines, blank)


def read(data: DataFile, shape: Shape, convert: pacsv.ConvertOptions) -> pa.Table:
    """Parse the file with pyarrow; DataError (with the line, when pyarrow gives a row)."""
    parse = pacsv.ParseOptions(newlines_in_values=False)
    try:
        table = pacsv.read_csv(
            data.reader(),
            read_options=pacsv.ReadOptions(block_size=_BLOCK_BYTES),
            parse_options=parse,
            convert_options=convert,
        )
    except pa.ArrowInvalid as exc:
        raise _located(data, exc, parse, convert) from exc
    if table.num_rows != shape.lines - 1:
        raise DataError(
            data.path,
            None,
            f"{table.num_rows} rows were read but the file has {shape.lines - 1} non-blank "
            f"lines after the header; check its quoting and line endings",
        )
    return table


def _located(
    data: DataFile, exc: pa.ArrowInvalid, parse: pacsv.ParseOptions, convert: pacsv.ConvertOptions
) -> pa.ArrowInvalid:
    """The same error from a one-thread parse, which names the row (pyarrow counts the
    header and leaves out blank lines), with ``line N:`` in front for :func:`error_line`."""
    try:
        pacsv.read_csv(
            data.reader(),
            read_options=pacsv.ReadOptions(block_size=_BLOCK_BYTES, use_threads=False),
            parse_options=parse,
            convert_options=convert,
        )
    except pa.ArrowInvalid as again:
        message = str(again)
        match = _ROW.search(message)
        if match is not None:
            line = physical_line(data, int(match.group(1)))
            detail = message[: match.start()] + message[match.end() :]
            return pa.ArrowInvalid(f"line {line}: {detail}")
    return exc


def error_line(message: str) -> tuple[int | None, str]:
    """Split the ``line N:`` :func:`_located` put in front of a message."""
    if message.startswith("line "):
        number, _, rest = message[5:].partition(": ")
        if number.isdigit():
            return int(number), rest
    return None, message


def physical_line(data: DataFile, row: int) -> int:
    """The line number of pyarrow's ``row`` (1-based, counting non-blank lines)."""
    seen = 0
    line = 1
    for block in _blocks(data):
        nonblank = np.setdiff1d(np.arange(len(block.ends)), block.blank(), assume_unique=True)
        if seen + len(nonblank) >= row:
            return block.first_line + int(nonblank[row - seen - 1])
        seen += len(nonblank)
        line = block.first_line + len(block.ends)
    return line


class _Block:
    """A run of whole lines read from the file: ``buf[:end]``, lines from ``first_line``."""

    def __init__(self, buf: bytes, end: int, first_line: int) -> None:
        self.buf = buf
        self.end = end
        self.first_line = first_line
        self.bytes = np.frombuffer(buf, np.uint8, count=end)
        ends = np.flatnonzero(self.bytes == _NL)
        if not end or buf[end - 1] != _NL:  # the file's last line, without a newline
            ends = np.append(ends, end)
        self.ends = ends  # where each line's newline is
        self.starts = np.empty_like(ends)
        if len(ends):
            self.starts[0] = 0
            self.starts[1:] = ends[:-1] + 1

    def blank(self) -> np.ndarray:
        """Indexes of the lines pyarrow skips: empty, or a lone ``\\r`` (CRLF files)."""
        lengths = self.ends - self.starts
        empty = np.flatnonzero(lengths == 0)
        one = np.flatnonzero(lengths == 1)
        lone_cr = one[self.bytes[self.starts[one]] == _CR]
        return np.union1d(empty, lone_cr)


def _blocks(data: DataFile) -> Iterator[_Block]:
    """The file in runs of whole lines, each read straight from the file (no copying): the
    next read starts where the last whole line ended."""
    offset = 0
    line = 1
    while buf := data.pread(_CHUNK_BYTES, offset):
        at_eof = offset + len(buf) >= data.size
        end = len(buf) if at_eof else buf.rfind(b"\n") + 1
        if end == 0:  # a whole chunk without a newline
            raise DataError(data.path, None, _too_long(), line=line)
        block = _Block(buf, end, line)
        yield block
        offset += end
        line += len(block.ends)


def _too_long() -> str:
    return (
        f"a line longer than {MAX_LINE_BYTES // (1 << 20)} MiB: no field of a data file is "
        f"that long (a damaged file, or not a CSV file)"
    )


def _unbalanced() -> str:
    return (
        'an unbalanced double quote ("): a quoted value must close on the same line, and a '
        'quote inside one is written twice ("")'
    )
