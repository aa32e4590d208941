"""Damaged event logs and snapshots against the real store and ``sentinel log verify``.

A log of a few hundred records in several segments is written through
:meth:`Store.append` (batches of one to five records, each batch one write and one
fsync), then damaged the ways a disk and its operators damage files, and opened again
with :meth:`Store.open` (start-up) and :func:`logtools.verify` (``sentinel log verify``;
the command itself runs on a sample). The oracle is computed from the intact log, not
from the reader's rules:

- truncation at every byte of the last records: start-up recovers exactly the whole
  records before the cut (and records the repair); the log goes on from there;
- a zeroed 512-byte sector or a flipped bit anywhere: if an intact record of an earlier
  batch than the last, or in a later segment, follows the damage, start-up must refuse
  with ``LogCorrupt`` naming the segment and the first damaged line (the damage cannot
  be a torn last write); otherwise it may cut the tail, and must then keep exactly the
  records before the first damaged one. Either way verify reports it. Never silently
  wrong: no damaged record is ever replayed, no intact one before the damage lost;
- a deleted middle (or first) segment: start-up refuses with ``LogGap``, snapshot or not;
- a stale snapshot: the longer tail is replayed, the state equals a full replay's;
- a snapshot from the future (the log restored from an older backup) or from another
  state directory: a warning and a full replay.

tests/log/test_properties.py and tests/log/test_eventlog.py check the scanner's rules on
one small segment; this is the sweep over a multi-segment log through the store, with
counts for the fault table.
"""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sentinel_daemon.core.events import (
    DaemonStarted,
    Event,
    JobSubmitted,
    StageCompleted,
    StageStarted,
    TrialPruned,
    TrialSaved,
    TrialStarted,
)
from sentinel_daemon.core.state import fold
from sentinel_daemon.errors import LogCorrupt, LogError, LogGap
from sentinel_daemon.layout import EVENTS_DIR, SNAPSHOT_NAME
from sentinel_daemon.log.records import Record
from sentinel_daemon.log.segfiles import list_segments
from sentinel_daemon.log.segments import LogScan
from sentinel_daemon.log.store import Store, decode_record
from sentinel_daemon.tools.verify import verify
from tests.faults.faultkit import rng
from tests.faults.record import full, record

SEGMENT_BYTES = 4096
SECTOR = 512


# ---- a log to damage ---------------------------------------------------------------------


def _events(r: random.Random, n_jobs: int, trials: int, salt: int) -> list[list[Event]]:
    """Batches of events of ``n_jobs`` jobs, as the daemon would append them.

    ``salt`` changes the job ids and nothing else, not even a byte count: the same seed
    with another salt is another host's log of the same shape.
    """
    batches: list[list[Event]] = []
    pending: list[Event] = []
    for j in range(n_jobs):
        job = f"fraud-{j}-{r.randrange(16**8) ^ salt:08x}"
        pending.append(
            JobSubmitted(
                job_id=job,
                name=f"fraud-{j}",
                spec={"name": f"fraud-{j}", "search": {"n_trials": trials}},
                file=f"claimed/fraud-{j}.yaml",
                file_sha256=f"{r.randrange(16**64):064x}",
            )
        )
        pending.append(StageStarted(job_id=job, stage="prepare"))
        pending.append(StageCompleted(job_id=job, stage="prepare", outputs={"rows": 2000}))
        for t in range(trials):
            model = r.choice(["xgboost", "lightgbm"])
            params = {"max_depth": r.randint(2, 9), "learning_rate": round(r.random(), 4)}
            pending.append(TrialStarted(job_id=job, trial=t, model=model, params=params, attempt=1))
            if r.random() < 0.2:
                pending.append(TrialPruned(job_id=job, trial=t, model=model, step=r.randint(1, 9)))
            else:
                pending.append(
                    TrialSaved(
                        job_id=job,
                        trial=t,
                        model=model,
                        value=round(r.random(), 6),
                        metrics={"roc_auc": round(r.random(), 6)},
                        artifact=f"jobs/{job}/trials/{t}/1-w0/model.ubj",
                        sha256=f"{r.randrange(16**64):064x}",
                        duration_s=round(r.random() * 9, 3),
                    )
                )
    i = 0
    while i < len(pending):
        k = r.choice([1, 1, 1, 2, 3, 5])
        batches.append(pending[i : i + k])
        i += k
    return batches


class Clock:
    """A clock that moves on a millisecond per call: batches get distinct timestamps."""

    def __init__(self) -> None:
        self.now = datetime(2026, 3, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(milliseconds=1)
        return self.now


@dataclass(frozen=True)
class Line:
    """One record of the intact log: where it is, and which batch wrote it."""

    index: int  # 0-based, over the whole log (seq - 1)
    segment: str
    line: int  # 1-based within its segment
    start: int
    end: int  # just past its newline
    batch: str  # the batch's timestamp


@dataclass
class Pristine:
    """The intact log: its folder, its records, and where each one is."""

    root: Path
    records: list[Record]
    lines: list[Line]
    snapshots: dict[int, bytes]  # seq -> snapshot.json bytes written at that seq

    @property
    def segments(self) -> list[str]:
        return list_segments(self.root / EVENTS_DIR)

    def seg_lines(self, segment: str) -> list[Line]:
        return [x for x in self.lines if x.segment == segment]

    def restore(self, into: Path, snapshot_seq: int | None = None) -> Path:
        """A copy of the log in ``into`` (replaced), with the snapshot taken at that seq."""
        shutil.rmtree(into, ignore_errors=True)
        into.mkdir(parents=True)
        shutil.copytree(self.root / EVENTS_DIR, into / EVENTS_DIR)
        if snapshot_seq is not None:
            (into / SNAPSHOT_NAME).write_bytes(self.snapshots[snapshot_seq])
        return into


def build(root: Path, r: random.Random, n_jobs: int, trials: int, salt: int = 0) -> Pristine:
    """Write the log through the store, keeping a snapshot taken after every few batches."""
    store = Store.open(root, segment_bytes=SEGMENT_BYTES, snapshot_every=10**9, clock=Clock())
    snapshots: dict[int, bytes] = {}
    for i, batch in enumerate(_events(r, n_jobs, trials, salt)):
        store.append(batch)
        if i % 3 == 2:
            store.snapshot()
            snapshots[store.state.last_seq] = (root / SNAPSHOT_NAME).read_bytes()
    store.close(snapshot=False)
    (root / SNAPSHOT_NAME).unlink()
    events = root / EVENTS_DIR
    records = list(LogScan(events))
    lines: list[Line] = []
    for seg in list_segments(events):
        pos = 0
        for k, raw in enumerate((events / seg).read_bytes().split(b"\n")[:-1]):
            rec = records[len(lines)]
            lines.append(Line(len(lines), seg, k + 1, pos, pos + len(raw) + 1, rec.ts))
            pos += len(raw) + 1
    assert [x.index + 1 for x in lines] == [rec.seq for rec in records]
    return Pristine(root, records, lines, snapshots)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Pristine:
    r = rng("log-damage")
    built = build(tmp_path_factory.mktemp("pristine"), r, n_jobs=4, trials=30 if full() else 12)
    assert len(built.segments) >= 4, "the log must span several segments"
    return built


@pytest.fixture
def work(tmp_path: Path) -> Path:
    return tmp_path / "state"


# ---- the checks -----------------------------------------------------------------------------


@dataclass
class Tally:
    cases: int = 0
    recovered: int = 0
    refused: int = 0
    ambiguous: int = 0
    problems: list[str] | None = None

    def __post_init__(self) -> None:
        self.problems = []

    def bad(self, what: str) -> None:
        assert self.problems is not None
        self.problems.append(what)

    def row(self, injected: str, note: str = "") -> None:
        assert self.problems is not None
        record(
            "log damage",
            injected,
            cases=self.cases,
            recovered=self.recovered,
            refused=self.refused,
            violations=len(self.problems),
            note=note,
        )
        assert not self.problems, "\n".join(self.problems[:20])


def reopen_problems(
    state_dir: Path, pristine: Pristine, keep: int, repaired: bool, snapshot_warned: bool = False
) -> list[str]:
    """Open the store on ``state_dir``; it must hold exactly the first ``keep`` records
    (then a ``log.repaired`` record when ``repaired``) and a state that is their fold."""
    try:
        store = Store.open(state_dir, segment_bytes=SEGMENT_BYTES)
    except LogError as exc:
        return [f"refused, expected to recover {keep} records: {exc}"]
    try:
        state = store.state
        report = store.report
        found = []
        if (report.torn is not None) != repaired:
            found.append(f"torn tail reported {report.torn}, expected repaired={repaired}")
        if snapshot_warned and report.snapshot_problem is None:
            found.append("the snapshot was used, expected a warning and a full replay")
        # The log goes on from where it was cut.
        store.append([DaemonStarted(pid=1, version="after")])
    finally:
        store.close(snapshot=False)
    records = list(LogScan(state_dir / EVENTS_DIR))
    want = [r.payload for r in pristine.records[:keep]]
    if [r.payload for r in records[:keep]] != want:
        found.append(f"the first {keep} records are not the intact log's")
    tail = [r.payload.get("type") for r in records[keep:]]
    expected_tail = (["log.repaired"] if repaired else []) + ["daemon.started"]
    if tail != expected_tail:
        found.append(f"after the {keep} intact records: {tail}, expected {expected_tail}")
    if [r.seq for r in records] != list(range(1, len(records) + 1)):
        found.append("seq is not contiguous after recovery")
    replayed = fold([decode_record(r) for r in records])  # ``state`` took the append too
    if state != replayed:
        found.append("the recovered state differs from a full replay of the recovered log")
    return found


def expect_refusal(
    state_dir: Path, kind: type[LogError], segment: Path, line: int | None
) -> list[str]:
    """Start-up and verify must both refuse, naming ``segment`` (and ``line``)."""
    found = []
    try:
        Store.open(state_dir, segment_bytes=SEGMENT_BYTES).close(snapshot=False)
    except kind as exc:
        if getattr(exc, "segment", None) != segment:
            found.append(f"{kind.__name__} names {getattr(exc, 'segment', None)}, not {segment}")
        if line is not None and getattr(exc, "line", None) != line:
            found.append(f"{kind.__name__} names line {getattr(exc, 'line', None)}, not {line}")
        if str(segment) not in str(exc):
            found.append(f"the message does not name the segment: {exc}")
    except Exception as exc:  # anything else is the finding
        found.append(f"raised {type(exc).__name__} instead of {kind.__name__}: {exc}")
    else:
        found.append(f"start-up accepted a log it must refuse with {kind.__name__}")
    report = verify(state_dir)
    want = "corrupt" if kind is LogCorrupt else "gap"
    if report.problem is None or report.problem["kind"] != want:
        found.append(f"verify reported {report.problem}, expected {want}")
    elif report.problem["segment"] != str(segment):
        found.append(f"verify names {report.problem['segment']}, not {segment}")
    return found


# ---- truncation ------------------------------------------------------------------------------


def test_truncation_at_every_byte_of_the_last_records_recovers_exactly_the_whole_ones(
    pristine: Pristine, work: Path
) -> None:
    last = pristine.segments[-1]
    in_last = pristine.seg_lines(last)
    n = 6 if full() else 2
    first = in_last[-min(n, len(in_last))]
    before = first.index  # records in earlier segments and before ``first``
    tally = Tally()
    for cut in range(first.start, in_last[-1].end + 1):
        pristine.restore(work)
        seg = work / EVENTS_DIR / last
        seg.write_bytes(seg.read_bytes()[:cut])
        whole = before + sum(1 for x in in_last[first.line - 1 :] if x.end <= cut)
        torn = cut not in {x.end for x in in_last} and cut != first.start
        tally.cases += 1
        report = verify(work)
        if (report.problem is not None) != torn or report.last_seq != whole:
            tally.bad(f"cut at {cut}: verify said {report.problem}, last seq {report.last_seq}")
        found = reopen_problems(work, pristine, whole, repaired=torn)
        if found:
            tally.bad(f"cut at {cut}: {'; '.join(found)}")
        else:
            tally.recovered += 1
    tally.row(
        f"truncated at every byte of the last {n} records (Store.open, log verify)",
        note=f"{tally.cases} cut points in segment {last}",
    )


# ---- zeroed sectors and flipped bits -----------------------------------------------------------


def _damage_verdict(pristine: Pristine, segment: str, lo: int, hi: int) -> tuple[str, Line]:
    """``("refuse" | "repair", first damaged record)`` for damage to bytes [lo, hi)."""
    lines = pristine.seg_lines(segment)
    hit = [x for x in lines if x.start < hi and x.end > lo]
    first = hit[0]
    last_batch = pristine.lines[-1].batch
    after = [x for x in lines if x.start >= hi]
    later_segments = [s for s in pristine.segments if s > segment]
    later = [x for x in pristine.lines if x.segment in later_segments]
    if later or any(x.batch != last_batch for x in after):
        return "refuse", first
    return "repair", first


def _check_damage(
    pristine: Pristine, work: Path, segment: str, lo: int, hi: int, tally: Tally, what: str
) -> None:
    verdict, first = _damage_verdict(pristine, segment, lo, hi)
    seg_path = work / EVENTS_DIR / segment
    tally.cases += 1
    if verdict == "refuse":
        found = expect_refusal(work, LogCorrupt, seg_path, first.line)
        if not found:
            tally.refused += 1
    else:
        report = verify(work)
        found = [] if report.problem else [f"verify found nothing ({report.as_dict()})"]
        found += reopen_problems(work, pristine, first.index, repaired=True)
        if not found:
            tally.recovered += 1
            if first.batch != pristine.lines[-1].batch:
                tally.ambiguous += 1
    if found:
        tally.bad(f"{what} ({verdict}): {'; '.join(found)}")


def test_zeroed_sectors_are_repaired_at_the_tail_and_refused_in_the_middle(
    pristine: Pristine, work: Path
) -> None:
    r = rng("zeroed-sectors")
    tally = Tally()
    segments = pristine.segments
    sizes = {s: (pristine.root / EVENTS_DIR / s).stat().st_size for s in segments}
    n = 300 if full() else 60
    # Every sector of the last segment (where a torn write lands), then random ones.
    targets = [(segments[-1], k) for k in range(-(-sizes[segments[-1]] // SECTOR))]
    while len(targets) < n:
        seg = r.choices(segments, weights=[sizes[s] for s in segments])[0]
        targets.append((seg, r.randrange(-(-sizes[seg] // SECTOR))))
    for seg, k in targets:
        pristine.restore(work)
        path = work / EVENTS_DIR / seg
        data = bytearray(path.read_bytes())
        lo, hi = k * SECTOR, min((k + 1) * SECTOR, len(data))
        data[lo:hi] = bytes(hi - lo)
        path.write_bytes(bytes(data))
        _check_damage(pristine, work, seg, lo, hi, tally, f"{seg} sector {k} zeroed")
    tally.row(
        "a zeroed 512-byte sector (every sector of the last segment, then random ones)",
        note=f"{tally.refused} refused naming segment and line; {tally.recovered} tails cut, "
        f"{tally.ambiguous} of them also cutting records of an earlier batch that shared the "
        f"damaged region with the last one (indistinguishable from a torn last write; kept "
        f"in the backup, recorded as log.repaired)",
    )


def test_a_flipped_bit_anywhere_is_detected_never_silently_accepted(
    pristine: Pristine, work: Path
) -> None:
    r = rng("flipped-bits")
    tally = Tally()
    segments = pristine.segments
    sizes = {s: (pristine.root / EVENTS_DIR / s).stat().st_size for s in segments}
    n = 1500 if full() else 150
    for _ in range(n):
        seg = r.choices(segments, weights=[sizes[s] for s in segments])[0]
        byte, bit = r.randrange(sizes[seg]), r.randrange(8)
        pristine.restore(work)
        path = work / EVENTS_DIR / seg
        data = bytearray(path.read_bytes())
        data[byte] ^= 1 << bit
        path.write_bytes(bytes(data))
        _check_damage(pristine, work, seg, byte, byte + 1, tally, f"{seg} byte {byte} bit {bit}")
    tally.row(
        "a flipped bit at a random place of the log",
        note=f"{tally.refused} refused naming segment and line, {tally.recovered} in the last "
        f"batch cut as a torn tail",
    )


def test_a_flipped_bit_in_the_snapshot_means_a_warning_and_a_full_replay(
    pristine: Pristine, work: Path
) -> None:
    r = rng("snapshot-bits")
    tally = Tally()
    seq = max(pristine.snapshots)
    size = len(pristine.snapshots[seq])
    for _ in range(200 if full() else 40):
        pristine.restore(work, snapshot_seq=seq)
        snap = bytearray((work / SNAPSHOT_NAME).read_bytes())
        byte = r.randrange(size)
        snap[byte] ^= 1 << r.randrange(8)
        (work / SNAPSHOT_NAME).write_bytes(bytes(snap))
        tally.cases += 1
        found = reopen_problems(
            work, pristine, len(pristine.records), repaired=False, snapshot_warned=True
        )
        if found:
            tally.bad(f"snapshot byte {byte}: {'; '.join(found)}")
        else:
            tally.recovered += 1
    tally.row("a flipped bit in snapshot.json")


# ---- missing segments ---------------------------------------------------------------------


def test_a_deleted_middle_or_first_segment_is_refused_as_a_gap(
    pristine: Pristine, work: Path
) -> None:
    segments = pristine.segments
    tally = Tally()
    snaps = sorted(pristine.snapshots)
    for i, gone in enumerate(segments[:-1]):
        # No snapshot, a snapshot in the last segment (start-up skips the gap's records),
        # and one taken just before the missing segment.
        before = [s for s in snaps if pristine.lines[s - 1].segment < gone]
        for snapshot_seq in {None, snaps[-1], before[-1] if before else None}:
            pristine.restore(work, snapshot_seq=snapshot_seq)
            (work / EVENTS_DIR / gone).unlink()
            tally.cases += 1
            after = work / EVENTS_DIR / segments[i + 1]
            found = expect_refusal(work, LogGap, after, None)
            if found:
                tally.bad(f"{gone} deleted, snapshot at {snapshot_seq}: {'; '.join(found)}")
            else:
                tally.refused += 1
    tally.row("a deleted middle or first segment (with and without a snapshot past it)")


def test_a_deleted_first_segment_behind_a_snapshot_is_refused_as_a_gap(
    pristine: Pristine, work: Path
) -> None:
    """The bug: start-up checked only that the segments it skipped (thanks to the snapshot)
    follow each other, not that the first starts at seq 1; with the first segment gone it
    started as if nothing were missing, and only a later full replay would have noticed."""
    segments = pristine.segments
    pristine.restore(work, snapshot_seq=max(pristine.snapshots))
    (work / EVENTS_DIR / segments[0]).unlink()
    found = expect_refusal(work, LogGap, work / EVENTS_DIR / segments[1], 1)
    assert not found, found


# ---- snapshots that do not fit -------------------------------------------------------------


def test_a_stale_snapshot_replays_the_longer_tail_to_the_same_state(
    pristine: Pristine, work: Path
) -> None:
    tally = Tally()
    full_state = fold([decode_record(r) for r in pristine.records])
    total = len(pristine.records)
    for seq in sorted(pristine.snapshots):
        pristine.restore(work, snapshot_seq=seq)
        tally.cases += 1
        store = Store.open(work, segment_bytes=SEGMENT_BYTES)
        try:
            found = []
            if store.report.snapshot_seq != seq or store.report.replayed != total - seq:
                found.append(
                    f"snapshot seq {store.report.snapshot_seq}, replayed {store.report.replayed}"
                )
            if store.state != full_state:
                found.append("the state differs from a full replay")
        finally:
            store.close(snapshot=False)
        if found:
            tally.bad(f"snapshot at {seq}: {'; '.join(found)}")
        else:
            tally.recovered += 1
    tally.row("a stale snapshot (every one the log's writer took, each older than the log)")


def _cut_to(work: Path, pristine: Pristine, keep: int) -> None:
    """The log as an older backup has it: the first ``keep`` records only."""
    events = work / EVENTS_DIR
    last = pristine.lines[keep - 1]
    for seg in pristine.segments:
        if seg > last.segment:
            (events / seg).unlink()
    path = events / last.segment
    path.write_bytes(path.read_bytes()[: last.end])


def test_a_snapshot_from_the_future_means_a_warning_and_a_full_replay(
    pristine: Pristine, work: Path
) -> None:
    r = rng("future-snapshot")
    tally = Tally()
    newest = max(pristine.snapshots)
    ends = sorted({x.index + 1 for x in pristine.lines if x.index + 1 < newest})
    # Every segment's last record (the restored backup ends at a segment boundary), and some.
    bounds = {pristine.seg_lines(s)[-1].index + 1 for s in pristine.segments}
    keeps = sorted({k for k in bounds if k < newest} | set(r.sample(ends, min(30, len(ends)))))
    for keep in keeps:
        pristine.restore(work, snapshot_seq=newest)
        _cut_to(work, pristine, keep)
        tally.cases += 1
        report = verify(work)
        found = reopen_problems(work, pristine, keep, repaired=False, snapshot_warned=True)
        if report.snapshot.get("status") != "ahead of the log":
            found.append(f"verify says the snapshot is {report.snapshot}")
        if found:
            tally.bad(f"log cut back to {keep} records: {'; '.join(found)}")
        else:
            tally.recovered += 1
    tally.row("a snapshot from the future (the log restored from an older backup)")


def test_a_snapshot_from_another_state_dir_is_not_used(
    pristine: Pristine, work: Path, tmp_path: Path
) -> None:
    """The bug: a snapshot copied from another state directory whose log has a record of
    the same seq ending at the same offset (same jobs, same byte sizes, other values) was
    taken as this log's: its state replaced the log's, silently."""
    tally = Tally()
    # The same shape (same seeds for sizes), other values: another host ran the same jobs.
    other = build(
        tmp_path / "other", rng("log-damage"), n_jobs=4, trials=30 if full() else 12, salt=0x5A5A
    )
    same = [
        s
        for s in sorted(other.snapshots)
        if s in pristine.snapshots
        and other.lines[s - 1].end == pristine.lines[s - 1].end
        and other.lines[s - 1].segment == pristine.lines[s - 1].segment
        and other.records[s - 1].payload != pristine.records[s - 1].payload
    ]
    assert same, "the two logs share no snapshot position; the case cannot be built"
    for seq in same:
        pristine.restore(work)
        (work / SNAPSHOT_NAME).write_bytes(other.snapshots[seq])
        tally.cases += 1
        status = verify(work).snapshot
        found = reopen_problems(
            work, pristine, len(pristine.records), repaired=False, snapshot_warned=True
        )
        if status.get("status") != "does not fit the log":
            found.append(f"verify says the snapshot is {status}")
        if found:
            tally.bad(f"another log's snapshot at seq {seq}: {'; '.join(found)}")
        else:
            tally.recovered += 1
    tally.row("a snapshot from another state dir (same seq, same offset, other records)")


# ---- the command ---------------------------------------------------------------------------------


def _sentinel_verify(state_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "sentinel_daemon.cli",
            "log",
            "verify",
            "--state-dir",
            str(state_dir),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_sentinel_log_verify_names_the_damage_and_exits_non_zero(
    pristine: Pristine, work: Path
) -> None:
    segments = pristine.segments
    middle = pristine.seg_lines(segments[1])[2]
    tail = pristine.lines[-1]

    def intact(w: Path) -> None:
        pass

    def torn(w: Path) -> None:
        seg = w / EVENTS_DIR / tail.segment
        seg.write_bytes(seg.read_bytes()[: tail.end - 7])

    def corrupt(w: Path) -> None:
        seg = w / EVENTS_DIR / middle.segment
        data = bytearray(seg.read_bytes())
        data[middle.start + 20] ^= 0x04
        seg.write_bytes(bytes(data))

    def gap(w: Path) -> None:
        (w / EVENTS_DIR / segments[1]).unlink()

    cases: list[tuple[str, Callable[[Path], None], int, list[str]]] = [
        ("intact", intact, 0, ["ok:"]),
        ("torn", torn, 1, ["torn tail", tail.segment, f"line {tail.line}"]),
        ("corrupt", corrupt, 1, ["corrupt", middle.segment, f"line {middle.line}"]),
        ("gap", gap, 1, ["gap", segments[2]]),
    ]
    if not full():
        cases = cases[2:]
    tally = Tally()
    for name, damage, code, words in cases:
        pristine.restore(work)
        damage(work)
        done = _sentinel_verify(work)
        tally.cases += 1
        out = done.stdout + done.stderr
        missing = [w for w in words if w not in out]
        if done.returncode != code or missing:
            tally.bad(f"{name}: exit {done.returncode} (want {code}), missing {missing}: {out}")
        elif code:
            tally.refused += 1
        else:
            tally.recovered += 1
    tally.row("`sentinel log verify` on intact, torn, corrupt and gapped logs")
