"""Sentinel's ML path against the bare libraries, measured side by side in one run.

    python bench/training.py [--rows 100000] [--seed 0] [--repeats 3] [--workdir DIR]
                             [--no-trials]

1. One trial through ``ml.train_trial`` (reporting hook every 10 rounds, scoring the
   validation set) against a bare ``xgboost.train`` / ``lightgbm.train`` on the same
   prepared matrices with the same native parameters and early stopping. Target <= 1.1x.
2. ``ml.prepare`` served from the Parquet cache (hashing the inputs included) against
   parsing and validating the CSVs (``loading.load``, no features). Target >= 5x. For
   information, also against a cold ``ml.prepare`` (parse, features, cache write): what a
   second job on the same data saves.
3. Peak RSS growth of a fresh process while ``ml.prepare`` builds the matrices from the
   cache, against the float32 size of those matrices (after a warm-up on a tiny data set,
   so that library code paged in on first use is not counted). Target <= 1.5x.

``--no-trials`` measures only 2 and 3 (seconds instead of minutes). Runs alternate
between the two sides and the medians are compared, since the machine is
shared and noisy.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import lightgbm as lgb
import xgboost as xgb

from sentinel_daemon import ml
from sentinel_daemon.ml import synth
from sentinel_daemon.ml.loading import load
from sentinel_daemon.ml.training import lightgbm_params, xgboost_params

PARAMS = {
    "xgboost": {
        "n_estimators": 200,
        "learning_rate": 0.1,
        "max_depth": 8,
        "subsample": 0.8,
        "colsample_bytree": 0.5,
    },
    "lightgbm": {
        "n_estimators": 200,
        "learning_rate": 0.1,
        "num_leaves": 255,
        "subsample": 0.8,
        "colsample_bytree": 0.5,
        "min_child_samples": 50,
    },
}
PATIENCE = 50
THREADS = 2


def bare_xgboost(prepared: ml.Prepared, params: dict) -> float:
    native, rounds = xgboost_params(params, "cpu", THREADS, 0)
    started = time.perf_counter()
    dtrain = xgb.DMatrix(prepared.X_train, label=prepared.y_train, nthread=THREADS)
    dvalid = xgb.DMatrix(prepared.X_valid, label=prepared.y_valid, nthread=THREADS)
    booster = xgb.train(
        native,
        dtrain,
        rounds,
        evals=[(dvalid, "valid")],
        early_stopping_rounds=PATIENCE,
        verbose_eval=False,
    )
    elapsed = time.perf_counter() - started
    assert booster.best_iteration >= 0
    return elapsed


def bare_lightgbm(prepared: ml.Prepared, params: dict) -> float:
    native, rounds = lightgbm_params(params, "cpu", THREADS, 0)
    started = time.perf_counter()
    dtrain = lgb.Dataset(
        prepared.X_train, label=prepared.y_train, feature_name=list(prepared.feature_names)
    )
    dvalid = lgb.Dataset(prepared.X_valid, label=prepared.y_valid, reference=dtrain)
    booster = lgb.train(
        native,
        dtrain,
        rounds,
        valid_sets=[dvalid],
        valid_names=["valid"],
        callbacks=[lgb.early_stopping(PATIENCE, first_metric_only=True, verbose=False)],
    )
    elapsed = time.perf_counter() - started
    assert booster.best_iteration >= 0
    return elapsed


def sentinel_trial(prepared: ml.Prepared, model: str, params: dict) -> float:
    started = time.perf_counter()
    ml.train_trial(
        model,
        params,
        prepared,
        n_threads=THREADS,
        report=lambda step, auc: False,
        report_every=10,
        early_stopping_rounds=PATIENCE,
    )
    return time.perf_counter() - started


def alternate(a: Callable[[], float], b: Callable[[], float], repeats: int) -> tuple[float, float]:
    """Medians of ``a`` and ``b``, run in turns so that drift hits both alike."""
    times_a, times_b = [], []
    for i in range(repeats):
        first, second = (a, b) if i % 2 == 0 else (b, a)
        t1, t2 = first(), second()
        times_a.append(t1 if first is a else t2)
        times_b.append(t2 if first is a else t1)
    return statistics.median(times_a), statistics.median(times_b)


def timed(fn: Callable[[], object]) -> Callable[[], float]:
    def run() -> float:
        started = time.perf_counter()
        fn()
        return time.perf_counter() - started

    return run


def memory_probe(tx: Path, ident: Path, cache_dir: Path) -> None:
    """Child process: peak RSS growth while prepare() fills the matrices from the cache."""
    status = Path("/proc/self/status")

    def field(name: str) -> int:
        for line in status.read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1]) * 1024
        raise KeyError(name)

    # Warm up on a tiny data set first, so that the code pages of the Parquet and LZ4
    # readers (tens of MiB of shared libraries) are not counted as matrix memory.
    with tempfile.TemporaryDirectory() as tiny:
        small = synth.generate(2000, Path(tiny), seed=1)
        for _ in range(2):
            ml.prepare(*small, Path(tiny) / "cache", test_fraction=0.2, valid_fraction=0.2)
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to current RSS
        baseline, reset = field("VmRSS"), True
    except OSError:
        baseline, reset = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, False
    prepared = ml.prepare(tx, ident, cache_dir, test_fraction=0.2, valid_fraction=0.2)
    peak = field("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    assert prepared.from_cache
    print(json.dumps({"growth": peak - baseline, "matrix": prepared.nbytes, "exact": reset}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--no-trials", action="store_true", help="only the cache and memory rows")
    parser.add_argument("--memory-probe", nargs=3, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_probe:
        memory_probe(*args.memory_probe)
        return
    work = args.workdir or Path(tempfile.mkdtemp(prefix="sentinel-bench-"))
    data = work / f"data-{args.rows}-{args.seed}"
    tx, ident = data / "train_transaction.csv", data / "train_identity.csv"
    if not tx.exists():
        started = time.perf_counter()
        synth.generate(args.rows, data, seed=args.seed)
        print(f"generated {args.rows} rows in {time.perf_counter() - started:.1f} s")
    cache_dir = work / "cache-training-bench"
    for old in cache_dir.glob("*.parquet"):
        old.unlink()

    def prepare() -> ml.Prepared:
        return ml.prepare(tx, ident, cache_dir, test_fraction=0.2, valid_fraction=0.2)

    started = time.perf_counter()
    prepared = prepare()
    cold = time.perf_counter() - started
    shape = (len(prepared.y), len(prepared.feature_names))
    print(
        f"data: {shape[0]} rows x {shape[1]} features; cold prepare (CSV + features + "
        f"cache write) {cold:.2f} s; {THREADS} threads; medians of {args.repeats} runs"
    )

    rows = []
    models = () if args.no_trials else (("xgboost", bare_xgboost), ("lightgbm", bare_lightgbm))
    for model, bare in models:
        ours, theirs = alternate(
            lambda m=model: sentinel_trial(prepared, m, PARAMS[m]),
            lambda b=bare, m=model: b(prepared, PARAMS[m]),
            args.repeats,
        )
        rows.append(
            (
                f"{model} trial: train_trial vs bare {model}.train",
                f"{ours:.2f} s",
                f"{theirs:.2f} s",
                ours / theirs,
                "<= 1.10x",
                ours / theirs <= 1.1,
            )
        )

    cached, parsed = alternate(timed(prepare), timed(lambda: load(tx, ident)), args.repeats + 2)

    def cold() -> float:
        for old in cache_dir.glob("*.parquet"):
            old.unlink()
        return timed(prepare)()

    warm, rebuilt = alternate(timed(prepare), cold, args.repeats)
    rows.append(
        (
            "prepare from Parquet cache vs CSV parse+validate",
            f"{cached:.3f} s",
            f"{parsed:.3f} s",
            parsed / cached,
            ">= 5x",
            parsed / cached >= 5,
        )
    )

    rows.append(
        (
            "prepare from cache vs cold prepare (CSV+features)",
            f"{warm:.3f} s",
            f"{rebuilt:.3f} s",
            rebuilt / warm,
            "(info)",
            rebuilt / warm >= 5,
        )
    )

    probe = subprocess.run(
        [sys.executable, __file__, "--memory-probe", str(tx), str(ident), str(cache_dir)],
        check=True,
        capture_output=True,
        text=True,
    )
    memory = json.loads(probe.stdout.strip().splitlines()[-1])
    ratio = memory["growth"] / memory["matrix"]
    rows.append(
        (
            "peak RSS growth of prepare (cache) vs float32 size",
            f"{memory['growth'] / 2**20:.0f} MiB",
            f"{memory['matrix'] / 2**20:.0f} MiB",
            ratio,
            "<= 1.5x",
            ratio <= 1.5,
        )
    )

    print()
    print(f"{'comparison':52} {'sentinel':>10} {'baseline':>10} {'ratio':>7}  {'target':8} ok")
    for name, ours_s, theirs_s, ratio, target, ok in rows:
        print(
            f"{name:52} {ours_s:>10} {theirs_s:>10} {ratio:6.2f}x  {target:8} "
            f"{'yes' if ok else 'NO'}"
        )


if __name__ == "__main__":
    main()
