"""Behaviours of the file log, and a contract suite shared with its in-memory twin."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sentinel_daemon.errors import LogCorrupt, LogFsyncFailed, LogGap
from sentinel_daemon.log.records import Position
from sentinel_daemon.log.segfiles import segment_name
from sentinel_daemon.log.segments import FileLog, LogScan, LogWriteFailed

from .logkit import open_log, payload, scan_all, segment_files, write_log

# ---- contract: the same semantics for FileLog and MemoryLog (the `backend` fixture) ----


def test_contract_seq_starts_at_one_and_grows_by_one_per_record(backend: Any) -> None:
    first = backend.log.append([payload(1)])
    batch = backend.log.append([payload(2), payload(3), payload(4)])
    assert [r.seq for r in first + batch] == [1, 2, 3, 4]
    assert len({r.ts for r in batch}) == 1  # one batch, one commit, one timestamp


def test_contract_read_returns_what_was_appended_in_order(backend: Any) -> None:
    for i in range(1, 60):
        backend.log.append([payload(i)])
    backend.reopen()
    records = list(backend.log.read())
    assert [r.seq for r in records] == list(range(1, 60))
    assert [r.payload["trial"] for r in records] == list(range(1, 60))
    assert [r.seq for r in backend.log.read(after_seq=55)] == [56, 57, 58, 59]


def test_contract_an_empty_batch_appends_nothing(backend: Any) -> None:
    assert backend.log.append([]) == []
    assert list(backend.log.read()) == []


def test_contract_a_failed_fsync_is_fatal_for_every_later_append(backend: Any) -> None:
    backend.log.append([payload(1)])
    backend.fail_next_sync()
    with pytest.raises(LogFsyncFailed):
        backend.log.append([payload(2)])
    with pytest.raises(LogFsyncFailed):
        backend.log.append([payload(3)])  # never retried: the page cache is not trusted


def test_contract_envelope_keys_in_an_event_are_refused(backend: Any) -> None:
    with pytest.raises(ValueError, match="envelope"):
        backend.log.append([{"type": "x", "v": 1, "crc": "0"}])


def test_contract_an_empty_log_ends_at_the_start_of_its_first_segment(backend: Any) -> None:
    assert backend.log.position == Position(segment_name(1), 0)
    assert backend.log.last_crc() is None


# ---- file log behaviours ---------------------------------------------------------------


def test_segments_rotate_past_their_size_and_are_named_by_first_seq(tmp_path: Path) -> None:
    events = tmp_path / "events"
    write_log(events, 200, batch=3, segment_bytes=4096)
    segs = segment_files(events)
    assert len(segs) > 3
    records, _ = scan_all(events)
    assert [r.seq for r in records] == list(range(1, 201))
    for seg in segs:
        first = LogScan(events)  # each segment begins with the seq in its name
        del first
        line = seg.read_bytes().split(b"\n", 1)[0]
        assert line.startswith(b'{"seq":%d,' % int(seg.name[:20]))


def test_a_write_error_is_rolled_back_and_the_log_stays_appendable(tmp_path: Path) -> None:
    events = tmp_path / "events"
    log = open_log(events)
    log.append([payload(1)])
    calls = {"n": 0}

    def half_then_enospc(fd: int, data: memoryview) -> int:
        calls["n"] += 1
        if calls["n"] == 1:
            return os.write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    log._write = half_then_enospc
    with pytest.raises(LogWriteFailed, match="No space left"):
        log.append([payload(2), payload(3)])
    log._write = os.write
    log.append([payload(4)])
    log.close()
    records, scan = scan_all(events)
    assert [r.payload["trial"] for r in records] == [1, 4]
    assert [r.seq for r in records] == [1, 2]
    assert scan.torn is None


def test_a_torn_last_record_is_reported_and_cut_after_a_backup(tmp_path: Path) -> None:
    events = tmp_path / "events"
    write_log(events, 5)
    seg = segment_files(events)[-1]
    whole = seg.read_bytes()
    seg.write_bytes(whole + b'{"seq":6,"ts":"2026')
    records, scan = scan_all(events)
    assert len(records) == 5 and scan.torn is not None and scan.torn.line == 6
    log, torn, backup = FileLog.open(events, scan, segment_bytes=1 << 20)
    log.append([payload(6)])
    log.close()
    assert torn is not None and backup is not None
    assert (events / backup).read_bytes().endswith(b'"ts":"2026')
    assert [r.seq for r in scan_all(events)[0]] == [1, 2, 3, 4, 5, 6]


def test_a_bad_record_followed_by_good_ones_is_corruption_naming_segment_and_line(
    tmp_path: Path,
) -> None:
    events = tmp_path / "events"
    write_log(events, 10)
    seg = segment_files(events)[0]
    lines = seg.read_bytes().split(b"\n")
    lines[3] = lines[3].replace(b'"attempt":1', b'"attempt":2')
    seg.write_bytes(b"\n".join(lines))
    with pytest.raises(LogCorrupt) as err:
        scan_all(events)
    assert err.value.segment == seg and err.value.line == 4
    assert "sentinel log" in str(err.value)


def test_a_deleted_middle_segment_is_a_gap(tmp_path: Path) -> None:
    events = tmp_path / "events"
    write_log(events, 100, segment_bytes=2048)
    segs = segment_files(events)
    segs[1].unlink()
    with pytest.raises(LogGap) as err:
        scan_all(events)
    assert err.value.expected == int(segs[1].name[:20])


def test_a_missing_first_segment_is_a_gap(tmp_path: Path) -> None:
    events = tmp_path / "events"
    write_log(events, 100, segment_bytes=2048)
    segment_files(events)[0].unlink()
    with pytest.raises(LogGap) as err:
        scan_all(events)
    assert err.value.expected == 1


def _zero_sector_inside(seg: Path, lo: int, hi: int) -> None:
    """Zero one 512-byte-aligned sector that lies within bytes [lo, hi) of ``seg``."""
    data = bytearray(seg.read_bytes())
    start = -(-lo // 512) * 512
    assert start + 512 <= hi, "test log too small for a whole sector"
    data[start : start + 512] = b"\0" * 512
    seg.write_bytes(bytes(data))


def test_a_zeroed_sector_inside_the_last_batch_is_a_torn_tail(tmp_path: Path) -> None:
    events = tmp_path / "events"
    write_log(events, 10)
    before = segment_files(events)[-1].stat().st_size
    log = open_log(events)
    log.append([payload(100 + i) for i in range(30)])  # the last batch: ~6 KiB, one write
    log.close()
    seg = segment_files(events)[-1]
    _zero_sector_inside(seg, before + 200, seg.stat().st_size - 200)
    records, scan = scan_all(events)
    assert scan.torn is not None and "last batch" in scan.torn.reason
    assert [r.seq for r in records][:10] == list(range(1, 11))
    log2, _, _ = FileLog.open(events, scan, segment_bytes=1 << 20)
    log2.close()
    again, rescan = scan_all(events)
    assert rescan.torn is None and [r.seq for r in again] == [r.seq for r in records]


def test_a_zeroed_sector_before_a_later_batch_is_corruption(tmp_path: Path) -> None:
    events = tmp_path / "events"
    write_log(events, 40, batch=1)  # forty batches of one record
    seg = segment_files(events)[-1]
    _zero_sector_inside(seg, 1000, seg.stat().st_size - 1000)
    with pytest.raises(LogCorrupt, match="committed after"):
        scan_all(events)


def test_batches_get_strictly_increasing_timestamps_even_if_the_clock_stands_still(
    tmp_path: Path,
) -> None:
    from datetime import UTC, datetime

    events = tmp_path / "events"
    events.mkdir()
    scan = LogScan(events)
    list(scan)
    frozen = datetime(2026, 1, 1, tzinfo=UTC)
    log, _, _ = FileLog.open(events, scan, segment_bytes=1 << 20, clock=lambda: frozen)
    stamps = [log.append([payload(i)])[0].ts for i in range(5)]
    log.close()
    assert stamps == sorted(set(stamps)) and len(stamps) == 5


def test_an_empty_log_opens_with_its_first_segment(tmp_path: Path) -> None:
    events = tmp_path / "events"
    log = open_log(events)
    log.close()
    assert [p.name for p in segment_files(events)] == [segment_name(1)]


def _corrupt_middle(events: Path) -> None:
    seg = segment_files(events)[0]
    data = bytearray(seg.read_bytes())
    data[40] ^= 0x01
    seg.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [_corrupt_middle], ids=["bitflip-first-record"])
def test_damage_before_intact_records_stops_the_scan(
    tmp_path: Path, damage: Callable[[Path], None]
) -> None:
    events = tmp_path / "events"
    write_log(events, 10)
    damage(events)
    with pytest.raises(LogCorrupt):
        scan_all(events)
