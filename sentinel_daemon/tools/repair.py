"""``sentinel log repair``: cut a torn or corrupt tail after a backup, under the lock."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sentinel_daemon.core.events import encode
from sentinel_daemon.errors import LogCorrupt
from sentinel_daemon.layout import EVENTS_DIR
from sentinel_daemon.log.lock import StateLock
from sentinel_daemon.log.segments import (
    FileLog,
    LogScan,
    TornTail,
    cut_torn_tail,
    list_segments,
)
from sentinel_daemon.log.store import repaired_event


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
            reason = f"sentinel log repair: {torn.reason}"
            log_.append([encode(repaired_event(torn, backup, reason))])
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
