"""``sentinel log repair``: mend what can be mended, cut a torn tail, say what to restore.

Under the state-directory lock (so never beside a daemon), and after a copy into
``events/damaged/`` of everything it changes, it:

1. mends what loses no record: a duplicated line (a second, byte-identical copy of the
   record before it) is taken out, moving the snapshot's position back over it; a stray
   empty segment is set aside;
2. cuts a torn tail, or with ``--truncate-corrupt`` everything from a corrupt record on;
3. scrubs the log again and, for anything left (a damaged record, missing records, a
   misnamed segment), says exactly which segment to restore from a backup, and which
   seqs that copy must hold.

What it did is recorded as ``log.repaired`` events once the log is whole again.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sentinel_daemon.core.events import LogRepaired, encode
from sentinel_daemon.errors import LogCorrupt, LogGap
from sentinel_daemon.layout import EVENTS_DIR, SNAPSHOT_NAME
from sentinel_daemon.log.lock import StateLock
from sentinel_daemon.log.mend import remove_lines, set_aside, shift_snapshot
from sentinel_daemon.log.scrub import Finding, scrub
from sentinel_daemon.log.segfiles import lines_before, list_segments, read_segment, segment_size
from sentinel_daemon.log.segments import FileLog, LogScan, TornTail, cut_torn_tail
from sentinel_daemon.log.snapshot import SnapshotInvalid, load_snapshot
from sentinel_daemon.log.store import repaired_event


@dataclass(frozen=True)
class RepairResult:
    """``action``: ``none``, ``mended``, ``cut`` (a tail was cut, maybe after mending), or
    ``needs-operator`` (something is left that only a person can mend, mostly from a
    backup; ``detail["remaining"]`` says exactly what to do for each)."""

    action: str
    detail: dict[str, Any]

    @property
    def ok(self) -> bool:
        return self.action != "needs-operator"


def repair(
    state_dir: Path, *, truncate_corrupt: bool = False, segment_bytes: int = 64 << 20
) -> RepairResult:
    """Mend, cut and report, as the module says; refuses to run beside a daemon."""
    events_dir = state_dir / EVENTS_DIR
    lock = StateLock.acquire(state_dir)
    try:
        now = datetime.now(UTC)
        stamp = now.strftime("%Y%m%dT%H%M%S%fZ")
        mended, events = _mend(state_dir, events_dir, scrub(events_dir).findings, stamp)
        cut = _cut(events_dir, truncate_corrupt, now)
        if cut is not None:
            torn, backup = cut
            events.append(repaired_event(torn, backup, f"sentinel log repair: {torn.reason}"))
        after = scrub(events_dir)
        remaining = [f for f in after.findings if f.kind != "torn"]
        detail: dict[str, Any] = {"mended": mended, "last_seq": after.last_seq}
        if cut is not None:
            torn, backup = cut
            detail |= {
                "segment": torn.segment,
                "offset": torn.offset,
                "bytes_cut": torn.bytes_cut,
                "later_segments_removed": list(torn.later_segments),
                "backup": str(events_dir / backup),
            }
        if remaining:
            detail["remaining"] = [_what_to_restore(state_dir, f) for f in remaining]
            detail["recorded"] = False  # a log that does not scan cannot be appended to
            return RepairResult("needs-operator", detail)
        if events:
            detail["last_seq"] = _record(events_dir, events, segment_bytes)
        detail["recorded"] = bool(events)
        action = "cut" if cut is not None else "mended" if mended else "none"
        return RepairResult(action, detail)
    finally:
        lock.release()


def _mend(
    state_dir: Path, events_dir: Path, findings: tuple[Finding, ...], stamp: str
) -> tuple[list[dict[str, Any]], list[LogRepaired]]:
    """Set stray empty segments aside and take duplicated lines out, each after a copy."""
    mended: list[dict[str, Any]] = []
    events: list[LogRepaired] = []
    duplicates: dict[str, list[Finding]] = defaultdict(list)
    for f in findings:
        if f.kind == "empty":
            moved = set_aside(events_dir, f.segment, stamp)
            backup = moved.relative_to(state_dir).as_posix()
            why = "set aside a stray empty segment"
            mended.append({"segment": f.segment, "what": why, "backup": str(moved)})
            events.append(LogRepaired(segment=f.segment, offset=0, bytes_cut=0, backup=backup,
                                      reason=f"sentinel log repair: {why}"))  # fmt: skip
        elif f.kind == "duplicate":
            duplicates[f.segment].append(f)
    for segment, found in duplicates.items():
        copy, cuts = remove_lines(events_dir, segment, {f.line for f in found}, stamp)
        moved_snapshot = shift_snapshot(state_dir / SNAPSHOT_NAME, segment, cuts)
        seqs = ", ".join(str(f.seq) for f in found)
        why = f"removed {len(found)} duplicated line(s) of seq {seqs}"
        mended.append(
            {
                "segment": segment,
                "what": why,
                "lines": [f.line for f in found],
                "backup": str(copy),
                "snapshot_moved": moved_snapshot,
            }
        )
        events.append(
            LogRepaired(
                segment=segment,
                offset=cuts[0][0],
                bytes_cut=sum(length for _, length in cuts),
                backup=copy.relative_to(state_dir).as_posix(),
                reason=f"sentinel log repair: {why}",
            )
        )
    return mended, events


def _cut(events_dir: Path, truncate_corrupt: bool, now: datetime) -> tuple[TornTail, str] | None:
    """Cut a torn tail (or, when asked, a corrupt record and all after it) after a backup."""
    scan = LogScan(events_dir)
    try:
        for _ in scan:
            pass
    except LogCorrupt as exc:
        if not truncate_corrupt:
            return None  # left for the operator: _what_to_restore says what to do
        scan.torn = _torn_from_corrupt(events_dir, exc)
    except LogGap:
        return None
    if scan.torn is None:
        return None
    return scan.torn, cut_torn_tail(events_dir, scan.torn, now)


def _record(events_dir: Path, events: list[LogRepaired], segment_bytes: int) -> int:
    """Append the ``log.repaired`` events; returns the log's last seq."""
    scan = LogScan(events_dir)
    for _ in scan:
        pass
    log_, _, _ = FileLog.open(events_dir, scan, segment_bytes=segment_bytes)
    try:
        log_.append([encode(e) for e in events])
        return log_.last_seq
    finally:
        log_.close()


def _torn_from_corrupt(events_dir: Path, exc: LogCorrupt) -> TornTail:
    """Treat everything from the corrupt record on as a tail to cut."""
    seg = exc.segment.name
    data = read_segment(events_dir / seg)
    offset = 0
    for _ in range(exc.line - 1):
        offset = data.index(b"\n", offset) + 1
    later = tuple(s for s in list_segments(events_dir) if s > seg)
    cut = len(data) - offset + sum(segment_size(events_dir / s) for s in later)
    return TornTail(seg, offset, exc.line, cut, later, f"corrupt record: {exc.reason}")


def _what_to_restore(state_dir: Path, f: Finding) -> dict[str, Any]:
    """A finding that needs a person, with the exact thing to do."""
    events_dir = state_dir / EVENTS_DIR
    out = f.as_dict() | {"path": str(events_dir / f.segment)}
    if f.kind in ("corrupt", "gap") and f.segment:
        segs = list_segments(events_dir)
        later = [s for s in segs if s > f.segment]
        first = int(f.segment[:20])
        last = f"{int(later[0][:20]) - 1}" if later else "its end"
        out["restore"] = (
            f"replace {events_dir / f.segment} with a backup copy of that segment holding seq "
            f"{first} to {last}; or `sentinel log repair --truncate-corrupt` cuts the log at "
            f"line {f.line} (every later record is lost)"
        )
        out["covered_by_snapshot"] = _covered(state_dir, f)
    elif f.kind == "misnamed" and f.seq is not None:
        out["restore"] = (
            f"rename {events_dir / f.segment} to {events_dir / f'{f.seq:020d}.jsonl'} "
            f"(its first record is seq {f.seq}), then run `sentinel log verify`"
        )
    else:
        out["restore"] = f.what
    return out


def _covered(state_dir: Path, f: Finding) -> bool:
    """Whether the snapshot covers the damaged line: the daemon then runs, from it."""
    try:
        snap = load_snapshot(state_dir / SNAPSHOT_NAME)
    except SnapshotInvalid:
        return False
    if snap is None:
        return False
    if snap.position.segment != f.segment:
        return snap.position.segment > f.segment
    path = state_dir / EVENTS_DIR / f.segment
    return lines_before(path, snap.position.offset) >= f.line


def render(result: RepairResult) -> tuple[list[str], list[str]]:
    """Lines for people: (stdout, stderr)."""
    out: list[str] = []
    err: list[str] = []
    d = result.detail
    for m in d.get("mended", []):
        out.append(f"mended {m['segment']}: {m['what']}; the original is in {m['backup']}")
    if "bytes_cut" in d:
        out.append(
            f"cut {d['bytes_cut']} bytes from {d['segment']} at offset {d['offset']}; "
            f"backup in {d['backup']}"
        )
    if result.action == "none":
        out.append(f"nothing to repair: the log is intact up to seq {d['last_seq']}")
    elif result.ok:
        out.append(f"the log is whole again and ends at seq {d['last_seq']}")
    for r in d.get("remaining", []):
        covered = " (the snapshot covers it: the daemon runs meanwhile)" if r.get(
            "covered_by_snapshot") else ""  # fmt: skip
        line = f" line {r['line']}" if r["line"] else ""
        err.append(f"NOT MENDED: {r['path']}{line}: {r['kind']}{covered}. To do: {r['restore']}")
    return out, err
