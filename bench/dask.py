"""The same small job through ``local`` and through ``dask`` on this machine, side by side.

Run ``python bench/dask.py`` (about three minutes on two idle cores) or ``--quick`` (tiny
sizes, a smoke test whose figures mean nothing). For the issue that added the Dask
dispatch backend (``dispatch.backend: dask``): what does the extra hop cost per trial?
There is no target; figures are printed, never asserted (exit code 0 unless it crashes).

One synthetic data set is generated once. Each round runs the same job (XGBoost, small
fixed trials: ``n_estimators`` 5, depth 2; N trials, parallelism 2, random sampler) once
per backend, the order alternating between rounds; every run has a fresh state directory,
fresh daemon and fresh workers:

- ``local``: ``python -m sentinel_daemon.cli run --state-dir S --workers 2`` (two local
  worker processes, ``cpu_count // 2`` training threads each);
- ``dask``: a ``distributed.LocalCluster`` started here (two worker processes, one thread
  each, ``resources={"GPU": 1}``, the scheduler's ``allowed-failures`` at 0, as the
  integration tests and docs have it; ``SENTINEL_DASK_THREADS`` gives each worker the
  local workers' training threads), and the daemon with ``--workers 0`` and
  ``SENTINEL_DISPATCH__BACKEND=dask``, ``SENTINEL_DISPATCH__SCHEDULER=<its address>``.

The job is submitted once the daemon is ready (local: both ``worker.started`` records;
dask: ``dispatch.scheduler_connected`` in its log) and has idled ``SETTLE_S``. Figures come
from the event log (``STATE/events/*.jsonl``, the records' ``ts``) and each saved model's
``meta.json``:

- ``trials/s``: N over the first ``trial.started`` to the search stage's
  ``stage.completed`` (median of the rounds);
- ``overhead per trial``: ``trial.started`` to ``trial.saved`` minus ``train_seconds`` +
  ``score_seconds``, median and p90 over every round's trials except each worker's first
  (it loads the data);
- ``first-trial latency``: ``job.submitted`` to the first ``trial.saved`` (the prepare
  stage, the Dask path check, the worker's imports and data load: all in it).

Work files go to a temporary folder on the repository's filesystem (see ``benchkit``),
removed at the end unless ``--keep``. Every daemon, worker and cluster it starts is
stopped, also on an error or SIGTERM.

This file is named ``dask.py``: run as a script, its folder comes first on ``sys.path``,
where it would stand in for the ``dask`` package (which ``distributed`` imports, and
lightgbm through ``bench/daemon.py``). The lines below move the folder to the end before
anything else is imported (``benchkit`` and ``daemon`` are still found there).
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE] + [str(_HERE)]

import argparse
import contextlib
import logging
import os
import platform
import shlex
import statistics
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

import dask
import distributed
import psutil
import xgboost
from benchkit import bench_arguments, filesystem_of, print_table, progress
from daemon import (
    QUICK,
    BenchError,
    DaemonProcess,
    Data,
    Processes,
    Session,
    TrialTime,
    bench_session,
    job_doc,
    make_data,
    ms,
    p90,
    running,
    search_seconds,
    trial_times,
    ts_epoch,
)

from sentinel_daemon import __version__

BACKENDS = ("local", "dask")
WORKERS = 2  # local worker processes, Dask worker processes, and the job's parallelism
#: Small fixed trials: the ML work is short, so the hand-offs show.
SMALL = {"n_estimators": [5, 5], "max_depth": [2, 2]}
#: Idle time between "ready" and the job's submission (workers finish starting up).
SETTLE_S = 1.5
#: How often the benchmark looks at the log while a job runs (the figures are the records'
#: own ts; a slow look leaves the two cores to the trials).
LOOK_S = 0.05
CONNECTED = b'"dispatch.scheduler_connected"'


@dataclass(frozen=True)
class Sizes:
    rows: int
    trials: int  # per job
    rounds: int  # each runs one job per backend
    timeout_s: float  # the longest wait for any one thing the daemon should do


FULL = Sizes(rows=2_000, trials=150, rounds=6, timeout_s=300.0)
QUICK_SIZES = Sizes(rows=2_000, trials=4, rounds=1, timeout_s=90.0)


@dataclass
class Run:
    """One job on one backend."""

    backend: str
    rate: float  # trials/s over the search stage
    first_latency: float  # job.submitted -> the first trial.saved
    to_first_started: float  # job.submitted -> the first trial.started
    ready_s: float  # daemon start (and cluster start, for dask) -> ready
    cluster_s: float  # LocalCluster() (dask only)
    steady: list[TrialTime]  # every trial but each worker's first
    firsts: list[TrialTime]  # each worker's first trial (it loads the data)


@dataclass
class Results:
    runs: dict[str, list[Run]] = field(default_factory=lambda: {b: [] for b in BACKENDS})


# ---- processes -------------------------------------------------------------------------


@contextlib.contextmanager
def spawning_bare_workers(stdout: Path) -> Iterator[None]:
    """While worker processes are spawned: they neither re-run this script nor print here.

    A spawned process runs its parent's main script again (as ``__mp_main__``) when the
    script has a ``__file__``: the Dask workers would import this benchmark, and with it
    xgboost, lightgbm and optuna (``bench/daemon.py``), before their first trial, which a
    ``dask worker`` process does not, and local workers do not. Their stdout (the trial
    code's console log lines) goes to a file, as local workers' logs go to the daemon's.
    """
    main = sys.modules["__main__"]
    script = main.__dict__.pop("__file__", None)
    sys.stdout.flush()
    saved = os.dup(1)
    with open(stdout, "ab") as fh:
        os.dup2(fh.fileno(), 1)
    try:
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        if script is not None:
            main.__file__ = script


@contextlib.contextmanager
def local_cluster(scratch: Path) -> Iterator[distributed.LocalCluster]:
    """Two Dask worker processes with one "GPU" each, as ``dask worker --resources GPU=1``.

    The worker processes are this process's children: any still running after
    ``close`` (or after a failed start) are killed. (Not multiprocessing's resource
    tracker, also started by the first spawn: it serves this process until it exits.)
    """
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}

    def new_workers() -> list[psutil.Process]:
        found = []
        for proc in me.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if proc.pid not in before and "spawn_main" in " ".join(proc.cmdline()):
                    found.append(proc)
        return found

    spawned: list[psutil.Process] = []
    cluster = None
    scratch.mkdir()
    try:
        with (
            dask.config.set({"distributed.scheduler.allowed-failures": 0}),
            spawning_bare_workers(scratch / "workers.out"),
        ):
            cluster = distributed.LocalCluster(
                n_workers=WORKERS,
                threads_per_worker=1,
                processes=True,
                resources={"GPU": 1},
                dashboard_address=None,
                silence_logs=logging.ERROR,
                local_directory=str(scratch),
            )
        spawned = new_workers()
        yield cluster
    finally:
        if cluster is None:  # a failed start: whatever it started
            spawned = new_workers()
        else:
            with contextlib.suppress(Exception):
                cluster.close(timeout=30)
        for proc in spawned:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(spawned, timeout=10)


def wait_connected(daemon: DaemonProcess, timeout: float) -> None:
    """Until the daemon's log says its Dask client is connected to the scheduler."""
    deadline = time.monotonic() + timeout
    while CONNECTED not in daemon.log_path.read_bytes():
        daemon.check_alive()
        if time.monotonic() > deadline:
            raise BenchError(f"the daemon did not connect to the scheduler in {timeout:.0f} s")
        time.sleep(0.02)


# ---- one job ---------------------------------------------------------------------------


def run_job(
    backend: str,
    round_no: int,
    root: Path,
    data: Data,
    sizes: Sizes,
    procs: Processes,
) -> Run:
    folder = root / f"{backend}-{round_no}"
    folder.mkdir()
    doc = job_doc(f"bench-{backend}-{round_no}", data, n_trials=sizes.trials,
                  parallelism=WORKERS, space={"xgboost": SMALL})  # fmt: skip
    session_sizes = replace(QUICK, timeout_s=sizes.timeout_s, quiesce=False)
    with contextlib.ExitStack() as stack:
        t0 = time.perf_counter()
        cluster_s = 0.0
        settings: dict[str, str] = {}
        if backend == "dask":
            cluster = stack.enter_context(local_cluster(folder / "dask-scratch"))
            cluster_s = time.perf_counter() - t0
            settings = {
                "SENTINEL_DISPATCH__BACKEND": "dask",
                "SENTINEL_DISPATCH__SCHEDULER": cluster.scheduler_address,
            }
        workers = WORKERS if backend == "local" else 0
        daemon = procs.daemon(folder / "state", workers, root, folder / "daemon.log", settings)
        stack.enter_context(running(procs, daemon, backend))
        session = Session(daemon, session_sizes)
        stack.callback(session.log.close)
        session.wait_ready()  # local: daemon.started and both worker.started
        if backend == "dask":
            wait_connected(daemon, sizes.timeout_s)
        ready_s = time.perf_counter() - t0
        time.sleep(SETTLE_S)
        job_id, records = session.run_job(doc, pause=LOOK_S)
    times = trial_times(folder / "state", records)
    if len(times) != sizes.trials:
        raise BenchError(f"{backend}: job {job_id} saved {len(times)} of {sizes.trials} trials")
    submitted = next(ts_epoch(r["ts"]) for r in records if r["type"] == "job.submitted")
    first_started = min(ts_epoch(r["ts"]) for r in records if r["type"] == "trial.started")
    first_saved = min(ts_epoch(r["ts"]) for r in records if r["type"] == "trial.saved")
    firsts: dict[str, TrialTime] = {}  # worker -> its first trial
    for t in sorted(times, key=lambda t: t.started):
        firsts.setdefault(t.worker, t)
    first_trials = {t.trial for t in firsts.values()}
    return Run(
        backend=backend,
        rate=sizes.trials / search_seconds(records),
        first_latency=first_saved - submitted,
        to_first_started=first_started - submitted,
        ready_s=ready_s,
        cluster_s=cluster_s,
        steady=[t for t in times if t.trial not in first_trials],
        firsts=list(firsts.values()),
    )


# ---- the report ------------------------------------------------------------------------


def ratio(dask_value: float, local_value: float) -> str:
    return f"{dask_value / local_value:.2f}x" if local_value else "-"


def table(results: Results) -> list[tuple[str, str, str, str, str]]:
    local, dsk = results.runs["local"], results.runs["dask"]

    def med(runs: list[Run], get: Callable[[Run], float]) -> float:
        return statistics.median(get(run) for run in runs)

    def pooled(runs: list[Run]) -> list[float]:
        return [t.overhead for run in runs for t in run.steady]

    rows = []
    rate_l, rate_d = med(local, lambda r: r.rate), med(dsk, lambda r: r.rate)
    rows.append(("trials/s over the search stage", f"{rate_l:.2f}/s", f"{rate_d:.2f}/s",
                 ratio(rate_d, rate_l), "higher"))  # fmt: skip
    ov_l, ov_d = pooled(local), pooled(dsk)
    rows.append(("overhead per trial, median", ms(statistics.median(ov_l)),
                 ms(statistics.median(ov_d)),
                 ratio(statistics.median(ov_d), statistics.median(ov_l)), "lower"))  # fmt: skip
    rows.append(("overhead per trial, p90", ms(p90(ov_l)), ms(p90(ov_d)),
                 ratio(p90(ov_d), p90(ov_l)), "lower"))  # fmt: skip
    fl_l, fl_d = med(local, lambda r: r.first_latency), med(dsk, lambda r: r.first_latency)
    rows.append(("first-trial latency, job.submitted -> trial.saved", f"{fl_l:.3f} s",
                 f"{fl_d:.3f} s", ratio(fl_d, fl_l), "lower"))  # fmt: skip
    ml_l = statistics.median(t.ml_s for r in local for t in r.steady)
    ml_d = statistics.median(t.ml_s for r in dsk for t in r.steady)
    rows.append(("train+score per trial, median (reference)", ms(ml_l), ms(ml_d),
                 ratio(ml_d, ml_l), "-"))  # fmt: skip
    return rows


def notes(results: Results, sizes: Sizes, threads: int) -> list[str]:
    out = [
        f"job: XGBoost n_estimators 5, depth 2, random sampler, {sizes.trials} trials, "
        f"parallelism {WORKERS}, {sizes.rows:,} rows; {sizes.rounds} rounds, each a fresh state "
        f"directory, daemon and workers per backend, the order alternating; {threads} training "
        f"thread(s) per worker on both backends (cpu_count // {WORKERS})"
    ]
    for b in BACKENDS:
        runs = results.runs[b]
        steady = [t for run in runs for t in run.steady]
        daemon_side = [t.wall - t.duration_s for t in steady]
        worker_side = [t.duration_s - t.ml_s for t in steady]
        firsts = [t.wall for run in runs for t in run.firsts]
        out.append(
            f"{b}: trials/s per round " + " ".join(f"{run.rate:.2f}" for run in runs)
            + f"; overhead over {len(steady)} trials (each worker's first left out), range "
            f"{ms(min(t.overhead for t in steady))}..{ms(max(t.overhead for t in steady))}, "
            f"split: daemon side (wall - the worker's duration_s) median "
            f"{ms(statistics.median(daemon_side))}, worker side (duration_s - train+score) "
            f"median {ms(statistics.median(worker_side))}"
        )  # fmt: skip
        out.append(
            f"{b}: first trial: job.submitted -> first trial.started (prepare stage) median "
            f"{statistics.median(r.to_first_started for r in runs):.3f} s; each worker's first "
            f"trial (imports, data load) wall median {statistics.median(firsts):.3f} s; "
            f"trials per worker " + "; ".join(
                "/".join(str(n) for n in sorted(per_worker(run).values(), reverse=True))
                for run in runs
            ) + f"; ready in {statistics.median(r.ready_s for r in runs):.1f} s"
            + (f" (LocalCluster() {statistics.median(r.cluster_s for r in runs):.1f} s of it)"
               if b == "dask" else "")
        )  # fmt: skip
    return out


def per_worker(run: Run) -> dict[str, int]:
    counts: dict[str, int] = {}
    for t in [*run.firsts, *run.steady]:
        counts[t.worker] = counts.get(t.worker, 0) + 1
    return counts


# ---- main --------------------------------------------------------------------------------


def header(args: argparse.Namespace, root: Path, threads: int) -> list[str]:
    dev, fstype = filesystem_of(root)
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    mode = "quick: tiny sizes, figures mean nothing" if args.quick else "full"
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return [
        f"Sentinel dispatch benchmark, local vs dask ({mode})",
        f"command : {shlex.join([sys.executable, *sys.argv])}",
        f"machine : nproc={os.cpu_count()} (usable {affinity}), load average {load} at start, "
        f"Python {platform.python_version()}, {platform.platform()}",
        f"libs    : sentinel {__version__}, distributed {distributed.__version__}, dask "
        f"{dask.__version__}, xgboost {xgboost.__version__}",
        f"workers : {WORKERS} per backend, {threads} training thread(s) each",
        f"dir     : {root} on {dev} ({fstype})",
    ]


def bench(root: Path, sizes: Sizes, procs: Processes, results: Results) -> None:
    progress(f"generating {sizes.rows:,} rows")
    # Under the daemons' working folder: inside their default data roots.
    data = make_data(root / "data", sizes.rows, seed=1)
    for r in range(sizes.rounds):
        order = BACKENDS if r % 2 == 0 else BACKENDS[::-1]
        for backend in order:
            progress(f"round {r + 1}/{sizes.rounds}: {backend}, {sizes.trials} trials")
            run = run_job(backend, r, root, data, sizes, procs)
            results.runs[backend].append(run)
            progress(
                f"  {run.rate:.2f} trials/s, overhead median "
                f"{ms(statistics.median(t.overhead for t in run.steady))}, first trial.saved "
                f"after {run.first_latency:.2f} s"
            )


def main(argv: list[str] | None = None) -> int:
    args = bench_arguments(__doc__, argv, keep=True)
    sizes = QUICK_SIZES if args.quick else FULL
    # What the supervisor gives each of `--workers 2`; the Dask worker processes read it.
    threads = max(1, (os.cpu_count() or 1) // WORKERS)
    os.environ["SENTINEL_DASK_THREADS"] = str(threads)
    # With dashboard_address=None the scheduler still serves HTTP (health, metrics), on
    # 8787 or, when that is taken (another cluster on the host), on a random port.
    warnings.filterwarnings("ignore", r"Port \d+ is already in use", UserWarning)

    t_start = time.perf_counter()
    procs = Processes()
    results = Results()
    with bench_session("sentinel-bench-dask-", args, procs) as root:
        for line in header(args, root, threads):
            print(line)
        print(flush=True)
        bench(root, sizes, procs, results)

    print_table(
        ("what", "local", "dask", "dask/local", "better"),
        table(results),
        (False, True, True, True, False),
    )
    print()
    for note in notes(results, sizes, threads):
        print(f"note: {note}")
    print()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"summary: no targets (figures only); wall time {time.perf_counter() - t_start:.1f} s; "
        f"load average {load} at the end"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
