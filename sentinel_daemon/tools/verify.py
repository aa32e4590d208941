"""``sentinel log verify``: read every record of every segment and say what is wrong.

Two passes: the scrub (:mod:`~sentinel_daemon.log.scrub`) lists every problem of bytes,
order and naming (damaged records, duplicates, gaps, stray, empty and misnamed segments);
the replay's own scan then says how start-up would take the first one (a torn tail it
cuts, corruption or a gap it stops at) and decodes every record into its event.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sentinel_daemon.core.events import decode
from sentinel_daemon.errors import EventDecodeError, LogCorrupt, LogGap, LogUnreadable
from sentinel_daemon.layout import EVENTS_DIR, SNAPSHOT_NAME
from sentinel_daemon.log.records import Record
from sentinel_daemon.log.scrub import Finding, scrub
from sentinel_daemon.log.segfiles import list_segments
from sentinel_daemon.log.segments import LogScan
from sentinel_daemon.log.snapshot import SnapshotInvalid, load_snapshot
from sentinel_daemon.log.store import snapshot_fit


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
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.problem is None and not self.findings

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "records": self.records,
            "last_seq": self.last_seq,
            "segments": [s.__dict__ for s in self.segments],
            "problem": self.problem,
            "findings": [f.as_dict() for f in self.findings],
            "snapshot": self.snapshot,
        }


def verify(state_dir: Path) -> VerifyReport:
    """Read and check every record (checksum, seq, event schema) and the snapshot."""
    events_dir = state_dir / EVENTS_DIR
    scrubbed = scrub(events_dir)
    findings = list(scrubbed.findings)
    try:
        segs = list_segments(events_dir)
    except LogUnreadable as exc:
        return VerifyReport([], 0, 0, _unreadable(exc), {"status": "not checked"}, findings)
    infos = {s: SegmentInfo(s, None, None, 0, _size(events_dir / s)) for s in segs}
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
    except LogUnreadable as exc:
        problem = _unreadable(exc)
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
    try:
        # Past damage the scan stops at, the scrub has read on: the snapshot is judged
        # against the whole log, not against where the first problem is.
        snapshot = _snapshot_status(state_dir, max(scan.last_seq, scrubbed.last_seq))
    except LogUnreadable as exc:
        snapshot = {"status": "not checked", "reason": str(exc)}
    return VerifyReport(list(infos.values()), count, scan.last_seq, problem, snapshot, findings)


def _unreadable(exc: LogUnreadable) -> dict[str, Any]:
    return {"kind": "unreadable", "segment": str(exc.path), "line": 0, "message": str(exc)}


def _size(path: os.PathLike[str]) -> int:
    try:
        return os.lstat(path).st_size
    except OSError:
        return 0


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
    _scan, problem = snapshot_fit(state_dir / EVENTS_DIR, snap)
    if problem is not None:
        return {
            "status": "does not fit the log",
            "seq": snap.seq,
            "reason": f"{problem}; the daemon will ignore it and replay the whole log",
        }
    return {"status": "ok", "seq": snap.seq}


def render(report: VerifyReport) -> tuple[list[str], list[str]]:
    """``sentinel log verify`` for people, as (stdout, stderr) lines: one line per segment,
    the snapshot and the verdict; then each finding, and how start-up would take the first."""
    out = []
    for s in report.segments:
        seqs = "no records" if s.first_seq is None else f"seq {s.first_seq}..{s.last_seq}"
        out.append(f"{s.name}  {seqs}  {s.records:,} records  {s.bytes:,} bytes")
    if not report.segments:
        out.append("no segments: the log is empty")
    out.append(f"snapshot: {_snapshot_text(report.snapshot)}")
    err = [f"DAMAGED: {f}" for f in report.findings]
    if report.problem is not None:
        err.append(f"{'START-UP: ' if report.findings else 'DAMAGED: '}{report.problem['message']}")
    if report.ok:
        out.append(f"ok: {report.records:,} records, last seq {report.last_seq}")
    elif any(f.mendable for f in report.findings):
        err.append("`sentinel log repair` mends the findings it names (after a backup)")
    return out, err


def _snapshot_text(snapshot: dict[str, Any]) -> str:
    status = snapshot.get("status", "?")
    if status == "none":
        return "none (start-up replays the whole log)"
    if status == "ok":
        return f"ok, at seq {snapshot['seq']}"
    if status == "invalid":
        return f"invalid: {snapshot.get('reason', '?')}; start-up ignores it and replays the log"
    at = f" (seq {snapshot['seq']})" if "seq" in snapshot else ""
    return f"{status}{at}: {snapshot.get('reason', '')}"
