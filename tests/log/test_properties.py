"""Property tests of the log and the fold (Hypothesis)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sentinel_daemon.core.events import (
    Event,
    JobSubmitted,
    StageStarted,
    TrialFailed,
    TrialPruned,
    TrialSaved,
    TrialStarted,
    WorkerLost,
    WorkerStarted,
)
from sentinel_daemon.core.state import State, fold
from sentinel_daemon.errors import LogCorrupt, LogGap
from sentinel_daemon.layout import SNAPSHOT_NAME
from sentinel_daemon.log.segments import FileLog
from sentinel_daemon.log.store import Store

from .logkit import open_log, payload, scan_all, segment_files, write_log

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@contextmanager
def tmpdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="sentinel-prop-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


jobs = st.sampled_from(["j1", "j2"])
trials = st.integers(0, 6)
models = st.sampled_from(["xgboost", "lightgbm"])

events_strategy: st.SearchStrategy[Event] = st.one_of(
    st.builds(
        JobSubmitted,
        job_id=jobs,
        name=st.just("fraud"),
        spec=st.just({"name": "fraud"}),
        file=st.just("f.yaml"),
        file_sha256=st.just("0" * 64),
    ),
    st.builds(StageStarted, job_id=jobs, stage=st.sampled_from(["prepare", "search"])),
    st.builds(
        TrialStarted,
        job_id=jobs,
        trial=trials,
        model=models,
        params=st.fixed_dictionaries({"max_depth": st.integers(2, 9)}),
        attempt=st.integers(1, 3),
    ),
    st.builds(
        TrialSaved,
        job_id=jobs,
        trial=trials,
        model=models,
        value=st.floats(0, 1),
        metrics=st.just({"roc_auc": 0.5}),
        artifact=st.just("a"),
        sha256=st.just("b" * 64),
        duration_s=st.floats(0, 100),
    ),
    st.builds(TrialPruned, job_id=jobs, trial=trials, model=models, step=st.integers(0, 100)),
    st.builds(
        TrialFailed,
        job_id=jobs,
        trial=trials,
        model=models,
        error=st.just("x"),
        attempt=st.integers(1, 3),
        retry=st.booleans(),
    ),
    st.builds(
        WorkerStarted, worker=st.sampled_from(["w0", "w1"]), pid=st.integers(1, 9), gpu=st.none()
    ),
    st.builds(
        WorkerLost,
        worker=st.sampled_from(["w0", "w1"]),
        pid=st.integers(1, 9),
        gpu=st.none(),
        reason=st.just("gone"),
    ),
)


@SETTINGS
@given(events=st.lists(events_strategy, max_size=40), cut=st.integers(0, 40))
def test_replaying_a_prefix_then_the_rest_equals_replaying_all(
    events: list[Event], cut: int
) -> None:
    cut = min(cut, len(events))
    with tmpdir() as root:
        store = Store.open(root, snapshot_every=100, segment_bytes=4096)
        store.append(events[:cut])
        store.close(snapshot=False)
        store = Store.open(root, snapshot_every=100, segment_bytes=4096)
        store.append(events[cut:])
        store.close(snapshot=False)
        store = Store.open(root, snapshot_every=100, segment_bytes=4096)
        replayed = store.state
        store.close(snapshot=False)
    expected = fold(events)
    assert replayed.jobs == expected.jobs and replayed.workers == expected.workers
    assert replayed.last_seq == len(events)


@SETTINGS
@given(events=st.lists(events_strategy, min_size=1, max_size=60), every=st.integers(1, 30))
def test_snapshot_plus_tail_equals_full_replay(events: list[Event], every: int) -> None:
    with tmpdir() as root:
        store = Store.open(root, snapshot_every=100, segment_bytes=4096)
        for i in range(0, len(events), every):
            store.append(events[i : i + every])
            if i % 2 == 0:
                store.snapshot()
        store.close(snapshot=False)
        with_snapshot = Store.open(root, snapshot_every=100)
        state_a = with_snapshot.state.copy_state()
        used_snapshot = with_snapshot.report.snapshot_seq > 0
        with_snapshot.close(snapshot=False)
        (root / SNAPSHOT_NAME).unlink()
        full = Store.open(root, snapshot_every=100)
        state_b = full.state
        full.close(snapshot=False)
    assert used_snapshot
    assert state_a == state_b == fold(events, State())


@SETTINGS
@given(
    batches=st.lists(st.integers(1, 25), min_size=1, max_size=25),
    reopen=st.lists(st.booleans(), min_size=25, max_size=25),
)
def test_seq_stays_contiguous_across_segments_and_restarts(
    batches: list[int], reopen: list[bool]
) -> None:
    with tmpdir() as root:
        events = root / "events"
        log = open_log(events, segment_bytes=1024)
        n = 0
        for k, size in enumerate(batches):
            log.append([payload(n + j) for j in range(size)])
            n += size
            if reopen[k]:
                log.close()
                log = open_log(events, segment_bytes=1024)
        log.close()
        records, _ = scan_all(events)
        assert [r.seq for r in records] == list(range(1, n + 1))
        assert [r.payload["trial"] for r in records] == list(range(n))
        for seg in segment_files(events):
            head = seg.read_bytes().split(b"\n", 1)[0]
            if head:
                assert head.startswith(b'{"seq":%d,' % int(seg.name[:20]))


def _build(root: Path, n: int) -> tuple[Path, list[int]]:
    """A log of ``n`` records; returns its only segment and the end offset of each record."""
    events = root / "events"
    write_log(events, n, batch=1)
    seg = segment_files(events)[0]
    ends, pos = [], 0
    for line in seg.read_bytes().split(b"\n")[:-1]:
        pos += len(line) + 1
        ends.append(pos)
    return seg, ends


def test_cutting_the_log_at_every_byte_of_its_last_records_recovers_the_whole_ones() -> None:
    with tmpdir() as root:
        seg, ends = _build(root, 8)
        original = seg.read_bytes()
        events = seg.parent
        start = ends[-4]  # every byte offset of the last three records (and the end)
        for cut in range(start, len(original) + 1):
            seg.write_bytes(original[:cut])
            whole = sum(1 for e in ends if e <= cut)
            records, scan = scan_all(events)
            assert [r.seq for r in records] == list(range(1, whole + 1)), cut
            assert (scan.torn is None) == (cut in ends), cut
            log, _, _ = FileLog.open(events, scan, segment_bytes=1 << 20)
            log.append([payload(99)])  # the log goes on from the last whole record
            log.close()
            again, rescan = scan_all(events)
            assert [r.seq for r in again] == list(range(1, whole + 2)) and rescan.torn is None
            shutil.rmtree(events / "damaged", ignore_errors=True)


def test_a_flipped_bit_anywhere_is_detected_never_silently_accepted() -> None:
    with tmpdir() as root:
        seg, ends = _build(root, 6)
        original = seg.read_bytes()
        pristine = [r.payload for r in scan_all(seg.parent)[0]]
        for bit in range(len(original) * 8):
            damaged = bytearray(original)
            damaged[bit // 8] ^= 1 << (bit % 8)
            seg.write_bytes(bytes(damaged))
            record_index = next(i for i, e in enumerate(ends) if bit // 8 < e)
            try:
                records, scan = scan_all(seg.parent)
            except (LogCorrupt, LogGap):
                assert record_index < len(ends) - 1, bit  # only damage before intact records
                continue
            # Damage in the last record: reported as a torn tail, and nothing altered passes.
            assert scan.torn is not None, bit
            assert [r.payload for r in records] == pristine[: len(records)], bit
            assert len(records) == record_index, bit


@SETTINGS
@given(data=st.data())
def test_snapshot_of_any_prefix_then_reopen_matches(data: st.DataObject) -> None:
    events = data.draw(st.lists(events_strategy, min_size=2, max_size=30))
    cut = data.draw(st.integers(1, len(events) - 1))
    with tmpdir() as root:
        store = Store.open(root, snapshot_every=100)
        store.append(events[:cut])
        store.snapshot()
        store.append(events[cut:])
        store.close(snapshot=False)
        reopened = Store.open(root, snapshot_every=100)
        assert reopened.report.snapshot_seq == cut
        assert reopened.report.replayed == len(events) - cut
        assert reopened.state == fold(events)
        reopened.close(snapshot=False)
