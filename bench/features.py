"""Engineered features against the raw columns: same model, same budget, time-ordered test.

    python bench/features.py [--rows 100000] [--seed 0] [--workdir DIR]

Generates (or reuses) a synthetic IEEE-CIS data set, prepares it twice (feature sets
``raw`` and ``full``), trains the same XGBoost and LightGBM configurations on each with
early stopping on the validation split, and prints the ROC AUC on the held-out test split.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from sentinel_daemon import ml
from sentinel_daemon.ml import synth

PARAMS = {
    "xgboost": {
        "n_estimators": 600,
        "learning_rate": 0.05,
        "max_depth": 8,
        "subsample": 0.8,
        "colsample_bytree": 0.5,
        "min_child_weight": 1.0,
    },
    "lightgbm": {
        "n_estimators": 600,
        "learning_rate": 0.05,
        "num_leaves": 127,
        "subsample": 0.8,
        "colsample_bytree": 0.5,
        "min_child_samples": 50,
    },
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--models", nargs="+", default=["xgboost", "lightgbm"])
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="sentinel-bench-"))
    data = work / f"data-{args.rows}-{args.seed}"
    tx, ident = data / "train_transaction.csv", data / "train_identity.csv"
    if not tx.exists():
        synth.generate(args.rows, data, seed=args.seed)
    print(f"data: {args.rows} rows (seed {args.seed}) in {data}")
    print(
        f"{'model':10} {'features':9} {'n_feat':>6} {'rounds':>6} {'valid AUC':>9} "
        f"{'test AUC':>9} {'test PR AUC':>11} {'train s':>8}"
    )
    for model in args.models:
        for feature_set in ("raw", "full"):
            prepared = ml.prepare(
                tx,
                ident,
                work / "cache",
                test_fraction=0.2,
                valid_fraction=0.2,
                feature_set=feature_set,
            )
            started = time.perf_counter()
            result = ml.train_trial(model, PARAMS[model], prepared, seed=args.seed)
            elapsed = time.perf_counter() - started
            test = ml.evaluate(result, prepared, "test")
            print(
                f"{model:10} {feature_set:9} {len(prepared.feature_names):6d} "
                f"{result.best_iteration:6d} {result.metrics['roc_auc']:9.4f} "
                f"{test['roc_auc']:9.4f} {test['pr_auc']:11.4f} {elapsed:8.1f}"
            )


if __name__ == "__main__":
    main()
