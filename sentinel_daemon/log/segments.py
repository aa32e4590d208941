"""The durable, append-only event log: segments of checksummed JSON lines in ``STATE/events/``.

Writing: one writer (the daemon holds the state-directory lock), batches of records
written with one ``write`` and acknowledged only after ``fdatasync`` (group commit). A
failed write is rolled back with ``ftruncate`` and reported; a failed fsync is fatal,
because after it the kernel may have dropped our dirty pages and nothing can be trusted
(PostgreSQL's "fsyncgate"). Segments rotate past a configured size; a new segment is
created with ``O_EXCL`` and its folder fsynced before any record goes into it.

Reading: :class:`LogScan` streams records in seq order, checking every checksum and
that seq grows by one across segments. A bad record followed by nothing intact is a torn
tail (an unacknowledged write cut by a crash): the scan reports it and
:meth:`FileLog.open` cuts it off after copying the segment aside. A bad record followed by
an intact one is corruption: the scan raises :class:`~sentinel_daemon.errors.LogCorrupt`
naming segment and line. An empty segment not named for the next record is a stray: the
scan skips and lists it, and the log never appends into it. Naming, listing and reading
segment files is :mod:`~sentinel_daemon.log.segfiles`'s.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from sentinel_daemon.errors import LogCorrupt, LogError, LogFsyncFailed, LogGap, LogUnreadable
from sentinel_daemon.fsutil import copy_file_durably, fsync_dir
from sentinel_daemon.layout import DAMAGED_DIR
from sentinel_daemon.log.records import (
    BadRecord,
    Position,
    Record,
    decode_line,
    encode_batch,
    format_ts,
)
from sentinel_daemon.log.segfiles import (
    FILE_MODE,
    check_chain,
    line_before,
    lines_before,
    list_segments,
    make_events_dir,
    read_segment,
    segment_name,
    segment_size,
)

__all__ = [
    "FileLog",
    "LogScan",
    "LogWriteFailed",
    "TornTail",
    "cut_torn_tail",
    "list_segments",
    "segment_name",
]

_CRC_KEY = b',"crc":"'
_SUFFIX_LEN = len(_CRC_KEY) + 8 + 2
_crc32 = zlib.crc32
_loads = orjson.loads


class LogWriteFailed(LogError):
    """A write did not complete (disk full, I/O error); it was rolled back, nothing acked."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(
            f"appending to {path} failed ({reason}); the partial write was rolled back and "
            f"no record was acknowledged. Free space or fix the disk; the daemon retries."
        )


@dataclass(frozen=True)
class TornTail:
    """Bytes at the end of the log that do not form whole records."""

    segment: str
    offset: int
    line: int
    bytes_cut: int
    later_segments: tuple[str, ...]
    reason: str


@dataclass
class LogScan:
    """Stream the records of a log from ``start`` (or its beginning), checking each.

    Iterate it once. Afterwards ``last_seq``, ``end`` and ``torn`` describe where the
    intact log ends. ``expect_seq`` is the seq the first record read must carry.
    """

    events_dir: Path
    start: Position | None = None
    expect_seq: int = 1
    last_seq: int = 0
    end: Position | None = None
    torn: TornTail | None = None
    segments: list[str] = field(default_factory=list)
    #: The segment being read (for readers that report per segment).
    current: str | None = None
    #: The timestamp of the last intact record read ("" before any).
    last_ts: str = ""
    #: The checksum (8 hex digits) of the record just before ``start``, when the snapshot
    #: that gave ``start`` recorded it: :meth:`fits_start` then also checks the record's
    #: bytes, not only its seq.
    start_crc: str | None = None
    #: Empty segments not named for the record that would come next (a ``touch``, a copy
    #: gone wrong): skipped, never appended to, and reported (``sentinel log repair``
    #: removes them).
    strays: list[str] = field(default_factory=list)
    #: ``(segment, line, seq)`` of byte-identical copies of the record before them: read
    #: past, and reported.
    duplicates: list[tuple[str, int, int]] = field(default_factory=list)

    def __iter__(self) -> Iterator[Record]:
        self.segments = segs = list_segments(self.events_dir)
        self.strays = []
        self.duplicates = []
        self.last_seq = self.expect_seq - 1
        first = 0
        offset = 0
        if self.start is not None:
            if self.start.segment not in segs:
                raise LogGap(self.events_dir / self.start.segment, 0, self.expect_seq, -1)
            first = segs.index(self.start.segment)
            offset = self.start.offset
            self.strays += check_chain(self.events_dir, segs[: first + 1])
        expect = self.expect_seq
        for i in range(first, len(segs)):
            self.current = seg = segs[i]
            path = self.events_dir / seg
            data = read_segment(path, offset)
            line_no = 0  # counted from ``offset``; made absolute only for an error message
            if offset == 0 and not data and int(seg[:20]) != expect:
                self.strays.append(seg)  # appending into it would misname our records
                continue
            if offset == 0 and data and int(seg[:20]) != expect:
                self.last_seq = expect - 1
                raise LogGap(path, 1, expect, int(seg[:20]))
            n = len(data)
            lines = data.split(b"\n")
            partial = lines.pop()  # bytes after the last newline: a write cut short
            # The hot loop of start-up: checks and decoding inlined (decode_line is the
            # same logic, for readers), bookkeeping for error messages computed on error.
            for k, line in enumerate(lines):
                if (
                    line[-_SUFFIX_LEN:-10] != _CRC_KEY
                    or line[-2:] != b'"}'
                    or b"%08x" % _crc32(line[:-_SUFFIX_LEN]) != line[-10:-2]
                ):
                    record = None
                else:
                    try:
                        obj = _loads(line)
                        seq = obj.pop("seq")
                        ts = obj.pop("ts")
                        del obj["crc"]
                        record = Record(seq, ts, obj) if seq == expect else None
                    except (ValueError, KeyError, AttributeError, TypeError):
                        record = None
                if record is None:
                    if self._duplicate(seg, offset, lines, k):
                        continue
                    self.last_seq = expect - 1
                    pos = sum(len(x) + 1 for x in lines[:k])
                    self._line_error(segs, i, data, pos, offset, k + 1, line, expect)
                    return
                expect += 1
                self.last_ts = ts
                yield record
            if partial:
                self.last_seq = expect - 1
                why = "no newline at the end: a write cut short"
                line_no = len(lines) + 1 + lines_before(path, offset)
                self._bad_record(segs, i, data, n - len(partial), offset, line_no, why)
                return
            self.last_seq = expect - 1
            self.end = Position(seg, offset + n)
            offset = 0
        self.last_seq = expect - 1

    def _duplicate(self, seg: str, offset: int, lines: list[bytes], k: int) -> bool:
        """Whether line ``k`` is a byte-identical copy of the record just read (and note it).

        Such a line holds nothing new (same seq, same checksum, same batch): replay reads
        past it, the scrub reports it, ``sentinel log repair`` takes it out.
        """
        if k:
            previous: bytes | None = lines[k - 1]
        else:
            previous = line_before(self.events_dir, Position(seg, offset)) if offset else None
        if previous is None or lines[k] != previous:
            return False
        line_no = k + 1 + lines_before(self.events_dir / seg, offset)
        self.duplicates.append((seg, line_no, decode_line(previous).seq))
        return True

    def _line_error(
        self,
        segs: list[str],
        i: int,
        data: bytes,
        pos: int,
        base: int,
        k: int,
        line: bytes,
        expect: int,
    ) -> None:
        """Classify line ``k`` (from ``base``) of segment ``i``: bad record, or out of order."""
        path = self.events_dir / segs[i]
        line_no = k + lines_before(path, base)
        try:
            record = decode_line(line)
        except BadRecord as exc:
            self._bad_record(segs, i, data, pos, base, line_no, str(exc))
            return
        raise LogGap(path, line_no, expect, record.seq)

    @property
    def records_read(self) -> int:
        """How many intact records the scan has yielded so far."""
        return self.last_seq - (self.expect_seq - 1)

    def fits_start(self) -> bool:
        """Whether ``start`` is just past the record ``expect_seq - 1`` (checked cheaply).

        A snapshot restored from elsewhere, or a log restored from an older backup, points
        at a place where that record is not: then the snapshot must not be used. Another
        state directory's log can have a record of the same seq ending at the same offset
        (the same jobs run elsewhere); ``start_crc`` tells that record from ours.
        """
        if self.start is None:
            return True
        if self.start.offset == 0:
            return (self.events_dir / self.start.segment).exists() and int(
                self.start.segment[:20]
            ) == self.expect_seq
        line = line_before(self.events_dir, self.start)
        if line is None:
            return False
        try:
            seq = decode_line(line).seq
        except BadRecord:
            return False
        crc = line[-10:-2].decode("ascii")
        return seq == self.expect_seq - 1 and self.start_crc in (None, crc)

    def _bad_record(
        self, segs: list[str], i: int, data: bytes, pos: int, base: int, line: int, why: str
    ) -> None:
        """Decide whether a bad record is a torn tail or corruption.

        A batch is written with one ``write`` and acknowledged after one ``fdatasync``; the
        next batch is written only after that. So a power cut can damage only the last
        batch, in any of its sectors (disks persist the sectors of one write in any
        order). Hence: a bad record followed by nothing intact, or only by intact records
        of the same last batch (same ``ts``: the writer gives each batch its own, strictly
        increasing timestamp), is a torn tail; anything else is corruption.
        """
        seg = segs[i]
        nl = data.find(b"\n", pos)
        later_ts: set[str] = set()
        first_intact = 0
        if nl >= 0:
            for k, candidate in enumerate(data[nl + 1 :].split(b"\n")):
                if (ts := _intact_ts(candidate)) is not None:
                    later_ts.add(ts)
                    first_intact = first_intact or line + k + 1
        for other in segs[i + 1 :]:
            for k, candidate in enumerate(read_segment(self.events_dir / other).split(b"\n")):
                if _intact_ts(candidate) is not None:
                    raise LogCorrupt(
                        self.events_dir / seg, line, f"{why}; {other} line {k + 1} is intact"
                    )
        if later_ts and (len(later_ts) > 1 or min(later_ts) < self.last_ts):
            raise LogCorrupt(
                self.events_dir / seg,
                line,
                f"{why}; line {first_intact} is intact and was committed after this record",
            )
        later = tuple(segs[i + 1 :])
        cut = len(data) - pos + sum(segment_size(self.events_dir / s) for s in later)
        reason = why if not later_ts else f"{why} (inside the last batch, lines after it cut too)"
        self.torn = TornTail(seg, base + pos, line, cut, later, reason)
        self.end = Position(seg, base + pos)


def _intact_ts(line: bytes) -> str | None:
    try:
        return decode_line(line).ts
    except BadRecord:
        return None


def cut_torn_tail(events_dir: Path, torn: TornTail, now: datetime) -> str:
    """Copy the damaged segment(s) aside, then cut the log back to its last whole record.

    Returns the backup path relative to ``events_dir``. Idempotent: after a crash halfway
    the next start-up finds the same (or a smaller) torn tail and cuts it again.
    """
    damaged = events_dir / DAMAGED_DIR
    damaged.mkdir(mode=0o750, exist_ok=True)
    stamp = now.astimezone(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    backup = damaged / f"{torn.segment}.{stamp}"
    copy_file_durably(events_dir / torn.segment, backup)
    for other in torn.later_segments:
        copy_file_durably(events_dir / other, damaged / f"{other}.{stamp}")
    fsync_dir(damaged)
    fd = os.open(events_dir / torn.segment, os.O_WRONLY)
    try:
        os.ftruncate(fd, torn.offset)
        os.fsync(fd)
    finally:
        os.close(fd)
    for other in torn.later_segments:
        os.unlink(events_dir / other)
    fsync_dir(events_dir)
    return str(backup.relative_to(events_dir))


def _utcnow() -> datetime:
    return datetime.now(UTC)


class FileLog:
    """The single writer of a segmented log. Open it with :meth:`open` after a scan.

    Its seam is two methods, like Optuna's journal backend: :meth:`append` a batch and
    :meth:`read` from a seq (with :attr:`position` and :meth:`last_crc`, what a store needs:
    :class:`~sentinel_daemon.log.store.EventLog`). :class:`~sentinel_daemon.log.memory.MemoryLog`
    is its in-memory twin with the same semantics, and one contract suite runs against both.
    """

    def __init__(
        self,
        events_dir: Path,
        segment: str,
        size: int,
        last_seq: int,
        *,
        segment_bytes: int,
        clock: Callable[[], datetime] = _utcnow,
        sync: Callable[[int], None] = os.fdatasync,
        write: Callable[[int, memoryview], int] = os.write,
        last_ts: str = "",
    ) -> None:
        self.events_dir = events_dir
        self._write = write
        self._last_ts = last_ts
        self.segment_bytes = segment_bytes
        self._clock = clock
        self._sync = sync
        self._segment = segment
        self._size = size
        self.last_seq = last_seq
        self._failed: LogFsyncFailed | None = None
        self._path = events_dir / segment
        self._fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)

    @classmethod
    def open(
        cls,
        events_dir: Path,
        scan: LogScan,
        *,
        segment_bytes: int,
        clock: Callable[[], datetime] = _utcnow,
        sync: Callable[[int], None] = os.fdatasync,
        write: Callable[[int, memoryview], int] = os.write,
    ) -> tuple[FileLog, TornTail | None, str | None]:
        """Open for appending where ``scan`` (already iterated) found the intact end.

        Cuts a torn tail first. Returns the log, the tail that was cut, and its backup.
        """
        make_events_dir(events_dir)
        backup = None
        if scan.torn is not None:
            backup = cut_torn_tail(events_dir, scan.torn, clock())
        if scan.end is not None:
            segment, size = scan.end.segment, scan.end.offset
        else:
            segment, size = segment_name(scan.last_seq + 1), 0
            if not (events_dir / segment).exists():
                _create_segment(events_dir, segment)
        log = cls(
            events_dir,
            segment,
            size,
            scan.last_seq,
            segment_bytes=segment_bytes,
            clock=clock,
            sync=sync,
            write=write,
            last_ts=scan.last_ts,
        )
        return log, scan.torn, backup

    @property
    def position(self) -> Position:
        """Where the next record will go: the end of the last acknowledged one."""
        return Position(self._segment, self._size)

    def last_crc(self) -> str | None:
        """The checksum of the record that ends at :attr:`position` (read back from disk)."""
        line = line_before(self.events_dir, self.position)
        return None if line is None else line[-10:-2].decode("ascii")

    def append(self, payloads: Sequence[dict[str, Any]]) -> list[Record]:
        """Write a batch of records with one write and one fdatasync, then acknowledge them."""
        if self._failed is not None:
            raise self._failed
        if not payloads:
            return []
        if self._size >= self.segment_bytes:
            self._rotate()
        ts = self._batch_ts()
        first = self.last_seq + 1
        data = encode_batch(first, ts, list(payloads))
        try:
            written = self._write(self._fd, data)  # type: ignore[arg-type]
            if written != len(data):  # a short write: finish it, or fail and roll back
                view = memoryview(data)[written:]
                while view:
                    view = view[self._write(self._fd, view) :]
        except OSError as exc:
            self._roll_back(exc)
        try:
            self._sync(self._fd)
        except OSError as exc:
            self._failed = LogFsyncFailed(self._path, exc.errno, exc.strerror or str(exc))
            raise self._failed from exc
        self._size += len(data)
        self.last_seq = first + len(payloads) - 1
        self._last_ts = ts
        return [Record(first + i, ts, p) for i, p in enumerate(payloads)]

    def _batch_ts(self) -> str:
        """A timestamp later than the previous batch's, even if the clock stepped back.

        Distinct timestamps tell batches apart when a torn tail is classified.
        """
        ts = format_ts(self._clock())
        if ts <= self._last_ts:  # text order is time order: the width is fixed
            previous = datetime.strptime(self._last_ts, "%Y-%m-%dT%H:%M:%S.%fZ")
            ts = format_ts(previous.replace(tzinfo=UTC) + timedelta(microseconds=1))
        return ts

    def read(self, after_seq: int = 0) -> Iterator[Record]:
        """Every acknowledged record with seq above ``after_seq``, in order."""
        for record in LogScan(self.events_dir):
            if record.seq > self.last_seq:
                return
            if record.seq > after_seq:
                yield record

    def _roll_back(self, exc: OSError) -> None:
        try:
            os.ftruncate(self._fd, self._size)
        except OSError as exc2:
            # We cannot restore the file's end: a later append would follow garbage.
            self._failed = LogFsyncFailed(self._path, exc2.errno, f"rollback after {exc} failed")
            raise self._failed from exc2
        raise LogWriteFailed(self._path, exc.strerror or str(exc)) from exc

    def _rotate(self) -> None:
        name = segment_name(self.last_seq + 1)
        _create_segment(self.events_dir, name)
        os.close(self._fd)
        self._path = self.events_dir / name
        self._fd = os.open(self._path, os.O_WRONLY | os.O_APPEND)
        self._segment = name
        self._size = 0

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _create_segment(events_dir: Path, name: str) -> None:
    path = events_dir / name
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        # A stray empty segment of this very name (skipped by the scan until the log
        # reached it) is exactly the new segment; anything else must not be written into.
        if segment_size(path) == 0:
            return
        raise LogUnreadable(
            path,
            "already exists and holds records, where the log's next segment must begin",
            "Stop the daemon and run `sentinel log verify`; move this file out of events/ "
            "if it does not belong to this log",
        ) from None
    os.close(fd)
    fsync_dir(events_dir)
