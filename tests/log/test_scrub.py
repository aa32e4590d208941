"""Damage the snapshot hides: start-up runs on and reports it; verify flags it; repair mends
what it safely can and names what must be restored. On real files."""

from __future__ import annotations

import os
from pathlib import Path

from sentinel_daemon.core.events import TrialStarted
from sentinel_daemon.layout import EVENTS_DIR, SNAPSHOT_NAME
from sentinel_daemon.log.scrub import scrub
from sentinel_daemon.log.segfiles import segment_name
from sentinel_daemon.log.segments import FileLog, LogScan
from sentinel_daemon.log.snapshot import load_snapshot
from sentinel_daemon.log.store import Store
from sentinel_daemon.tools.repair import repair
from sentinel_daemon.tools.verify import verify

from .logkit import payload


def started(trial: int) -> TrialStarted:
    return TrialStarted(job_id="j1", trial=trial, model="xgboost", params={}, attempt=1)


def snapshotted_log(state_dir: Path, covered: int, tail: int = 3) -> Path:
    """A log of ``covered`` records under a snapshot, then ``tail`` after it; its segment."""
    store = Store.open(state_dir)
    store.append([started(t) for t in range(covered)])
    store.snapshot()
    store.append([started(covered + t) for t in range(tail)])
    store.close(snapshot=False)
    (seg,) = sorted((state_dir / EVENTS_DIR).glob("*.jsonl"))
    return seg


def edit_line(seg: Path, index: int, how: str) -> bytes:
    """Duplicate or damage line ``index`` (0-based) in place; returns the original line."""
    lines = seg.read_bytes().split(b"\n")
    original = lines[index]
    if how == "duplicate":
        lines.insert(index + 1, original)
    else:
        i = original.index(b'"model"')  # flip one byte inside the checksummed bytes
        lines[index] = original[:i] + b"X" + original[i + 1 :]
    seg.write_bytes(b"\n".join(lines))
    return original


def test_a_duplicated_line_in_a_segment_the_snapshot_covers_is_reported_and_mended(
    state_dir: Path,
) -> None:
    store = Store.open(state_dir, segment_bytes=2000)  # a few records a segment
    for t in range(30):
        store.append([started(t)])
    store.close()  # snapshot at seq 30, in the last segment
    assert len(list((state_dir / EVENTS_DIR).glob("*.jsonl"))) > 2
    first = sorted((state_dir / EVENTS_DIR).glob("*.jsonl"))[0]
    edit_line(first, 1, "duplicate")  # line 3 repeats line 2 (seq 2)

    store = Store.open(state_dir, segment_bytes=2000)
    assert store.report.snapshot_seq == 30 and store.report.replayed == 0
    found = store.scrub()
    assert [(f.segment, f.line, f.kind, f.seq) for f in found.findings] == [
        (first.name, 3, "duplicate", 2)
    ]
    assert found.records == 30 and found.last_seq == 30
    store.append([started(99)])
    store.close()

    report = verify(state_dir)
    assert not report.ok and [(f.kind, f.line) for f in report.findings] == [("duplicate", 3)]
    assert report.problem is None  # replay itself reads past a byte-identical copy

    result = repair(state_dir)
    assert result.action == "mended" and result.detail["recorded"]
    (mend,) = result.detail["mended"]
    assert mend["lines"] == [3] and not mend["snapshot_moved"]
    assert Path(mend["backup"]).read_bytes().count(b'"seq":2,') == 2  # the copy, as found
    assert verify(state_dir).ok
    reopened = Store.open(state_dir)
    assert reopened.report.snapshot_seq == 31 and reopened.scrub().ok
    assert reopened.state.last_seq == 32  # 31 records, then log.repaired
    reopened.close()


def test_a_duplicated_line_before_the_snapshot_in_its_segment_replays_and_is_mended(
    state_dir: Path,
) -> None:
    seg = snapshotted_log(state_dir, covered=10)
    edit_line(seg, 4, "duplicate")  # line 6 repeats line 5 (seq 5), before the snapshot

    store = Store.open(state_dir)  # the snapshot's offset no longer fits: a full replay
    assert store.report.snapshot_problem is not None and store.report.replayed == 13
    assert [(f.line, f.kind, f.seq) for f in store.report.findings] == [(6, "duplicate", 5)]
    assert [(f.line, f.kind) for f in store.scrub().findings] == [(6, "duplicate")]
    store.append([started(99)])
    store.close()  # a snapshot again, whose offset counts the duplicate

    result = repair(state_dir)
    (mend,) = result.detail["mended"]
    assert result.action == "mended" and mend["snapshot_moved"]
    reopened = Store.open(state_dir)  # the moved snapshot fits the mended log
    assert reopened.report.snapshot_problem is None and reopened.report.snapshot_seq == 14
    assert reopened.state.last_seq == 15 and reopened.scrub().ok
    reopened.close()
    (state_dir / SNAPSHOT_NAME).unlink()
    full = Store.open(state_dir)  # and the whole log replays without it
    assert full.report.replayed == 15 and not full.report.findings
    full.close()


def test_a_flipped_byte_under_the_snapshot_is_reported_and_repair_names_the_restore(
    state_dir: Path,
) -> None:
    seg = snapshotted_log(state_dir, covered=10)
    edit_line(seg, 2, "flip")  # seq 3
    damaged = seg.read_bytes()

    store = Store.open(state_dir)
    assert store.report.snapshot_seq == 10
    (finding,) = store.scrub().findings
    assert (finding.segment, finding.line, finding.kind) == (seg.name, 3, "corrupt")
    assert "checksum mismatch" in finding.what and not finding.mendable
    store.append([started(50)])  # appends after the tail, as if nothing were wrong
    store.close()
    assert seg.read_bytes().startswith(damaged)

    report = verify(state_dir)
    assert not report.ok and report.findings[0].line == 3

    result = repair(state_dir)
    assert result.action == "needs-operator" and not result.ok
    (left,) = result.detail["remaining"]
    assert left["path"] == str(seg) and left["line"] == 3 and left["covered_by_snapshot"]
    assert "holding seq 1 to its end" in left["restore"]
    assert "--truncate-corrupt" in left["restore"]
    assert seg.read_bytes().startswith(damaged)  # nothing cut without being asked


def test_an_empty_stray_segment_is_never_appended_to_and_repair_sets_it_aside(
    state_dir: Path,
) -> None:
    store = Store.open(state_dir)
    store.append([started(t) for t in range(5)])
    store.close()
    stray = state_dir / EVENTS_DIR / segment_name(100)
    stray.touch()

    store = Store.open(state_dir)
    assert [(f.segment, f.kind) for f in store.report.findings] == [(stray.name, "empty")]
    store.append([started(6)])
    store.close()
    assert stray.stat().st_size == 0  # the record went into the real segment
    again = Store.open(state_dir)  # no "gap" at the next start
    assert again.state.last_seq == 6
    again.close()

    report = verify(state_dir)
    assert not report.ok and [(f.segment, f.kind) for f in report.findings] == [
        (stray.name, "empty")
    ]
    result = repair(state_dir)
    assert result.action == "mended" and not stray.exists()
    assert Path(result.detail["mended"][0]["backup"]).parent.name == "damaged"
    assert verify(state_dir).ok


def test_rotation_into_the_name_of_a_stray_empty_segment_takes_it_over(tmp_path: Path) -> None:
    events = tmp_path / "events"
    events.mkdir()
    (events / segment_name(4)).touch()  # a stray, until the log reaches seq 4
    scan = LogScan(events)
    list(scan)
    assert scan.strays == [segment_name(4)]
    log, _, _ = FileLog.open(events, scan, segment_bytes=1)  # every append rotates
    for i in range(1, 7):
        log.append([payload(i)])
    log.close()

    assert scrub(events).ok
    assert [r.seq for r in LogScan(events)] == [1, 2, 3, 4, 5, 6]
    assert (events / segment_name(4)).read_bytes().startswith(b'{"seq":4,')


def test_the_scrub_reports_every_finding_not_only_the_first(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    seg = snapshotted_log(state_dir, covered=20, tail=0)
    edit_line(seg, 2, "flip")
    edit_line(seg, 10, "duplicate")
    (state_dir / EVENTS_DIR / "notes.txt").write_text("hello")
    os.rename(seg, seg.with_name(segment_name(7)))

    found = scrub(state_dir / EVENTS_DIR)

    assert sorted((f.kind, f.line) for f in found.findings) == [
        ("corrupt", 3),
        ("duplicate", 12),
        ("misnamed", 0),
        ("stray", 0),
    ]
    assert found.last_seq == 20 and found.records == 19


def test_the_scrub_stops_where_it_is_told(state_dir: Path) -> None:
    seg = snapshotted_log(state_dir, covered=10)
    snap = load_snapshot(state_dir / SNAPSHOT_NAME)
    assert snap is not None
    edit_line(seg, 11, "flip")  # after the snapshot: replay's to find, not the scrub's

    found = scrub(state_dir / EVENTS_DIR, until=snap.position)

    assert found.ok and found.records == 10 and found.last_seq == 10
