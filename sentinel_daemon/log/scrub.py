"""The scrub: every record's checksum and the seq chain of the whole log, and stray files.

Start-up replays only the tail after the snapshot, so damage in the records a snapshot
covers (a flipped byte, a duplicated line) would go unseen until the snapshot went away,
and then the daemon would refuse to start. The scrub reads those records too and reports
what it finds as data (:class:`Finding`: segment, line, what), without stopping at the
first: the daemon runs on from its snapshot, and says so.

It checks bytes and order only (no JSON parse, no event decoding), which makes it about
twice as fast as replay (``python bench/eventlog.py``, row "scrub"). It reads files and
never writes; reading up to a position of the past, it can run in a thread beside an
appending store, whose appends only ever add bytes after that position.
"""

from __future__ import annotations

import os
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from sentinel_daemon.errors import LogUnreadable
from sentinel_daemon.layout import DAMAGED_DIR
from sentinel_daemon.log.records import Position
from sentinel_daemon.log.segfiles import (
    SEGMENT_RE,
    events_dir_unreadable,
    read_segment,
    segment_name,
    segment_size,
)

FindingKind = Literal[
    "corrupt", "duplicate", "gap", "misnamed", "empty", "stray", "unreadable", "torn"
]
_CRC_KEY = b',"crc":"'
_SUFFIX_LEN = len(_CRC_KEY) + 8 + 2
_SEQ_KEY = b'{"seq":'


@dataclass(frozen=True)
class Finding:
    """One problem: where (segment name, 1-based line; 0 for the whole file) and what.

    ``mendable`` says whether ``sentinel log repair`` can mend it without losing a record
    (a duplicate line, a stray empty segment); anything else needs a backup.
    """

    segment: str
    line: int
    kind: FindingKind
    what: str
    seq: int | None = None

    @property
    def mendable(self) -> bool:
        return self.kind in ("duplicate", "empty")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"mendable": self.mendable}

    def __str__(self) -> str:
        where = f"events/{self.segment}" if self.segment else "events/"
        return f"{where}{f' line {self.line}' if self.line else ''}: {self.what}"


@dataclass(frozen=True)
class ScrubReport:
    """What a scrub read and found; ``until`` is where it stopped (None: the whole log)."""

    findings: tuple[Finding, ...]
    records: int
    last_seq: int
    bytes: int
    seconds: float
    until: Position | None = None

    @property
    def ok(self) -> bool:
        return not self.findings

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "records": self.records,
            "last_seq": self.last_seq,
            "bytes": self.bytes,
            "seconds": round(self.seconds, 3),
            "until": None if self.until is None else asdict(self.until),
            "findings": [f.as_dict() for f in self.findings],
        }


def scrub(events_dir: Path, until: Position | None = None) -> ScrubReport:
    """Check every record of ``events_dir`` up to ``until`` (default: all of it).

    Never raises for damage: each problem is a :class:`Finding`, and the scrub goes on.
    """
    t0 = time.monotonic()
    checker = _Checker()
    try:
        names = sorted(os.listdir(events_dir))
    except FileNotFoundError:
        names = []
    except OSError as exc:
        err = events_dir_unreadable(events_dir, exc)
        checker.add("", 0, "unreadable", f"{err.reason}. {err.remedy}")
        names = []
    segs = [n for n in names if SEGMENT_RE.match(n)]
    for name in names:
        if not SEGMENT_RE.match(name) and name != DAMAGED_DIR:
            checker.add(
                name,
                0,
                "stray",
                "not a segment (segments are named by their first seq, 20 digits, .jsonl); "
                "the daemon ignores it: move it out of events/",
            )
    if until is not None:
        segs = [s for s in segs if s <= until.segment]
    for i, seg in enumerate(segs):
        last = i == len(segs) - 1
        limit = until.offset if until is not None and seg == until.segment else None
        try:
            checker.segment(events_dir / seg, seg, limit, last and until is None)
        except LogUnreadable as exc:
            checker.add(seg, 0, "unreadable", f"{exc.reason}. {exc.remedy}")
            checker.resync = True  # the seqs it held are unknown: take up the next segment's
    return ScrubReport(
        tuple(checker.findings),
        checker.records,
        checker.expect - 1,
        checker.bytes,
        time.monotonic() - t0,
        until,
    )


class _Checker:
    """The state of one scrub across segments: the seq expected next, and the findings."""

    def __init__(self) -> None:
        self.findings: list[Finding] = []
        self.expect = 1
        self.records = 0
        self.bytes = 0
        self.previous = b""  # the line before the one looked at: to spot a duplicate
        self.pending_bad = 0  # damaged lines since the last intact one: each may be a seq
        self.resync = False  # after a segment that could not be read

    def add(
        self, seg: str, line: int, kind: FindingKind, what: str, seq: int | None = None
    ) -> None:
        self.findings.append(Finding(seg, line, kind, what, seq))

    def segment(self, path: Path, seg: str, limit: int | None, newest: bool) -> None:
        named = int(seg[:20])
        if self.resync:
            self.expect, self.previous, self.resync = named, b"", False
        if segment_size(path) == 0:
            if not (newest and named == self.expect):  # a new segment awaits its first record
                self.add(
                    seg,
                    0,
                    "empty",
                    f"an empty segment where none belongs (the next record is seq "
                    f"{self.expect}); `sentinel log repair` removes it",
                )
            return
        data = read_segment(path, 0, limit)
        self.bytes += len(data)
        lines = data.split(b"\n")
        partial = lines.pop()
        if lines and (seq := _intact_seq(lines[0])) is not None and seq != named:
            self.add(
                seg,
                0,
                "misnamed",
                f"named for seq {named} but its first record is seq {seq}: rename it to "
                f"{segment_name(seq)} if the seq chain is otherwise whole, else restore it "
                f"from a backup",
                seq,
            )
        crc32 = zlib.crc32
        expect = self.expect
        records = 0
        # The hot loop: an intact record in order costs a checksum and a compare; anything
        # else is classified by _odd_line.
        for k, line in enumerate(lines, start=1):
            if (
                line.endswith(b'"}')
                and line[-_SUFFIX_LEN:-10] == _CRC_KEY
                and b"%08x" % crc32(line[:-_SUFFIX_LEN]) == line[-10:-2]
                and line[7 : line.find(b",", 7)] == b"%d" % expect
                and line.startswith(_SEQ_KEY)
            ):
                expect += 1
                records += 1
            else:
                self.expect = expect
                self.previous = lines[k - 2] if k > 1 else self.previous
                if self._odd_line(seg, k, line):
                    records += 1
                expect = self.expect
        self.records += records
        self.expect = expect
        if lines:
            self.previous = lines[-1]
        if partial:
            kind: FindingKind = "torn" if newest else "corrupt"
            tail = "start-up cuts it" if newest else "a segment that is not the last one"
            self.add(seg, len(lines) + 1, kind, f"no newline at the end: {tail}")
        self.expect += self.pending_bad
        self.pending_bad = 0

    def _odd_line(self, seg: str, k: int, line: bytes) -> bool:
        """Classify a line that is not the next record; True if it is an intact record."""
        seq = _intact_seq(line)
        expect = self.expect
        if seq is None:
            self.add(seg, k, "corrupt", _damage(line, expect + self.pending_bad))
            self.pending_bad += 1
            return False
        if self.pending_bad and seq == expect + self.pending_bad:
            pass  # the damaged lines before it stood for the seqs it skips
        elif line == self.previous:
            self.add(
                seg,
                k,
                "duplicate",
                f"a second copy of line {k - 1} (seq {seq}); `sentinel log repair` removes it",
                seq,
            )
            return False
        elif seq < expect:
            self.add(seg, k, "gap", f"seq {seq} out of order: expected {expect}", seq)
        else:
            self.add(
                seg,
                k,
                "gap",
                f"seq jumps from {expect - 1} to {seq}: records {expect}..{seq - 1} are missing; "
                f"restore the segment that held them from a backup",
                seq,
            )
        self.expect = seq + 1
        self.pending_bad = 0
        return True


def _intact_seq(line: bytes) -> int | None:
    """The seq of an intact record line, or None if the line is not one."""
    if (
        not line.endswith(b'"}')
        or line[-_SUFFIX_LEN:-10] != _CRC_KEY
        or b"%08x" % zlib.crc32(line[:-_SUFFIX_LEN]) != line[-10:-2]
        or not line.startswith(_SEQ_KEY)
    ):
        return None
    try:
        return int(line[7 : line.index(b",", 7)])
    except ValueError:
        return None


def _damage(line: bytes, seq: int) -> str:
    what = "checksum mismatch" if line.endswith(b'"}') else "not a whole record"
    if not line.strip(b"\x00"):
        what = "zeroed bytes"
    return (
        f"{what} (about seq {seq}); restore this segment from a backup that holds the record, "
        f"or `sentinel log repair --truncate-corrupt` cuts the log here (every later record lost)"
    )
