"""Does the GPU host pay? Issue 14's job under three worker layouts, side by side in one run.

Run ``python bench/gpu.py`` on a GPU host (``bash bench/gpu-device.sh`` on the project's
GPU machine: it installs the carried wheels first), or ``--quick`` (tiny sizes, a smoke
test whose figures mean nothing; ``workers.gpus=[0]``, so it runs on a CPU machine, where
the "GPU" workers' XGBoost falls back to the CPU with a note). Figures are printed, never
asserted: the exit code is 0 unless the benchmark crashes.

The job (issue 14): 200,000 generated rows (``ml.synth``, as ``sentinel gen-data --rows
200000``: a 128,000 x 473 train matrix), XGBoost and LightGBM, 10 trials each,
``parallelism: 8``, TPE seed 7, no pruner, ``xgboost: {n_estimators: [150, 400],
max_depth: [4, 10]}``, ``lightgbm: {n_estimators: [150, 300], num_leaves: [15, 127]}``.
Each layout gets a fresh state directory and a fresh daemon (``sentinel run``, default
settings but for those named), started once the previous one has stopped:

- ``today``: the layout before issue 14, one worker per GPU and nothing else, with the
  threads it had (``cores // workers``) and the LightGBM device it picked by itself
  (OpenCL, ``models.lightgbm.device: opencl`` now). The daemon's own plan would give such
  a GPU worker one thread (GPU workers feed the device), so these workers are started the
  way ``sentinel-worker@.service`` starts them: ``sentinel worker --gpu N --threads T``
  with ``CUDA_VISIBLE_DEVICES=N``, beside a daemon with ``--workers 0``;
- ``new``: the new default (``workers.gpus`` discovered, ``per_gpu``, ``cpu`` automatic:
  GPU workers for XGBoost, CPU workers for LightGBM);
- ``cpu``: CPU only on the same host: ``CUDA_VISIBLE_DEVICES=`` and ``workers.gpus=[]``.

Per layout, from the event log (records' ``ts``) and each model's ``meta.json``: the job's
wall time (``job.submitted`` to ``job.completed``), trials per minute over the search stage
(first ``trial.started`` to the search stage's ``stage.completed``), the median trial per
model (``trial.started`` to ``trial.saved``), the workers and their threads (the
``worker.started`` records, or the external workers' arguments), the GPU busy share (the
mean of ``sentinel_gpu_utilisation_ratio``, NVML's utilisation as the daemon's monitor
samples it every 0.5 s here, read from the daemon's metrics endpoint over the search
stage), and the OpenCL compiler lines ("N warnings generated.") in the daemon's stderr,
which its local workers share (the journal under systemd) and where the external workers
write too. Targets (issue 14, one H200 with 16 cores): ``new`` at most 0.5x ``today``'s
wall time and at most 0.6x ``cpu``'s; the GPU busy at least 60% of ``new``'s search
stage; no OpenCL line in any layout.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import lightgbm
import orjson
import xgboost
from benchkit import Report, filesystem_of, print_notes_and_summary, progress
from daemon import QUICK as DAEMON_QUICK
from daemon import (
    BenchError,
    DaemonProcess,
    Data,
    Processes,
    Row,
    Session,
    bench_session,
    daemon_env,
    job_doc,
    make_data,
    meta_of,
    print_table,
    search_seconds,
    trial_times,
    ts_epoch,
)

from sentinel_daemon import __version__
from sentinel_daemon.daemon.dispatch.plan import host_cores, plan_workers
from sentinel_daemon.ml.devices import discover_gpus
from sentinel_daemon.ml.stderrguard import split_chatter
from sentinel_daemon.settings import WorkerSettings

LAYOUTS = ("today", "new", "cpu")
MAX_NEW_OVER_TODAY = 0.5
MAX_NEW_OVER_CPU = 0.6
MIN_GPU_BUSY = 0.60
SAMPLE_S = 0.5  # the daemon monitor's sampling period here, and how often it is read
SEED = 7
ANCHOR = "issue 14, H200 16 cores: today 98 s, CPU only 94 s, GPU busy 24%"
_GPU_UTIL = re.compile(r'^sentinel_gpu_utilisation_ratio\{gpu="(\d+)"\} (\S+)$', re.M)


@dataclass(frozen=True)
class Sizes:
    rows: int
    trials: int  # per model
    parallelism: int
    space: dict[str, dict[str, list[float]]]
    timeout_s: float  # the longest wait for one thing the daemon should do (a whole job)
    gpus: list[int] | None  # workers.gpus for today / new; None: NVML discovery


FULL = Sizes(
    rows=200_000,
    trials=10,
    parallelism=8,
    space={
        "xgboost": {"n_estimators": [150, 400], "max_depth": [4, 10]},
        "lightgbm": {"n_estimators": [150, 300], "num_leaves": [15, 127]},
    },
    timeout_s=900.0,
    gpus=None,
)
QUICK = Sizes(
    rows=3_000,
    trials=2,
    parallelism=2,
    space={
        "xgboost": {"n_estimators": [10, 20], "max_depth": [2, 4]},
        "lightgbm": {"n_estimators": [10, 20], "num_leaves": [4, 8]},
    },
    timeout_s=120.0,
    gpus=[0],
)


@dataclass
class Run:
    """One job under one layout."""

    layout: str
    wall_s: float  # job.submitted -> job.completed
    search_s: float  # first trial.started -> the search stage's stage.completed
    trials: int
    median_trial_s: dict[str, float]  # model -> median trial.started -> trial.saved
    median_train_s: dict[str, float]  # model -> median train_seconds (meta.json)
    workers: str  # e.g. "2 GPU x 1 + 7 CPU x 2 threads"
    threads: int
    gpu_busy: float | None  # mean utilisation over the search stage; None: no reading
    gpu_samples: int
    opencl_lines: int
    notes: list[str] = field(default_factory=list)

    @property
    def per_minute(self) -> float:
        return 60.0 * self.trials / self.search_s


# ---- the daemon's metrics -------------------------------------------------------------


class GpuSampler:
    """Reads the daemon's ``sentinel_gpu_utilisation_ratio`` every ``SAMPLE_S`` in a thread.

    The daemon's resource monitor samples NVML (``resources.sample_every_s``); this reads
    what it last sampled, with the epoch time of the read.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.samples: list[tuple[float, float]] = []  # (epoch, mean over the GPUs)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gpu-sampler", daemon=True)

    def __enter__(self) -> GpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            with contextlib.suppress(OSError, ValueError):
                with urllib.request.urlopen(self.url, timeout=2) as response:
                    text = response.read().decode()
                values = [float(v) for _, v in _GPU_UTIL.findall(text)]
                if values:
                    self.samples.append((time.time(), statistics.fmean(values)))

    def busy(self, start: float, end: float) -> tuple[float | None, int]:
        inside = [v for t, v in self.samples if start <= t <= end]
        return (statistics.fmean(inside) if inside else None), len(inside)


def metrics_url(daemon: DaemonProcess, timeout: float) -> str:
    """The daemon's metrics URL, from its ``metrics.serving`` log line (port 0: its pick)."""
    deadline = time.monotonic() + timeout
    pattern = re.compile(rb'"url": ?"(http://[^"]+)"')
    while time.monotonic() < deadline:
        daemon.check_alive()
        for line in daemon.log_path.read_bytes().splitlines():
            if b'"metrics.serving"' in line and (found := pattern.search(line)):
                return found.group(1).decode()
        time.sleep(0.05)
    raise BenchError(f"the daemon logged no metrics.serving line in {timeout:.0f} s")


# ---- one layout ---------------------------------------------------------------------------


class Daemon(DaemonProcess):
    """``sentinel run`` without ``--workers`` (its settings plan the workers), or ``0``."""

    def __init__(self, *args: Any, explicit_workers: int | None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.explicit_workers = explicit_workers

    def argv(self) -> list[str]:
        argv = [sys.executable, "-m", "sentinel_daemon.cli", "run", "--state-dir", str(self.state)]
        if self.explicit_workers is not None:
            argv += ["--workers", str(self.explicit_workers)]
        return argv


def layout_settings(layout: str, sizes: Sizes) -> dict[str, str]:
    """SENTINEL_* settings (and CUDA_VISIBLE_DEVICES) of a layout's daemon."""
    settings = {
        "SENTINEL_METRICS__PORT": "0",
        "SENTINEL_RESOURCES__SAMPLE_EVERY_S": str(SAMPLE_S),
    }
    if layout == "cpu":
        settings["SENTINEL_WORKERS__GPUS"] = "[]"
        settings["CUDA_VISIBLE_DEVICES"] = ""
    elif sizes.gpus is not None:
        settings["SENTINEL_WORKERS__GPUS"] = str(sizes.gpus)
    if layout == "today":
        settings["SENTINEL_MODELS__LIGHTGBM__DEVICE"] = "opencl"
    return settings


def start_external_worker(
    procs: Processes, state: Path, gpu: int, threads: int, env: dict[str, str], log_path: Path
) -> subprocess.Popen[bytes]:
    """A GPU worker as ``sentinel-worker@N.service`` runs it: not the daemon's child."""
    argv = [sys.executable, "-m", "sentinel_daemon.cli", "worker", "--state-dir", str(state)]
    argv += ["--id", f"gpu{gpu}", "--gpu", str(gpu), "--threads", str(threads)]
    env = {**env, "CUDA_VISIBLE_DEVICES": str(gpu), "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    with open(log_path, "ab") as err:
        proc = subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
        )
    procs.others.append(proc)
    return proc


def stop_external(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def wait_log(path: Path, needle: bytes, count: int, timeout: float, alive: Any) -> None:
    deadline = time.monotonic() + timeout
    while path.read_bytes().count(needle) < count:
        alive()
        if time.monotonic() > deadline:
            raise BenchError(f"{needle.decode()} x{count} not in {path} in {timeout:.0f} s")
        time.sleep(0.05)


def run_layout(layout: str, root: Path, data: Data, sizes: Sizes, procs: Processes) -> Run:
    folder = root / layout
    folder.mkdir()
    settings = layout_settings(layout, sizes)
    cores = host_cores()
    gpus = sizes.gpus if sizes.gpus is not None else discover_gpus()
    if layout == "cpu":
        gpus = []
    external: list[tuple[int, int]] = []  # (gpu, threads) of today's workers
    if layout == "today":
        # Before issue 14: one worker per GPU (else one CPU worker), cores // workers threads.
        count = len(gpus) or 1
        external = [(g, max(1, cores // count)) for g in gpus]
        explicit: int | None = 0 if gpus else 1
        expected = 0 if gpus else 1
    else:
        explicit = None
        defaults = WorkerSettings()
        plan = plan_workers(cores=cores, gpus=gpus, per_gpu=defaults.per_gpu, cpu=defaults.cpu,
                            count=None)  # fmt: skip
        expected = len(plan.workers)
    log_path = folder / "daemon.log"
    daemon = Daemon(folder / "state", expected, root, log_path, settings,
                    explicit_workers=explicit)  # fmt: skip
    procs.daemons.append(daemon)
    session_sizes = replace(DAEMON_QUICK, timeout_s=sizes.timeout_s, quiesce=False)
    doc = job_doc(f"bench-gpu-{layout}", data, models=("xgboost", "lightgbm"),
                  n_trials=sizes.trials, parallelism=sizes.parallelism, sampler="tpe",
                  pruner="none", space=sizes.space)  # fmt: skip
    doc["search"]["seed"] = SEED
    workers: list[subprocess.Popen[bytes]] = []
    try:
        daemon.start()
        session = Session(daemon, session_sizes)
        session.wait_ready()
        for gpu, threads in external:
            workers.append(start_external_worker(
                procs, daemon.state, gpu, threads, daemon_env(settings), log_path))  # fmt: skip
        wait_log(log_path, b'"worker.started"', expected + len(external), 120.0,
                 daemon.check_alive)  # fmt: skip
        url = metrics_url(daemon, 30.0)
        with GpuSampler(url) as sampler:
            _, records = session.run_job(doc, pause=0.05)
        session.log.close()
        started = [r for _, r in session.log.items if r["type"] == "worker.started"]
    finally:
        for proc in workers:
            stop_external(proc)
        code = daemon.stop()
        procs.daemons.remove(daemon)
        if code not in (0, None):
            progress(f"{layout}: the daemon exited with {code}; its log ends:\n{daemon.log_tail()}")
    times = trial_times(daemon.state, records)
    model_of = {r["trial"]: r["model"] for r in records if r["type"] == "trial.started"}
    submitted = next(ts_epoch(r["ts"]) for r in records if r["type"] == "job.submitted")
    completed = next(ts_epoch(r["ts"]) for r in records if r["type"] == "job.completed")
    first = min(ts_epoch(r["ts"]) for r in records if r["type"] == "trial.started")
    search = search_seconds(records)
    busy, samples = sampler.busy(first, first + search)
    by_model: dict[str, list[float]] = {}
    train_by_model: dict[str, list[float]] = {}
    for t in times:
        by_model.setdefault(model_of[t.trial], []).append(t.wall)
        train_by_model.setdefault(model_of[t.trial], []).append(t.train_s)
    if external:
        shape = f"{len(external)} GPU x {external[0][1]} threads (external, today's)"
        threads = sum(t for _, t in external)
    else:
        kinds: dict[tuple[str, int | None], int] = {}
        for r in started:
            key = ("GPU" if r.get("gpu") is not None else "CPU", r.get("threads"))
            kinds[key] = kinds.get(key, 0) + 1
        shape = " + ".join(f"{n} {k} x {t or 'all'}" for (k, t), n in sorted(kinds.items()))
        shape += " threads"
        threads = sum(int(r.get("threads") or cores) for r in started)
    return Run(
        layout=layout,
        wall_s=completed - submitted,
        search_s=search,
        trials=len(times),
        median_trial_s={m: statistics.median(v) for m, v in sorted(by_model.items())},
        median_train_s={m: statistics.median(v) for m, v in sorted(train_by_model.items())},
        workers=shape,
        threads=threads,
        gpu_busy=busy,
        gpu_samples=samples,
        opencl_lines=len(split_chatter(log_path.read_bytes())[0]),
        notes=trial_notes(daemon.state, records),
    )


def trial_notes(state: Path, records: list[dict[str, Any]]) -> list[str]:
    """The distinct notes of the job's saved models (a device fallback, say)."""
    found: set[str] = set()
    for r in records:
        if r["type"] == "trial.saved":
            with contextlib.suppress(OSError, ValueError):
                meta = orjson.loads(meta_of(state, r["artifact"]).read_bytes())
                found.update(str(n) for n in meta.get("notes", ()))
    return sorted(found)


# ---- the report ---------------------------------------------------------------------------


def ratio_row(what: str, new: float, base: float, limit: float) -> Row:
    r = new / base
    return Row(what, f"{new:.1f} s", f"{base:.1f} s", f"{r:.2f}x", f"<= {limit}x", r <= limit)


def rows(runs: dict[str, Run]) -> list[Row]:
    new, today, cpu = runs["new"], runs["today"], runs["cpu"]
    out = [
        ratio_row("job wall time, new default vs today's layout", new.wall_s, today.wall_s,
                  MAX_NEW_OVER_TODAY),
        ratio_row("job wall time, new default vs CPU only", new.wall_s, cpu.wall_s,
                  MAX_NEW_OVER_CPU),
    ]  # fmt: skip
    if new.gpu_busy is None:
        out.append(Row("GPU busy, new default's search stage", "no reading", "-", "-",
                       f">= {MIN_GPU_BUSY:.0%}", None))  # fmt: skip
    else:
        base = "-" if today.gpu_busy is None else f"{today.gpu_busy:.0%} today"
        out.append(Row("GPU busy, new default's search stage", f"{new.gpu_busy:.0%}", base, "-",
                       f">= {MIN_GPU_BUSY:.0%}", new.gpu_busy >= MIN_GPU_BUSY))  # fmt: skip
    lines = sum(r.opencl_lines for r in runs.values())
    out.append(Row("OpenCL compiler lines in the daemon's stderr, all layouts", str(lines), "-",
                   "-", "0", lines == 0))  # fmt: skip
    return out


def layout_table(runs: dict[str, Run]) -> None:
    header = ("layout", "job wall", "trials/min", "median trial xgb / lgb", "GPU busy",
              "threads", "workers")  # fmt: skip
    cells = []
    for name in LAYOUTS:
        r = runs[name]
        med = " / ".join(f"{r.median_trial_s.get(m, float('nan')):.1f} s"
                         for m in ("xgboost", "lightgbm"))  # fmt: skip
        busy = "-" if r.gpu_busy is None else f"{r.gpu_busy:.0%}"
        cells.append((name, f"{r.wall_s:.1f} s", f"{r.per_minute:.1f}", med, busy,
                      str(r.threads), r.workers))  # fmt: skip
    widths = [max(len(c[i]) for c in [header, *cells]) for i in range(len(header))]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip())
    print("  ".join("-" * w for w in widths))
    for c in cells:
        print("  ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)).rstrip())


def notes(runs: dict[str, Run], sizes: Sizes) -> list[str]:
    out = [
        f"job: {sizes.rows:,} rows, xgboost + lightgbm, {sizes.trials} trials each, parallelism "
        f"{sizes.parallelism}, TPE seed {SEED}, no pruner, space {sizes.space}; one run per "
        f"layout, in the order {', '.join(LAYOUTS)}; anchor: {ANCHOR}",
    ]
    for name in LAYOUTS:
        r = runs[name]
        train = " / ".join(f"{m} {s:.2f} s" for m, s in r.median_train_s.items())
        out.append(
            f"{name}: search stage {r.search_s:.1f} s for {r.trials} trials; median "
            f"train_seconds {train}; GPU utilisation samples in the search stage "
            f"{r.gpu_samples}; OpenCL lines {r.opencl_lines}"
            + (f"; trial notes: {'; '.join(r.notes)}" if r.notes else "")
        )
    return out


def header(args: argparse.Namespace, root: Path, sizes: Sizes) -> list[str]:
    dev, fstype = filesystem_of(root)
    mode = "quick: tiny sizes, figures mean nothing" if args.quick else "full"
    gpus = discover_gpus() if sizes.gpus is None else sizes.gpus
    return [
        f"Sentinel GPU host benchmark, issue 14's job under three layouts ({mode})",
        f"command : {shlex.join([sys.executable, *sys.argv])}",
        f"machine : nproc={os.cpu_count()} (usable {host_cores()}), GPUs {gpus} "
        f"({'given' if sizes.gpus is not None else 'NVML'}), Python "
        f"{platform.python_version()}, {platform.platform()}",
        f"libs    : sentinel {__version__}, xgboost {xgboost.__version__} (CUDA "
        f"{bool(xgboost.build_info().get('USE_CUDA'))}), lightgbm {lightgbm.__version__}",
        f"dir     : {root} on {dev} ({fstype})",
    ]


def arguments(argv: list[str] | None) -> argparse.Namespace:
    """``benchkit``'s options (--quick, --dir, --keep), and --logs."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    parser.add_argument("--dir", type=Path, help="make the work folder under DIR")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (debugging)")
    parser.add_argument("--logs", type=Path, help="copy each layout's daemon log into LOGS")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = arguments(argv)
    sizes = QUICK if args.quick else FULL
    t_start = time.perf_counter()
    procs = Processes()
    runs: dict[str, Run] = {}
    with bench_session("sentinel-bench-gpu-", args, procs) as root:
        for line in header(args, root, sizes):
            print(line)
        print(flush=True)
        progress(f"generating {sizes.rows:,} rows")
        data = make_data(root / "data", sizes.rows, seed=1)
        for layout in LAYOUTS:
            progress(f"{layout}: {2 * sizes.trials} trials")
            runs[layout] = run_layout(layout, root, data, sizes, procs)
            r = runs[layout]
            if args.logs is not None:
                args.logs.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(root / layout / "daemon.log", args.logs / f"{layout}-daemon.log")
            progress(f"  {r.wall_s:.1f} s, {r.per_minute:.1f} trials/min, {r.workers}")
    layout_table(runs)
    print()
    report = Report(rows=rows(runs), notes=notes(runs, sizes))
    print_table(report.rows)
    print_notes_and_summary(report, t_start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
