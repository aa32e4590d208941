"""Benchmark the queue directory: command hand-offs per second against a bare maildir loop.

Run ``python bench/queuedir.py`` (about fifteen seconds) or ``--quick`` (tiny sizes, a smoke test
whose figures mean nothing). Work files go to a temporary folder on the repository's own
filesystem (``/tmp`` when it is the same filesystem, else ``.bench-tmp/`` in the
repository, or under ``--dir``); it is removed at the end.

Rows, each measured in alternating rounds on the same disk (it is shared and noisy) and
reported as medians; ``vs bare`` is each rate over row 1's:

1. ``bare maildir hand-off``: create a file in ``tmp/``, write the bytes of a real command,
   fsync, rename into ``new/``, fsync ``new/``: what the disk allows for one durable
   hand-off (two fsyncs). MEASURED.md's anchor for it is printed beside it.
2. ``put alone``: :meth:`Queue.put` of one command (the same two fsyncs, plus the
   idempotency look-ups and serialisation). Target: >= 0.80x the bare hand-off.
3. ``bare round trip``: the file operations of row 4 in a plain loop (two hand-offs, a
   rename, a listing, two reads, two unlinks). Reference for row 4.
4. ``round trip``: per command, ``put``, ``claim``, an :class:`Outbox` ``saved`` post,
   ``results``, ``ack`` and ``finish``, one command at a time. Four fsyncs (put and post
   are durable; claim, ack and finish are plain renames and unlinks, yet each dirties
   metadata the next fsync must commit), so well under half the bare hand-off rate is
   what the disk allows. Target: >= 0.80x the bare round trip (row 3).
5. ``progress post``: an :class:`Outbox` ``progress`` post, as a worker sends every few
   boosting rounds (and the daemon's core loop for each Dask task). Written and renamed
   without fsyncs, since progress only feeds the pruner in memory; before, it was a durable
   post like any other, i.e. row 1's two fsyncs. For information.

Figures are reported, never asserted: the exit code is 0
unless the benchmark crashes.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

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

from sentinel_daemon.fsutil import fsync_dir
from sentinel_daemon.queue.maildir import Outbox, Queue
from sentinel_daemon.queue.messages import Progress, Saved, TrialCommand, TrialData

REPO = Path(__file__).resolve().parent.parent
ANCHOR = "1,100-1,300/s"  # MEASURED.md: queue hand-off, create in tmp/ .. fsync new/
MIN_PUT_RATIO = 0.80
MIN_ROUND_TRIP_RATIO = 0.80
STAGES = ("put", "claim", "post", "results", "ack", "finish")


@dataclass(frozen=True)
class Sizes:
    rounds: int
    per_round: int  # commands per round, for each of the three loops


FULL = Sizes(rounds=9, per_round=300)
QUICK = Sizes(rounds=2, per_round=20)


@dataclass(frozen=True)
class Row:
    """One line of the table; ``passed`` is None for a figure that counts towards nothing."""

    what: str
    measured: str
    ratio: str  # measured / the bare maildir hand-off
    need: str
    passed: bool | None

    @property
    def result(self) -> str:
        return verdict(self.passed)


def commands(count: int, job: str) -> list[TrialCommand]:
    """Realistic commands: a full XGBoost parameter set, IEEE-CIS paths."""
    data = TrialData(
        transactions=Path("/var/lib/sentinel/data/train_transaction.csv"),
        identity=Path("/var/lib/sentinel/data/train_identity.csv"),
        cache_dir=Path("/var/lib/sentinel/cache"),
        test_fraction=0.2,
        valid_fraction=0.2,
    )
    params: dict[str, str | int | float | bool | None] = {
        "n_estimators": 400,
        "learning_rate": 0.0512,
        "max_depth": 8,
        "min_child_weight": 3.2,
        "subsample": 0.81,
        "colsample_bytree": 0.67,
        "reg_alpha": 0.013,
        "reg_lambda": 1.7,
        "gamma": 0.2,
    }
    return [
        TrialCommand(
            job_id=job,
            trial=t,
            attempt=1,
            model="xgboost",
            params=params,
            data=data,
            artifact_dir=f"models/{job}",
            report_every=10,
        )
        for t in range(count)
    ]


def bare_handoff(folder: Path, blobs: list[bytes]) -> int:
    """The baseline: tmp/ -> new/ with the same two fsyncs as a durable put."""
    tmp, new = folder / "tmp", folder / "new"
    tmp.mkdir(parents=True)
    new.mkdir()
    for i, blob in enumerate(blobs):
        name = f"{i}.json"
        fd = os.open(tmp / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        os.write(fd, blob)
        os.fsync(fd)
        os.close(fd)
        os.rename(tmp / name, new / name)
        fsync_dir(new)
    return len(blobs)


def bare_round_trip(folder: Path, blobs: list[bytes], result: bytes) -> int:
    """The file operations of a round trip, without the protocol's code around them.

    Hand-off of the command into ``pending/``, a rename into the worker's folder and a read,
    hand-off of a result, a listing and read of ``results/``, then two unlinks: what the disk
    and the kernel cost, so that the round-trip row can show the protocol's own overhead.
    """
    tmp, pending, mine, results = (folder / n for n in ("tmp", "pending", "w1", "results"))
    for d in (tmp, pending, mine, results):
        d.mkdir(parents=True)

    def hand_off(name: str, data: bytes, into: Path) -> None:
        fd = os.open(tmp / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        os.write(fd, data)
        os.fsync(fd)
        os.close(fd)
        os.rename(tmp / name, into / name)
        fsync_dir(into)

    for i, blob in enumerate(blobs):
        name, res = f"{i}.json", f"w1.{i:012d}.saved.json"
        hand_off(name, blob, pending)
        os.rename(pending / name, mine / name)
        (mine / name).read_bytes()
        hand_off(res, result, results)
        for found in os.listdir(results):
            (results / found).read_bytes()
        os.unlink(results / res)
        os.unlink(mine / name)
    return len(blobs)


def put_alone(folder: Path, batch: list[TrialCommand]) -> int:
    queue = Queue(folder)
    for command in batch:
        queue.put(command)
    return len(batch)


def progress_posts(folder: Path, count: int) -> int:
    outbox = Outbox(Queue(folder), "w1")
    outbox.next_seq()  # the block of numbers is reserved (one durable write) before timing
    for step in range(count):
        outbox.send(Progress, "bench-1.0.1", step=step, value=0.9)
    return count


def round_trip(folder: Path, batch: list[TrialCommand], stage_s: dict[str, float]) -> int:
    """One command at a time through the whole protocol; adds each stage's time."""
    queue = Queue(folder)
    outbox = Outbox(queue, "w1")
    clock = time.perf_counter
    for command in batch:
        t0 = clock()
        queue.put(command)
        t1 = clock()
        claimed = queue.claim("w1")
        assert claimed is not None
        cid = claimed.command.command_id
        t2 = clock()
        outbox.send(
            Saved,
            cid,
            artifact=f"models/{cid}.ubj",
            sha256="0" * 64,
            metrics={"auc": 0.93, "logloss": 0.18},
            value=0.93,
            train_seconds=30.1,
            duration_s=31.4,
        )
        t3 = clock()
        (path, _message), *_ = queue.results()
        t4 = clock()
        queue.ack(path)
        t5 = clock()
        queue.finish("w1", cid)
        t6 = clock()
        durations = (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5)
        for stage, dt in zip(STAGES, durations, strict=True):
            stage_s[stage] += dt
    return len(batch)


def bench(root: Path, sizes: Sizes, report: Report) -> None:
    per = sizes.per_round
    # Distinct commands per loop and round, so no put is an idempotent no-op.
    pools = {
        kind: [commands(per, f"{kind}-{r}") for r in range(sizes.rounds + 1)]
        for kind in ("bare", "put", "trip")
    }
    blobs = [[c.model_dump_json().encode() for c in batch] for batch in pools["bare"]]
    result_blob = b'{"kind":"saved","artifact":"models/x.ubj","sha256":"' + b"0" * 64 + b'"}'
    stage_s = dict.fromkeys(STAGES, 0.0)
    warm_stages = dict.fromkeys(STAGES, 0.0)
    loops: list[tuple[str, Callable[[Path, int], int]]] = [
        ("bare", lambda d, r: bare_handoff(d, blobs[r])),
        ("put", lambda d, r: put_alone(d, pools["put"][r])),
        ("bare-trip", lambda d, r: bare_round_trip(d, blobs[r], result_blob)),
        ("trip", lambda d, r: round_trip(d, pools["trip"][r], stage_s if r else warm_stages)),
        ("progress", lambda d, r: progress_posts(d, per)),
    ]
    rates: dict[str, list[float]] = {name: [] for name, _ in loops}
    for name, action in loops:  # warm-up with round 0's commands: code paths are hot
        action(root / f"warm-{name}", 0)
    for r in range(1, sizes.rounds + 1):
        progress(f"round {r}/{sizes.rounds}")
        order = loops[r % len(loops) :] + loops[: r % len(loops)]
        for name, action in order:
            t0 = time.perf_counter()
            n = action(root / f"{name}-{r}", r)
            rates[name].append(n / (time.perf_counter() - t0))

    med = {name: statistics.median(v) for name, v in rates.items()}
    bare, bare_trip = med["bare"], med["bare-trip"]

    def vs_bare(name: str) -> str:
        return f"{med[name] / bare:.2f}x"

    put_ratio = med["put"] / bare
    trip_ratio = med["trip"] / bare_trip
    report.rows += [
        Row(
            "bare maildir hand-off (tmp -> new/, 2 fsyncs)",
            rate(bare),
            vs_bare("bare"),
            f"MEASURED.md anchor {ANCHOR} (reference)",
            None,
        ),
        Row(
            "put alone (Queue.put, 2 fsyncs)",
            rate(med["put"]),
            vs_bare("put"),
            f"need >= {MIN_PUT_RATIO:.2f}x the bare hand-off",
            put_ratio >= MIN_PUT_RATIO,
        ),
        Row(
            "bare round trip (same file ops, 4 fsyncs)",
            rate(bare_trip),
            vs_bare("bare-trip"),
            "what the disk allows for row below (reference)",
            None,
        ),
        Row(
            "round trip put+claim+post+results+ack+finish",
            rate(med["trip"]),
            vs_bare("trip"),
            f"{trip_ratio:.2f}x the bare round trip; need >= {MIN_ROUND_TRIP_RATIO:.2f}x",
            trip_ratio >= MIN_ROUND_TRIP_RATIO,
        ),
        Row(
            "progress post (Outbox.send Progress, no fsync)",
            rate(med["progress"]),
            vs_bare("progress"),
            "for information: was a durable post (row 1)",
            None,
        ),
    ]
    spreads = ", ".join(f"{n} {rate(min(v))}..{rate(max(v))}" for n, v in rates.items())
    report.notes.append(
        f"{sizes.rounds} alternating rounds of {per} commands per loop; spread {spreads}"
    )
    paired = {
        n: statistics.median(x / b for x, b in zip(rates[n], rates["bare"], strict=True))
        for n in ("put", "bare-trip", "trip", "progress")
    }
    report.notes.append(
        "paired ratios (median of per-round ratios): "
        + ", ".join(f"{n} {v:.2f}x" for n, v in paired.items())
    )
    commands_timed = per * sizes.rounds
    total = sum(stage_s.values())
    report.notes.append(
        "round trip per command: "
        + ", ".join(f"{s} {1e6 * stage_s[s] / commands_timed:,.0f} us" for s in STAGES)
        + f" (total {1e6 * total / commands_timed:,.0f} us)"
    )
    size = statistics.median(len(b) for b in blobs[0])
    report.notes.append(f"command file {size:.0f} B; the Saved result is about half that")


# ---- main ---------------------------------------------------------------------------------


def header(args: argparse.Namespace, root: Path) -> list[str]:
    dev, fstype = filesystem_of(root)
    same = root.stat().st_dev == REPO.stat().st_dev
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    mode = "quick: tiny sizes, figures mean nothing" if args.quick else "full"
    return [
        f"Sentinel queue benchmark ({mode})",
        f"command : {shlex.join([sys.executable, *sys.argv])}",
        f"machine : nproc={os.cpu_count()} (usable {affinity}), Python {platform.python_version()} "
        f"({platform.python_implementation()}), {platform.platform()}",
        f"libs    : orjson {orjson.__version__}, pydantic {pydantic.VERSION}",
        f"dir     : {root} on {dev} ({fstype}), "
        f"{'same filesystem as the repo' if same else 'NOT the repo filesystem'}",
    ]


def print_table(rows: list[Row]) -> None:
    print_rows(
        ("what", "measured", "vs bare", "target", "result"),
        [(r.what, r.measured, r.ratio, r.need, r.result) for r in rows],
        (False, True, True, False, False),
    )


def main(argv: list[str] | None = None) -> int:
    args = bench_arguments(__doc__, argv)
    sizes = QUICK if args.quick else FULL

    t_start = time.perf_counter()
    report = Report()
    with work_root("sentinel-bench-queue-", args.dir) as root:
        for line in header(args, root):
            print(line)
        print(flush=True)
        bench(root, sizes, report)

    print_table(report.rows)
    print_notes_and_summary(report, t_start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
