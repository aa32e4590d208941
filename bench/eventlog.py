"""Benchmark Sentinel's event log: durable appends, group commit, replay, snapshot start-up.

Run ``python bench/eventlog.py`` (a few minutes) or ``--quick`` (tiny sizes, a smoke test
whose figures mean nothing). Work files go to a temporary folder on the repository's own
filesystem (``/tmp`` when it is the same filesystem, else ``.bench-tmp/`` in the
repository, or under ``--dir``); it is removed at the end.

It prints one table; each row is one figure against its baseline or target:

1. ``durable appends, 1 record/fsync``: :meth:`FileLog.append` of one realistic
   ``trial.saved`` record per call, against a bare ``os.write`` + ``os.fdatasync`` loop of
   lines of the same size on the same disk. Target: >= 0.80x the bare rate. The two are
   measured in alternating rounds (the disk is shared and noisy); the figures are medians.
2. ``group commit of 10 / 100``: records/s when each append carries 10 or 100 records
   (one write, one fdatasync), measured in the same rounds. Target: >= 10x / >= 50x the
   single-record rate above. A note gives the bare loop's rate for the same batches, i.e.
   what the disk itself allows, so a miss can be put on the disk or on FileLog.
3. ``replay``: a 1,000,000-record log (a daemon's history: jobs of 100 trials each that
   run and complete, the last one still running; 64 MiB segments), read from a warm page
   cache. ``read, verify, parse`` is the log's replay: :class:`LogScan` reads each record,
   checks its checksum and seq, and parses its JSON. Target: >= 300,000 records/s. The
   ``+ events + fold`` row (marked ``*``, for reference) adds what start-up without a
   snapshot does on top: each record validated into its pydantic event and folded into the
   state (:func:`store.replay`).
   ``scrub`` (for reference) checks what start-up with a snapshot does not replay:
   :func:`~sentinel_daemon.log.scrub.scrub` reads every record of the same log, checking
   its checksum and the seq chain (no JSON parse); the ratio is against the replay's
   ``read, verify, parse`` rate of the same run.
4. ``start-up with snapshot``: :meth:`Store.open` (lock, load the snapshot, check the
   segment chain, replay the tail, open the log) of logs of 10k, 100k and 1M records plus
   a 100-record tail not covered by the snapshot. Target: < 1 s each, whatever the length.

``ratio`` is measured / baseline (rows 1-2) or measured / target (rows 3-4); ``need``
says which way it must go. Notes under the table give spreads, sizes and breakdowns.
Figures are reported, never asserted: the exit code is 0 unless the benchmark crashes.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import random
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import pydantic
from benchkit import (
    Report,
    bench_arguments,
    filesystem_of,
    print_notes_and_summary,
    progress,
    rate,
    verdict,
    work_root,
)
from benchkit import print_table as print_rows

from sentinel_daemon.core.events import (
    Event,
    JobCompleted,
    JobSubmitted,
    ModelKind,
    ModelPromoted,
    Stage,
    StageCompleted,
    StageStarted,
    TrialPruned,
    TrialSaved,
    TrialStarted,
    decode,
    encode,
)
from sentinel_daemon.core.state import State
from sentinel_daemon.fsutil import fsync_dir
from sentinel_daemon.layout import EVENTS_DIR, SNAPSHOT_NAME
from sentinel_daemon.log.records import encode_line, format_ts
from sentinel_daemon.log.scrub import scrub
from sentinel_daemon.log.segfiles import segment_name
from sentinel_daemon.log.segments import FileLog, LogScan
from sentinel_daemon.log.snapshot import load_snapshot
from sentinel_daemon.log.store import Store, replay

REPO = Path(__file__).resolve().parent.parent
SEGMENT_BYTES = 64 << 20
#: Trials per job in the replayed history (half XGBoost, half LightGBM).
TRIALS_PER_JOB = 100
#: Records per job: submitted, stage.started, the trials, stage.completed, promoted, completed.
PER_JOB = 2 + 2 * TRIALS_PER_JOB + 3
TAIL = 100
MIN_BARE_RATIO = 0.8
MIN_GROUP_GAIN = {10: 10.0, 100: 50.0}
MIN_REPLAY_RATE = 300_000.0
MAX_STARTUP_S = 1.0


@dataclass(frozen=True)
class Sizes:
    """How much work each part does; ``--quick`` shrinks everything."""

    rounds: int
    single_appends: int  # per round, for the bare loop and for FileLog alike
    group_appends: dict[int, int]  # batch size -> appends per round
    replay_records: int
    scan_repeats: int
    replay_repeats: int
    startup_records: tuple[int, ...]
    startup_repeats: int


FULL = Sizes(
    rounds=15,
    single_appends=400,
    group_appends={10: 150, 100: 30},
    replay_records=1_000_000,
    scan_repeats=3,
    replay_repeats=1,
    startup_records=(10_000, 100_000, 1_000_000),
    startup_repeats=3,
)
QUICK = Sizes(
    rounds=3,
    single_appends=50,
    group_appends={10: 20, 100: 5},
    replay_records=2_000,
    scan_repeats=2,
    replay_repeats=1,
    startup_records=(500, 1_000, 2_000),
    startup_repeats=2,
)


@dataclass(frozen=True)
class Row:
    """One line of the table; ``passed`` is None for a figure that counts towards nothing."""

    what: str
    measured: str
    need: str
    ratio: str
    passed: bool | None

    @property
    def result(self) -> str:
        return verdict(self.passed)


# ---- workload ---------------------------------------------------------------------------


class Workload:
    """Realistic payloads, exactly as :func:`events.encode` writes them.

    The log is a daemon's history: job after job, each ``job.submitted``, ``stage.started``
    (search), :data:`TRIALS_PER_JOB` ``trial.started`` / ``trial.saved`` pairs (XGBoost and
    LightGBM alternating), ``stage.completed``, ``model.promoted`` and ``job.completed``;
    the log ends inside a running job. Record ``i`` depends only on ``i`` (and the seed),
    so any range can be generated without the ones before it.
    """

    def __init__(self, seed: int = 7) -> None:
        self._seed = seed
        self._started = encode(
            TrialStarted(
                job_id="x",
                trial=0,
                model=ModelKind.XGBOOST,
                attempt=1,
                params={
                    "n_estimators": 300,
                    "learning_rate": 0.05,
                    "max_depth": 7,
                    "subsample": 0.8,
                    "colsample_bytree": 0.7,
                    "min_child_weight": 3.0,
                },
            )
        )
        self._saved = encode(
            TrialSaved(
                job_id="x",
                trial=0,
                model=ModelKind.XGBOOST,
                value=0.93,
                metrics={
                    "roc_auc": 0.93,
                    "pr_auc": 0.61,
                    "log_loss": 0.08,
                    "recall_at_1pct_fpr": 0.52,
                },
                artifact="jobs/x/trials/0/model.ubj",
                sha256="0" * 64,
                duration_s=31.4,
            )
        )

    @staticmethod
    def job_id(j: int) -> str:
        return f"ieee-fraud-{j:08x}"

    def submitted(self, j: int) -> dict[str, Any]:
        spec = {
            "name": "ieee-fraud",
            "data": {
                "transactions": "/srv/data/train_transaction.parquet",
                "identity": "/srv/data/train_identity.parquet",
            },
            "models": ["xgboost", "lightgbm"],
            "search": {
                "n_trials": TRIALS_PER_JOB // 2,
                "parallelism": 2,
                "sampler": "tpe",
                "pruner": "median",
                "seed": j,
            },
            "validation": {"test_fraction": 0.2, "valid_fraction": 0.2},
        }
        return encode(
            JobSubmitted(
                job_id=self.job_id(j),
                name="ieee-fraud",
                spec=spec,
                file=f"inbox/ieee-fraud-{j}.yaml",
                file_sha256=f"{j:064x}",
            )
        )

    def payload(self, i: int) -> dict[str, Any]:
        j, k = divmod(i, PER_JOB)
        job_id = self.job_id(j)
        r = random.Random(self._seed * 1_000_003 + i)
        if k == 0:
            return self.submitted(j)
        if k == 1:
            return encode(StageStarted(job_id=job_id, stage=Stage.SEARCH))
        k -= 2
        if k < 2 * TRIALS_PER_JOB:
            trial = k // 2
            model = (ModelKind.XGBOOST, ModelKind.LIGHTGBM)[trial % 2].value
            if k % 2 == 0:
                params = {
                    "n_estimators": r.randint(100, 600),
                    "learning_rate": r.uniform(0.01, 0.3),
                    "max_depth": r.randint(3, 12),
                    "subsample": r.uniform(0.5, 1.0),
                    "colsample_bytree": r.uniform(0.5, 1.0),
                    "min_child_weight": r.uniform(1.0, 10.0),
                }
                return {
                    **self._started,
                    "job_id": job_id,
                    "trial": trial,
                    "model": model,
                    "params": params,
                }
            value = r.uniform(0.85, 0.97)
            return {
                **self._saved,
                "job_id": job_id,
                "trial": trial,
                "model": model,
                "value": value,
                "metrics": {
                    "roc_auc": value,
                    "pr_auc": r.uniform(0.4, 0.7),
                    "log_loss": r.uniform(0.05, 0.2),
                    "recall_at_1pct_fpr": r.uniform(0.3, 0.6),
                },
                "artifact": f"jobs/{job_id}/trials/{trial}/model.ubj",
                "sha256": r.randbytes(32).hex(),
                "duration_s": round(r.uniform(5, 90), 3),
            }
        k -= 2 * TRIALS_PER_JOB
        if k == 0:
            return encode(
                StageCompleted(job_id=job_id, stage=Stage.SEARCH, outputs={"best_trial": 1})
            )
        if k == 1:
            return encode(
                ModelPromoted(
                    job_id=job_id,
                    trial=1,
                    model=ModelKind.LIGHTGBM,
                    artifact=f"jobs/{job_id}/best/model.txt",
                    sha256="1" * 64,
                    value=0.95,
                )
            )
        return encode(JobCompleted(job_id=job_id, best_trial=1, best_value=0.95, promoted=True))

    def payloads(self, start: int, count: int) -> Iterator[dict[str, Any]]:
        for i in range(start, start + count):
            yield self.payload(i)

    def small_payloads(self, count: int) -> list[dict[str, Any]]:
        """``count`` distinct ``trial.pruned`` payloads: lines of about 200 bytes."""
        return [
            encode(
                TrialPruned(
                    job_id=self.job_id(i // 100),
                    trial=i % 100,
                    model=ModelKind.XGBOOST,
                    step=10 * (i % 30),
                    value=0.9 + i % 7 / 100,
                )
            )
            for i in range(count)
        ]

    def saved_payloads(self, count: int) -> list[dict[str, Any]]:
        """``count`` distinct ``trial.saved`` payloads (for the append benchmarks)."""
        out: list[dict[str, Any]] = []
        i = 0
        while len(out) < count:
            payload = self.payload(i)
            if payload["type"] == "trial.saved":
                out.append(payload)
            i += 1
        return out

    def check(self) -> None:
        """Prove the hand-built payloads are what the real encoder writes."""
        for i in range(PER_JOB + 4):
            p = self.payload(i)
            assert encode(decode(p)) == p, p


def build_log(events_dir: Path, workload: Workload, count: int) -> None:
    """Write ``count`` records straight into segment files, as FileLog would lay them out.

    Like :meth:`FileLog.append` it starts a new segment once the current one has reached
    :data:`SEGMENT_BYTES`; a timestamp is shared by each 100 records (a group commit).
    """
    events_dir.mkdir(parents=True, exist_ok=True)
    base = datetime(2025, 1, 1, tzinfo=UTC)
    ts = format_ts(base)
    first, lines, size = 1, list[bytes](), 0
    for seq, payload in enumerate(workload.payloads(0, count), start=1):
        if seq % 100 == 1:
            ts = format_ts(base + timedelta(milliseconds=10 * seq))
        if size >= SEGMENT_BYTES:
            _write_segment(events_dir / segment_name(first), lines)
            first, lines, size = seq, [], 0
        line = encode_line(seq, ts, payload)
        lines.append(line)
        size += len(line)
    if lines:
        _write_segment(events_dir / segment_name(first), lines)
    fsync_dir(events_dir)


def _write_segment(path: Path, lines: list[bytes]) -> None:
    with open(path, "xb") as fh:
        fh.write(b"".join(lines))
        fh.flush()
        os.fsync(fh.fileno())


def log_bytes(events_dir: Path) -> int:
    return sum(p.stat().st_size for p in events_dir.glob("*.jsonl"))


# ---- 1-2: appends -----------------------------------------------------------------------


def open_file_log(events_dir: Path) -> FileLog:
    scan = LogScan(events_dir)
    for _ in scan:
        pass
    log, _, _ = FileLog.open(events_dir, scan, segment_bytes=SEGMENT_BYTES)
    return log


def timed(action: Callable[[], int]) -> float:
    """Run ``action`` (which returns how many records it wrote); records per second."""
    t0 = time.perf_counter()
    n = action()
    return n / (time.perf_counter() - t0)


def bench_appends(
    root: Path, sizes: Sizes, payloads: list[dict[str, Any]], report: Report, *, counts: bool
) -> None:
    """Rows 1 and 2: bare write+fdatasync vs FileLog.append of 1, 10 and 100 records.

    ``counts`` says whether these rows count towards the summary (the record size the
    targets were set with) or are shown for reference (another size).
    """
    per_round = sizes.single_appends
    root.mkdir(parents=True, exist_ok=True)
    ts = format_ts(datetime.now(UTC))
    # Same bytes FileLog writes (seq numbers of the same width), encoded ahead of time.
    bare_lines = [encode_line(i + 1, ts, p) for i, p in enumerate(payloads)]
    line_len = statistics.median(len(line) for line in bare_lines)
    batch_sizes = sorted(sizes.group_appends)
    groups = {
        b: [payloads[i : i + b] for i in range(0, len(payloads) - b + 1, b)] for b in batch_sizes
    }
    blocks = {
        b: [b"".join(bare_lines[i : i + b]) for i in range(0, len(g) * b, b)]
        for b, g in groups.items()
    }

    bare_fd = os.open(root / "bare.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    logs = {b: open_file_log(root / f"events-{b}") for b in [1, *batch_sizes]}
    cursor = dict.fromkeys(["bare", "1", *map(str, batch_sizes)], 0)
    block_cursor = dict.fromkeys(batch_sizes, 0)

    def run_bare(count: int) -> int:
        start = cursor["bare"]
        for line in bare_lines[start : start + count]:
            os.write(bare_fd, line)
            os.fdatasync(bare_fd)
        cursor["bare"] = start + count
        return count

    def run_bare_group(batch: int, count: int) -> int:
        """What the disk allows: the same bytes as ``run_group``, one write + fdatasync."""
        start, pool = block_cursor[batch], blocks[batch]
        for k in range(count):
            os.write(bare_fd, pool[(start + k) % len(pool)])
            os.fdatasync(bare_fd)
        block_cursor[batch] = (start + count) % len(pool)
        return count * batch

    def run_single(count: int) -> int:
        log, start = logs[1], cursor["1"]
        for p in payloads[start : start + count]:
            log.append([p])
        cursor["1"] = start + count
        return count

    def run_group(batch: int, count: int) -> int:
        log, start, pool = logs[batch], cursor[str(batch)], groups[batch]
        chunk = [pool[(start + k) % len(pool)] for k in range(count)]
        for group in chunk:
            log.append(group)
        cursor[str(batch)] = (start + count) % len(pool)
        return sum(len(g) for g in chunk)

    kinds: list[tuple[str, Callable[[int], int], int]] = [
        ("bare", run_bare, per_round),
        ("1", run_single, per_round),
        *[(str(b), partial(run_group, b), sizes.group_appends[b]) for b in batch_sizes],
        *[(f"bare{b}", partial(run_bare_group, b), sizes.group_appends[b]) for b in batch_sizes],
    ]
    rates: dict[str, list[float]] = {name: [] for name, _, _ in kinds}
    try:
        for _, action, _ in kinds:  # warm-up: files exist, code paths are hot
            action(min(20, per_round))
        cursor["bare"] = cursor["1"] = per_round  # warm-up used the first round's share
        for r in range(sizes.rounds):
            progress(f"append round {r + 1}/{sizes.rounds}")
            order = kinds[r % len(kinds) :] + kinds[: r % len(kinds)]
            for name, action, count in order:
                rates[name].append(timed(partial(action, count)))
    finally:
        os.close(bare_fd)
        for log in logs.values():
            log.close()

    med = {name: statistics.median(v) for name, v in rates.items()}
    bare, single = med["bare"], med["1"]
    ratio = single / bare
    report.rows.append(
        Row(
            f"durable appends, 1 record/fsync ({line_len:.0f} B)",
            rate(single),
            f"bare {rate(bare)}; need >= {MIN_BARE_RATIO:.2f}x",
            f"{ratio:.2f}x",
            (ratio >= MIN_BARE_RATIO) if counts else None,
        )
    )
    for b in batch_sizes:
        gain = med[str(b)] / single
        report.rows.append(
            Row(
                f"group commit of {b} ({line_len:.0f} B, records/s)",
                rate(med[str(b)]),
                f"1/fsync {rate(single)}; need >= {MIN_GROUP_GAIN.get(b, b):.0f}x",
                f"{gain:.1f}x",
                (gain >= MIN_GROUP_GAIN.get(b, b)) if counts else None,
            )
        )
    paired = statistics.median(s / b for s, b in zip(rates["1"], rates["bare"], strict=True))
    report.notes.append(
        f"appends of {line_len:.0f} B records: {sizes.rounds} alternating rounds of "
        f"{per_round} single appends each; "
        f"per-round bare {min(rates['bare']):,.0f}-{max(rates['bare']):,.0f}/s, "
        f"FileLog {min(rates['1']):,.0f}-{max(rates['1']):,.0f}/s, "
        f"median of paired ratios {paired:.2f}x; "
        + ", ".join(
            f"group {b}: {min(rates[str(b)]):,.0f}-{max(rates[str(b)]):,.0f}/s" for b in batch_sizes
        )
    )
    report.notes.append(
        f"what the disk allows for {line_len:.0f} B records, bare write+fdatasync of the same "
        "batches in the same rounds: "
        + ", ".join(
            f"{b} lines {rate(med[f'bare{b}'])} ({med[f'bare{b}'] / bare:.1f}x bare single, "
            f"FileLog reaches {med[str(b)] / med[f'bare{b}']:.2f}x of it)"
            for b in batch_sizes
        )
    )


# ---- 3: replay ----------------------------------------------------------------------------


def scan_rate(events_dir: Path) -> tuple[float, int]:
    """Read every record: checksum, seq order, and its JSON parsed into a dict."""
    t0 = time.perf_counter()
    n = 0
    for record in LogScan(events_dir):
        record.payload  # noqa: B018  # parse the JSON: a replay of the log reads every field
        n += 1
    return n / (time.perf_counter() - t0), n


def fold_rate(events_dir: Path) -> tuple[float, int]:
    state = State()
    t0 = time.perf_counter()
    n = replay(LogScan(events_dir), state)
    dt = time.perf_counter() - t0
    del state
    gc.collect()
    return n / dt, n


def bench_replay(state_dir: Path, sizes: Sizes, workload: Workload, report: Report) -> None:
    """Row 3: scan alone and full fold of a freshly built log (warm page cache)."""
    n = sizes.replay_records
    events_dir = state_dir / EVENTS_DIR
    progress(f"building a {n:,}-record log")
    t0 = time.perf_counter()
    build_log(events_dir, workload, n)
    built_s = time.perf_counter() - t0
    size = log_bytes(events_dir)
    segs = len(list(events_dir.glob("*.jsonl")))

    scans = []
    for i in range(sizes.scan_repeats):
        progress(f"scan {i + 1}/{sizes.scan_repeats}")
        r, got = scan_rate(events_dir)
        assert got == n, (got, n)
        scans.append(r)
    scrubs = []
    for i in range(sizes.scan_repeats):
        progress(f"scrub {i + 1}/{sizes.scan_repeats}")
        found = scrub(events_dir)
        assert found.ok and found.records == n, (found.findings[:3], found.records, n)
        scrubs.append(n / found.seconds)
    folds = []
    for i in range(sizes.replay_repeats):
        progress(f"full fold {i + 1}/{sizes.replay_repeats}")
        r, got = fold_rate(events_dir)
        assert got == n, (got, n)
        folds.append(r)
    scan, fold = statistics.median(scans), statistics.median(folds)
    scrubbed = statistics.median(scrubs)
    report.rows.append(
        Row(
            f"replay {n:,}: read, verify, parse",
            rate(scan),
            f"need >= {MIN_REPLAY_RATE:,.0f}/s",
            f"{scan / MIN_REPLAY_RATE:.2f}x",
            scan >= MIN_REPLAY_RATE,
        )
    )
    report.rows.append(
        Row(
            f"replay {n:,}: + events + fold*",
            rate(fold),
            "same target, for reference",
            f"{fold / MIN_REPLAY_RATE:.2f}x",
            None,
        )
    )
    report.rows.append(
        Row(
            f"scrub {n:,} records: checksums, seq chain",
            rate(scrubbed),
            f"replay read/verify/parse {rate(scan)}",
            f"{scrubbed / scan:.2f}x",
            None,
        )
    )
    report.notes.append(
        f"scrub: {1_000_000 / scrubbed:.2f} s per million records (runs "
        f"{', '.join(f'{x:,.0f}' for x in scrubs)}/s); Store.open does not scrub, as start-up "
        f"with a snapshot must stay under 1 s at 1,000,000 records: Store.scrub() runs right "
        f"after start-up and reads only the records the snapshot covers"
    )
    report.notes.append(
        f"replay log: {n:,} records, {size / 2**20:,.1f} MiB in {segs} segment(s), built in "
        f"{built_s:.1f} s; warm page cache; scan runs {', '.join(f'{x:,.0f}' for x in scans)}/s; "
        f"fold runs {', '.join(f'{x:,.0f}' for x in folds)}/s; at the scan rate alone, "
        f"{n:,} records take {n / scan:.2f} s, the fold {n / fold:.2f} s"
    )
    report.notes.append(
        "* informational: on top of the log's replay, each record validated into its pydantic "
        "event and folded into the state; start-up replays only the tail after a snapshot"
    )


# ---- 4: start-up with a snapshot ------------------------------------------------------------


def prepare_startup(
    state_dir: Path, n: int, workload: Workload, *, built: bool
) -> tuple[float, int]:
    """Give ``state_dir`` a log of ``n`` records, a snapshot at ``n``, and a TAIL after it.

    The snapshot is written the way the daemon writes it: a cold :meth:`Store.open`
    replays the whole log and, having replayed ``snapshot_every`` records, snapshots.
    Returns the cold open's own ``report.seconds`` and how many records it replayed.
    """
    if not built:
        build_log(state_dir / EVENTS_DIR, workload, n)
    store = Store.open(state_dir, segment_bytes=SEGMENT_BYTES, snapshot_every=n)
    try:
        cold_s, replayed = store.report.seconds, store.report.replayed
        tail: list[Event] = [decode(p) for p in workload.payloads(n, TAIL)]
        for i in range(0, TAIL, 10):
            store.append(tail[i : i + 10])
    finally:
        store.close(snapshot=False)
    del store
    gc.collect()
    return cold_s, replayed


def bench_startup(
    root: Path, replay_dir: Path, sizes: Sizes, workload: Workload, report: Report
) -> None:
    """Row 4: Store.open with a snapshot covering all but the last TAIL records."""
    for n in sizes.startup_records:
        built = n == sizes.replay_records
        state_dir = replay_dir if built else root / f"startup-{n}"
        progress(f"start-up {n:,}: cold open + snapshot")
        cold_s, cold_n = prepare_startup(state_dir, n, workload, built=built)
        snap_path = state_dir / SNAPSHOT_NAME
        t0 = time.perf_counter()
        snap = load_snapshot(snap_path)
        load_s = time.perf_counter() - t0
        trials = sum(len(j.trials) for j in snap.state.jobs.values()) if snap else 0
        del snap
        gc.collect()

        times: list[float] = []
        problems: set[str] = set()
        report_s: list[float] = []
        for i in range(sizes.startup_repeats):
            progress(f"start-up {n:,}: open {i + 1}/{sizes.startup_repeats}")
            t0 = time.perf_counter()
            store = Store.open(state_dir, segment_bytes=SEGMENT_BYTES, snapshot_every=n)
            times.append(time.perf_counter() - t0)
            rep = store.report
            store.close(snapshot=False)
            report_s.append(rep.seconds)
            if rep.snapshot_seq != n or rep.replayed != TAIL:
                problems.add(
                    f"snapshot_seq={rep.snapshot_seq} replayed={rep.replayed} "
                    f"problem={rep.snapshot_problem}"
                )
            del store
            gc.collect()
        t = statistics.median(times)
        ok = t < MAX_STARTUP_S and not problems
        report.rows.append(
            Row(
                f"start-up with snapshot, {n:,} + {TAIL} tail",
                f"{t:.3f} s",
                f"need < {MAX_STARTUP_S:.3f} s",
                f"{t / MAX_STARTUP_S:.2f}x",
                ok,
            )
        )
        report.notes.append(
            f"start-up {n:,}: snapshot {snap_path.stat().st_size / 2**20:,.1f} MiB "
            f"({trials:,} trials in state), load_snapshot alone {load_s:.3f} s, "
            f"Store.open runs {', '.join(f'{x:.3f}' for x in times)} s "
            f"(report.seconds median {statistics.median(report_s):.3f} s); "
            f"cold open without snapshot {cold_s:.2f} s for {cold_n:,} records "
            f"({cold_n / cold_s:,.0f}/s)"
            + (f"; SNAPSHOT NOT USED: {'; '.join(sorted(problems))}" if problems else "")
        )


# ---- main ---------------------------------------------------------------------------------


def code_version() -> str:
    """The commit benchmarked, and whether the package had uncommitted changes."""
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO), "log", "-1", "--format=%h %s"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--", "sentinel_daemon"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.split("\n")
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git)"
    changed = [line[3:] for line in dirty if line.strip()]
    return head[:72] + (f" + uncommitted: {', '.join(changed)}" if changed else "")


def header(args: argparse.Namespace, root: Path) -> list[str]:
    dev, fstype = filesystem_of(root)
    same = root.stat().st_dev == REPO.stat().st_dev
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    mode = "quick: tiny sizes, figures mean nothing" if args.quick else "full"
    return [
        f"Sentinel event-log benchmark ({mode})",
        f"command : {shlex.join([sys.executable, *sys.argv])}",
        f"machine : nproc={os.cpu_count()} (usable {affinity}), Python {platform.python_version()} "
        f"({platform.python_implementation()}), {platform.platform()}",
        f"libs    : orjson {orjson.__version__}, pydantic {pydantic.VERSION}",
        f"code    : {code_version()}",
        f"dir     : {root} on {dev} ({fstype}), "
        f"{'same filesystem as the repo' if same else 'NOT the repo filesystem'}",
        f"started : {format_ts(datetime.now(UTC))}",
    ]


def print_table(rows: list[Row]) -> None:
    print_rows(
        ("what", "measured", "baseline / target", "ratio", "result"),
        [(r.what, r.measured, r.need, r.ratio, r.result) for r in rows],
        (False, True, False, True, False),
    )


def main(argv: list[str] | None = None) -> int:
    args = bench_arguments(__doc__, argv)
    sizes = QUICK if args.quick else FULL

    t_start = time.perf_counter()
    report = Report()
    with work_root("sentinel-bench-", args.dir) as root:
        for line in header(args, root):
            print(line)
        print(flush=True)
        workload = Workload()
        workload.check()
        count = sizes.single_appends * (sizes.rounds + 1)
        # The targets were set with ~200-byte records (MEASURED.md's anchors): the events
        # written most often (trial.started/pruned, stage, worker events) are that size.
        bench_appends(root / "small", sizes, workload.small_payloads(count), report, counts=True)
        # A trial.saved record, the largest routine one, for reference.
        bench_appends(root / "large", sizes, workload.saved_payloads(count), report, counts=False)
        replay_dir = root / "replay"
        bench_replay(replay_dir, sizes, Workload(seed=11), report)
        bench_startup(root, replay_dir, sizes, Workload(seed=11), report)

    print_table(report.rows)
    print_notes_and_summary(report, t_start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
