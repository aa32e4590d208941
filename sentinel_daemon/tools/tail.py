"""``sentinel tail [-f]``: the last records of the event log, following it across rotation.

Like every reader it never takes the state-directory lock, so it works while the daemon
runs; only ``sentinel log repair`` (:mod:`~sentinel_daemon.tools.repair`) takes it,
because it rewrites the log. ``sentinel log verify`` is :mod:`~sentinel_daemon.tools.verify`.
"""

from __future__ import annotations

import fnmatch
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from sentinel_daemon.log.records import BadRecord, Record, decode_line
from sentinel_daemon.log.segfiles import list_segments
from sentinel_daemon.printable import printable


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
    """``ts  #seq  type  key=value ...``: one line a record, for people.

    Values come from outside (file names, job names, data errors): control characters in
    them are escaped visibly (:func:`~sentinel_daemon.printable.printable`), so a record
    is one line and cannot drive the terminal. ``--json`` prints the record as it is.
    """
    fields = []
    for key, value in record.payload.items():
        if key in ("type", "v"):
            continue
        text = value if isinstance(value, str) else orjson.dumps(value).decode()
        if len(text) > MAX_VALUE_CHARS and isinstance(value, dict | list):
            text = text[: MAX_VALUE_CHARS - 3] + "..."
        fields.append(f"{printable(key)}={printable(text)}")
    kind = printable(record.payload.get("type", "?"))
    return f"{printable(record.ts)}  #{record.seq:<6} {kind:<16} {' '.join(fields)}"


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


# ---- repair ---------------------------------------------------------------------------
