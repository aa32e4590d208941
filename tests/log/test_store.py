"""Start-up: lock, snapshot handling, replay, and torn-tail repair recorded as an event.

And a store over either log behind its seam (the file log, or the in-memory twin): it
appends, folds, counts bytes and snapshots the same way over both.
"""

from __future__ import annotations

import itertools
import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from sentinel_daemon.core.events import JobSubmitted, TrialSaved, TrialStarted, encode
from sentinel_daemon.core.state import State, fold
from sentinel_daemon.errors import LogCorrupt, StateDirLocked
from sentinel_daemon.layout import EVENTS_DIR, SNAPSHOT_NAME
from sentinel_daemon.log.memory import MemoryLog
from sentinel_daemon.log.records import encode_batch, encode_line
from sentinel_daemon.log.segments import FileLog, LogScan
from sentinel_daemon.log.snapshot import load_snapshot
from sentinel_daemon.log.store import Store, decode_record

from .logkit import segment_files


def job_events(n_trials: int) -> list:
    events: list = [
        JobSubmitted(job_id="j1", name="fraud", spec={}, file="f.yaml", file_sha256="0" * 64)
    ]
    for t in range(n_trials):
        events.append(TrialStarted(job_id="j1", trial=t, model="xgboost", params={}, attempt=1))
        events.append(
            TrialSaved(
                job_id="j1",
                trial=t,
                model="xgboost",
                value=t / 100,
                metrics={},
                artifact=f"a/{t}",
                sha256="0" * 64,
                duration_s=1,
            )
        )
    return events


def test_a_second_store_on_the_same_state_dir_is_refused_naming_the_holder(
    state_dir: Path,
) -> None:
    store = Store.open(state_dir)
    try:
        with pytest.raises(StateDirLocked) as err:
            Store.open(state_dir)
        assert err.value.holder_pid is not None and str(err.value.holder_pid) in str(err.value)
    finally:
        store.close()
    Store.open(state_dir).close()  # released on close


def test_snapshots_are_written_every_n_records_and_at_a_clean_close(state_dir: Path) -> None:
    store = Store.open(state_dir, snapshot_every=100)
    store.append(job_events(60))  # 121 records in one batch
    assert json.loads((state_dir / SNAPSHOT_NAME).read_text())["seq"] == 121
    store.append(job_events(1)[1:])
    store.close()
    assert json.loads((state_dir / SNAPSHOT_NAME).read_text())["seq"] == 123
    reopened = Store.open(state_dir, snapshot_every=100)
    assert reopened.report.snapshot_seq == 123 and reopened.report.replayed == 0
    assert reopened.state.jobs["j1"].best_saved().number == 59  # type: ignore[union-attr]
    reopened.close()


@pytest.mark.parametrize("damage", ["garbage", "bitflip", "truncated", "wrong-version"])
def test_a_damaged_snapshot_means_a_warning_and_a_full_replay(state_dir: Path, damage: str) -> None:
    store = Store.open(state_dir)
    store.append(job_events(5))
    store.close()
    snap = state_dir / SNAPSHOT_NAME
    data = snap.read_bytes()
    if damage == "garbage":
        snap.write_bytes(b"not json at all")
    elif damage == "bitflip":
        snap.write_bytes(data[:30] + bytes([data[30] ^ 4]) + data[31:])
    elif damage == "truncated":
        snap.write_bytes(data[: len(data) // 2])
    else:
        obj = json.loads(data)
        obj["state"]["version"] = 99
        snap.write_text(json.dumps(obj))
    reopened = Store.open(state_dir)
    assert reopened.report.snapshot_problem is not None
    assert reopened.report.replayed == 11
    assert reopened.state == fold(job_events(5))
    reopened.close()


def test_a_snapshot_from_the_future_is_ignored(state_dir: Path, tmp_path: Path) -> None:
    store = Store.open(state_dir)
    store.append(job_events(2))
    store.close(snapshot=False)
    old_log = tmp_path / "old-events"
    shutil.copytree(state_dir / "events", old_log)
    store = Store.open(state_dir)
    store.append(job_events(3)[1:])
    store.close()  # snapshot at seq 11
    shutil.rmtree(state_dir / "events")
    shutil.copytree(old_log, state_dir / "events")  # the log restored from an older backup
    reopened = Store.open(state_dir)
    assert "future" in (reopened.report.snapshot_problem or "")
    assert reopened.state == fold(job_events(2))
    reopened.close()


def test_a_stale_snapshot_replays_the_longer_tail(state_dir: Path) -> None:
    store = Store.open(state_dir, snapshot_every=1000)
    store.append(job_events(2))
    store.snapshot()
    for t in range(2, 40):
        store.append(job_events(t + 1)[-2:])
    store.close(snapshot=False)
    reopened = Store.open(state_dir, snapshot_every=1000)
    assert reopened.report.snapshot_seq == 5 and reopened.report.replayed == 76
    assert reopened.state == fold(job_events(40))
    reopened.close()


def test_a_torn_tail_is_cut_at_start_up_and_the_repair_is_an_event(state_dir: Path) -> None:
    store = Store.open(state_dir)
    store.append(job_events(3))
    store.close(snapshot=False)
    seg = segment_files(state_dir / "events")[-1]
    with open(seg, "ab") as fh:
        fh.write(b'{"seq":8,"ts":"2026-01-01T00:00:00.000000Z","type":"trial.st')
    reopened = Store.open(state_dir)
    assert reopened.report.torn is not None
    assert reopened.state.log_repairs == 1 and reopened.state.last_seq == 8
    backup = state_dir / "events" / (reopened.report.backup or "")
    assert backup.exists()
    reopened.close()


def test_corruption_in_the_middle_stops_start_up_and_releases_the_lock(state_dir: Path) -> None:
    store = Store.open(state_dir)
    for event in job_events(5):  # one batch each: the damage is in an acknowledged batch
        store.append([event])
    store.close(snapshot=False)
    seg = segment_files(state_dir / "events")[0]
    lines = seg.read_bytes().split(b"\n")
    lines[2] = lines[2].replace(b'"xgboost"', b'"lightgbm"')
    seg.write_bytes(b"\n".join(lines))
    with pytest.raises(LogCorrupt) as err:
        Store.open(state_dir)
    assert err.value.line == 3 and err.value.segment == seg
    with pytest.raises(LogCorrupt):  # still refused, and not because of a stale lock
        Store.open(state_dir)


# ---- contract: a store over the file log and over its in-memory twin --------------------


def test_contract_a_store_folds_what_it_appends_and_the_log_holds_it(
    backend: Any, tmp_path: Path
) -> None:
    store = Store(tmp_path, backend.log, State())
    events = job_events(3)
    records = store.append(events)
    assert [r.seq for r in records] == list(range(1, 8))
    assert store.state == fold(events) and store.state.last_seq == 7
    assert [decode_record(r) for r in backend.log.read()] == events


def test_contract_a_store_counts_the_bytes_each_append_wrote(backend: Any, tmp_path: Path) -> None:
    store = Store(tmp_path, backend.log, State())
    for batch in (job_events(20), job_events(1)[1:], job_events(30)[1:]):  # rotates on file
        records = store.append(batch)
        written = encode_batch(records[0].seq, records[0].ts, [encode(e) for e in batch])
        assert store.appended_bytes == len(written)


def test_contract_a_store_snapshots_every_n_records_at_the_end_of_its_log(
    backend: Any, tmp_path: Path
) -> None:
    store = Store(tmp_path, backend.log, State(), snapshot_every=10)
    store.append(job_events(2))
    assert not (tmp_path / SNAPSHOT_NAME).exists()
    last = store.append(job_events(5)[5:])[-1]  # 11 records in all
    snap = load_snapshot(tmp_path / SNAPSHOT_NAME)
    assert snap is not None and snap.seq == 11
    assert snap.state == fold(job_events(2) + job_events(5)[5:])
    assert snap.position == backend.log.position
    assert snap.last_crc == encode_line(last.seq, last.ts, last.payload)[-11:-3].decode()


def test_a_store_over_memory_anchors_its_snapshot_where_one_over_files_does(
    tmp_path: Path,
) -> None:
    def ticking() -> Any:
        ticks = itertools.count()
        start = datetime(2026, 1, 1, tzinfo=UTC)
        return lambda: start + timedelta(seconds=next(ticks))

    events_dir = tmp_path / "file" / EVENTS_DIR
    events_dir.mkdir(parents=True)
    scan = LogScan(events_dir)
    list(scan)
    file_log, _, _ = FileLog.open(events_dir, scan, segment_bytes=1 << 20, clock=ticking())
    (tmp_path / "memory").mkdir()
    stores = [
        Store(tmp_path / "file", file_log, State()),
        Store(tmp_path / "memory", MemoryLog(clock=ticking()), State()),
    ]
    for store in stores:
        for event in job_events(4):
            store.append([event])
        store.close()
    on_file, in_memory = (load_snapshot(tmp_path / s / SNAPSHOT_NAME) for s in ("file", "memory"))
    assert on_file is not None and in_memory is not None
    assert (in_memory.seq, in_memory.position, in_memory.last_crc) == (
        on_file.seq,
        on_file.position,
        on_file.last_crc,
    )
    assert in_memory.state == on_file.state
