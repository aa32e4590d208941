"""Operator tools over the event log: tail (with follow across rotation), verify, repair.

Readers never take the state-directory lock, so they work while the daemon runs; only
``repair`` takes it, because it rewrites the log.
"""

from __future__ import annotations

import fnmatch
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from sentinel_daemon.errors import EventDecodeError, LogCorrupt, LogGap
from sentinel_daemon.eventlog import FileLog, LogScan, TornTail, cut_torn_tail, list_segments
from sentinel_daemon.events import LogRepaired, decode, encode
from sentinel_daemon.lock import StateLock
from sentinel_daemon.records import BadRecord, Record, decode_line
from sentinel_daemon.snapshot import SnapshotInvalid, load_snapshot
from sentinel_daemon.store import EVENTS_DIR, SNAPSHOT_NAME

# ---- tail ----------------------------------------------------------------------------


@dataclass(frozen=True)
class RecordFilter:
    """Which records to show: ``types`` are shell-style patterns (``trial.*``)."""

    types: tuple[str, ...] = ()
    job: str | None = None

    def __call__(self, record: Record) -> bool:
        if self.types and not any(
            fnmatch.fnmatchcase(str(record.payload.get("type")), t) for t in self.types
        ):
            return False
        return self.job is None or record.payload.get("job_id") == self.job


def raw_line(record: Record) -> str:
    """The record as one flat JSON object, as ``jq`` sees it in the file (crc left out)."""
    return orjson.dumps({"seq": record.seq, "ts": record.ts, **record.payload}).decode()


#: Longer nested values (a job's spec, a trial's params) are cut in the human format;
#: ``--json`` prints every byte.
MAX_VALUE_CHARS = 100


def human_line(record: Record) -> str:
    """``ts  #seq  type  key=value ...``: one line a record, for people."""
    fields = []
    for key, value in record.payload.items():
        if key in ("type", "v"):
            continue
        text = value if isinstance(value, str) else orjson.dumps(value).decode()
        if len(text) > MAX_VALUE_CHARS and isinstance(value, dict | list):
            text = text[: MAX_VALUE_CHARS - 3] + "..."
        fields.append(f"{key}={text}")
    return f"{record.ts}  #{record.seq:<6} {record.payload.get('type', '?'):<16} {' '.join(fields)}"


def _segment_records(path: Path) -> list[Record]:
    out = []
    for line in path.read_bytes().split(b"\n"):
        try:
            record = decode_line(line)
        except BadRecord:
            continue  # tail shows what is intact; `log verify` reports damage
        out.append(record)
    return out


def last_records(events_dir: Path, n: int | None, keep: RecordFilter) -> list[Record]:
    """The last ``n`` matching records (all of them when ``n`` is None), oldest first."""
    picked: list[Record] = []
    for seg in reversed(list_segments(events_dir)):
        matching = [r for r in _segment_records(events_dir / seg) if keep(r)]
        picked = matching + picked
        if n is not None and len(picked) >= n:
            return picked[-n:] if n else []
    return picked


@dataclass
class Follower:
    """Yield records appended after a position, moving to newer segments like ``tail -F``."""

    events_dir: Path
    segment: str | None = None
    offset: int = 0
    after_seq: int = 0
    _buffer: bytes = field(default=b"", repr=False)

    @classmethod
    def at_end(cls, events_dir: Path) -> Follower:
        segs = list_segments(events_dir)
        if not segs:
            return cls(events_dir)
        size = (events_dir / segs[-1]).stat().st_size
        return cls(events_dir, segs[-1], size)

    def poll(self) -> list[Record]:
        """Records that became complete since the last poll (possibly none)."""
        out: list[Record] = []
        while True:
            segs = list_segments(self.events_dir)
            if self.segment is None:
                if not segs:
                    return out
                self.segment, self.offset, self._buffer = segs[0], 0, b""
            path = self.events_dir / self.segment
            try:
                with open(path, "rb") as fh:
                    size = os.fstat(fh.fileno()).st_size
                    if size < self.offset:  # cut by a repair: carry on from its new end
                        self.offset, self._buffer = size, b""
                    fh.seek(self.offset)
                    chunk = fh.read()
            except FileNotFoundError:
                chunk = b""
            self.offset += len(chunk)
            data = self._buffer + chunk
            lines = data.split(b"\n")
            self._buffer = lines.pop()  # an incomplete last line waits for its newline
            for line in lines:
                try:
                    record = decode_line(line)
                except BadRecord:
                    continue
                if record.seq > self.after_seq:
                    self.after_seq = record.seq
                    out.append(record)
            newer = [s for s in segs if s > self.segment]
            if not newer or self._buffer:
                return out
            self.segment, self.offset, self._buffer = newer[0], 0, b""


def follow(
    events_dir: Path,
    start: Follower,
    stop: Callable[[], bool] = lambda: False,
    interval: float = 0.2,
) -> Iterator[Record]:
    """Yield new records as they are appended, until ``stop()`` says so."""
    while not stop():
        batch = start.poll()
        yield from batch
        if not batch:
            time.sleep(interval)


# ---- verify ---------------------------------------------------------------------------


@dataclass
class SegmentInfo:
    name: str
    first_seq: int | None
    last_seq: int | None
    records: int
    bytes: int


@dataclass
class VerifyReport:
    """What ``sentinel log verify`` found: every segment, and the first problem if any."""

    segments: list[SegmentInfo]
    records: int
    last_seq: int
    problem: dict[str, Any] | None
    snapshot: dict[str, Any]

    @property
    def ok(self) -> bool:
        return self.problem is None

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "records": self.records,
            "last_seq": self.last_seq,
            "segments": [s.__dict__ for s in self.segments],
            "problem": self.problem,
            "snapshot": self.snapshot,
        }


def verify(state_dir: Path) -> VerifyReport:
    """Read and check every record (checksum, seq, event schema) and the snapshot."""
    events_dir = state_dir / EVENTS_DIR
    segs = list_segments(events_dir)
    infos = {s: SegmentInfo(s, None, None, 0, (events_dir / s).stat().st_size) for s in segs}
    scan = LogScan(events_dir)
    problem: dict[str, Any] | None = None
    count = 0
    record: Record | None = None
    try:
        for record in scan:
            info = infos[scan.current or ""]
            info.first_seq = record.seq if info.first_seq is None else info.first_seq
            info.last_seq = record.seq
            info.records += 1
            decode(record.payload)
            count += 1
    except (LogCorrupt, LogGap) as exc:
        problem = {
            "kind": "corrupt" if isinstance(exc, LogCorrupt) else "gap",
            "segment": str(exc.segment),
            "line": exc.line,
            "message": str(exc),
        }
    except ValueError as exc:
        assert record is not None
        err = EventDecodeError(record.seq, str(record.payload.get("type")), str(exc))
        problem = {
            "kind": "schema",
            "segment": str(events_dir / (scan.current or "")),
            "seq": record.seq,
            "message": str(err),
        }
    if problem is None and scan.torn is not None:
        t = scan.torn
        problem = {
            "kind": "torn",
            "segment": str(events_dir / t.segment),
            "line": t.line,
            "offset": t.offset,
            "bytes": t.bytes_cut,
            "message": (
                f"torn tail at {events_dir / t.segment} line {t.line} (offset {t.offset}, "
                f"{t.bytes_cut} bytes): {t.reason}. If the daemon is running this can be a "
                f"write in progress; otherwise the daemon cuts it at start-up, or run "
                f"`sentinel log repair`."
            ),
        }
    return VerifyReport(
        list(infos.values()),
        count,
        scan.last_seq,
        problem,
        _snapshot_status(state_dir, scan.last_seq),
    )


def _snapshot_status(state_dir: Path, last_seq: int) -> dict[str, Any]:
    try:
        snap = load_snapshot(state_dir / SNAPSHOT_NAME)
    except SnapshotInvalid as exc:
        return {"status": "invalid", "reason": exc.reason}
    if snap is None:
        return {"status": "none"}
    if snap.seq > last_seq:
        return {
            "status": "ahead of the log",
            "seq": snap.seq,
            "reason": "the daemon will ignore it and replay the whole log",
        }
    scan = LogScan(
        state_dir / EVENTS_DIR,
        start=snap.position,
        expect_seq=snap.seq + 1,
        start_crc=snap.last_crc,
    )
    if not scan.fits_start():
        return {
            "status": "does not fit the log",
            "seq": snap.seq,
            "reason": "its record is not this log's (from another state directory, or the log "
            "was restored from a backup); the daemon will ignore it and replay the whole log",
        }
    return {"status": "ok", "seq": snap.seq}


# ---- repair ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RepairResult:
    action: str
    detail: dict[str, Any]


def repair(
    state_dir: Path, *, truncate_corrupt: bool = False, segment_bytes: int = 64 << 20
) -> RepairResult:
    """Cut a torn tail (or, when asked, everything from a corrupt record on) after a backup.

    Takes the state-directory lock, so it refuses to run beside a daemon. Records what it
    did as a ``log.repaired`` event.
    """
    events_dir = state_dir / EVENTS_DIR
    lock = StateLock.acquire(state_dir)
    try:
        scan = LogScan(events_dir)
        try:
            for _ in scan:
                pass
        except LogCorrupt as exc:
            if not truncate_corrupt:
                raise
            scan.torn = _torn_from_corrupt(events_dir, exc)
            scan.end = None
        if scan.torn is None:
            return RepairResult("none", {"last_seq": scan.last_seq})
        torn = scan.torn
        backup = cut_torn_tail(events_dir, torn, datetime.now(UTC))
        scan.torn = None
        rescan = LogScan(events_dir)
        for _ in rescan:
            pass
        log_, _, _ = FileLog.open(events_dir, rescan, segment_bytes=segment_bytes)
        try:
            log_.append(
                [
                    encode(
                        LogRepaired(
                            segment=torn.segment,
                            offset=torn.offset,
                            bytes_cut=torn.bytes_cut,
                            backup=f"{EVENTS_DIR}/{backup}",
                            reason=f"sentinel log repair: {torn.reason}",
                        )
                    )
                ]
            )
        finally:
            log_.close()
        return RepairResult(
            "cut",
            {
                "segment": torn.segment,
                "offset": torn.offset,
                "bytes_cut": torn.bytes_cut,
                "later_segments_removed": list(torn.later_segments),
                "backup": str(events_dir / backup),
                "last_seq": rescan.last_seq + 1,
            },
        )
    finally:
        lock.release()


def _torn_from_corrupt(events_dir: Path, exc: LogCorrupt) -> TornTail:
    """Treat everything from the corrupt record on as a tail to cut."""
    seg = exc.segment.name
    data = (events_dir / seg).read_bytes()
    offset = 0
    for _ in range(exc.line - 1):
        offset = data.index(b"\n", offset) + 1
    later = tuple(s for s in list_segments(events_dir) if s > seg)
    cut = len(data) - offset + sum((events_dir / s).stat().st_size for s in later)
    return TornTail(seg, offset, exc.line, cut, later, f"corrupt record: {exc.reason}")
