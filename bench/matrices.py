"""XGBoost trials with their matrices built per trial or kept across trials (ml.devicedata).

Run ``python bench/matrices.py`` (about a minute on two cores) or ``--quick``. On one
generated data set (``--rows``, 20,000 by default: a 12,800-row train split), the same
XGBoost trial (60 rounds, depth 6, one thread, validation AUC every round, no early stop)
is trained ``--repeats`` times in each of these ways, alternating, and the median wall
time of each is printed with its ratio to the first (figures only, nothing asserted):

- ``per trial``: a plain ``DMatrix`` pair built for each trial (``ml.train_trial``
  without ``data``, and every trial before issue 14);
- ``kept, valid QuantileDMatrix``: both matrices kept, the validation one a
  ``QuantileDMatrix`` with ``ref=`` the train one (what a GPU worker keeps);
- ``kept, valid DMatrix``: the train ``QuantileDMatrix`` and a plain validation
  ``DMatrix`` kept (what ``DeviceData`` keeps on the CPU);
- ``ml.train_trial`` without and with a ``DeviceData``: the worker's path, scoring and
  cutting the model included.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import xgboost as xgb
from benchkit import print_table, progress

from sentinel_daemon import ml
from sentinel_daemon.ml import synth

PARAMS = {"n_estimators": 60, "max_depth": 6, "learning_rate": 0.1}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    rows, repeats = (2_000, 1) if args.quick else (args.rows, args.repeats)
    with tempfile.TemporaryDirectory(prefix="sentinel-bench-matrices-") as tmp:
        folder = Path(tmp)
        progress(f"generating {rows:,} rows")
        tx, ident = synth.generate(rows, folder, seed=1)
        p = ml.prepare(tx, ident, folder / "cache", test_fraction=0.2, valid_fraction=0.2)
        native, rounds = ml.training.xgboost_params(PARAMS, "cpu", 1, 0)
        qtrain = xgb.QuantileDMatrix(p.X_train, label=p.y_train, nthread=1)
        qvalid = xgb.QuantileDMatrix(p.X_valid, label=p.y_valid, ref=qtrain, nthread=1)
        dvalid = xgb.DMatrix(p.X_valid, label=p.y_valid, nthread=1)
        data = ml.DeviceData(nthread=1)
        ml.train_trial("xgboost", PARAMS, p, n_threads=1, data=data)  # built once, here

        def train(make: Callable[[], tuple[xgb.DMatrix, xgb.DMatrix]]) -> None:
            dtrain, deval = make()
            xgb.train(native, dtrain, rounds, evals=[(deval, "valid")], verbose_eval=False)

        def per_trial() -> tuple[xgb.DMatrix, xgb.DMatrix]:
            return (xgb.DMatrix(p.X_train, label=p.y_train, nthread=1),
                    xgb.DMatrix(p.X_valid, label=p.y_valid, nthread=1))  # fmt: skip

        ways: dict[str, Callable[[], object]] = {
            "per trial (DMatrix pair)": lambda: train(per_trial),
            "kept, valid QuantileDMatrix (ref=)": lambda: train(lambda: (qtrain, qvalid)),
            "kept, valid DMatrix": lambda: train(lambda: (qtrain, dvalid)),
            "ml.train_trial, per trial": lambda: ml.train_trial(
                "xgboost", PARAMS, p, n_threads=1, early_stopping_rounds=rounds),
            "ml.train_trial, DeviceData": lambda: ml.train_trial(
                "xgboost", PARAMS, p, n_threads=1, early_stopping_rounds=rounds, data=data),
        }  # fmt: skip
        times: dict[str, list[float]] = {name: [] for name in ways}
        for r in range(repeats):
            progress(f"round {r + 1}/{repeats}")
            for name, run in ways.items():
                t0 = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - t0)
    print(f"command : {' '.join([sys.executable, *sys.argv])}")
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"machine : nproc={os.cpu_count()}, load average {load} at the end, xgb {xgb.__version__}"
    )
    print(f"data    : {rows:,} rows, train {p.X_train.shape[0]:,} x {p.X_train.shape[1]}, "
          f"{rounds} rounds of depth 6, 1 thread, {repeats} repeat(s), medians")  # fmt: skip
    print()
    base = statistics.median(times["per trial (DMatrix pair)"])
    trial_base = statistics.median(times["ml.train_trial, per trial"])
    table = []
    for name, values in times.items():
        m = statistics.median(values)
        ref = trial_base if name.startswith("ml.") else base
        table.append((name, f"{m:.2f} s", f"{m / ref:.2f}x"))
    print_table(("way", "median", "vs per trial"), table, (False, True, True))
    print(f"\nnote: DeviceData built its matrices {data.builds} time(s), reused {data.reuses}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
