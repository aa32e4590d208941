"""`make demo`: one job end to end, through the event log and the ML library.

Until the daemon exists (issue 4) this script plays the job actor in one process: it
appends every state change to the real, fsynced event log before acting on it, trains
real XGBoost and LightGBM trials with Optuna, saves each model crash-safely with its
checksum, verifies and scores the best ones on the held-out test split, promotes the
winner, and then shows the log with `sentinel tail` and checks it with `sentinel log verify`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import orjson

from sentinel_daemon import __version__
from sentinel_daemon.events import (
    DaemonStarted,
    DaemonStopped,
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
)
from sentinel_daemon.fsutil import atomic_write_bytes, copy_file_durably
from sentinel_daemon.jobspec import parse_job_file
from sentinel_daemon.ml import TrialPruned as Pruned
from sentinel_daemon.ml import evaluate, load_model, prepare, save_model, train_trial
from sentinel_daemon.ml.space import resolve_space, suggest
from sentinel_daemon.ml.synth import generate
from sentinel_daemon.store import Store

REPO = Path(__file__).resolve().parent.parent
JOB_FILE = REPO / "config" / "jobs" / "demo.yaml"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("demo"))
    parser.add_argument("--rows", type=int, default=20_000)
    args = parser.parse_args()
    root: Path = args.dir.resolve()
    data, state_dir, cache = root / "data", root / "state", root / "cache"
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    if not (data / "train_transaction.csv").exists():
        step(f"generating {args.rows:,} synthetic IEEE-CIS rows in {data}")
        generate(args.rows, data, seed=7)
    shutil.rmtree(state_dir, ignore_errors=True)  # a fresh state each run; data and cache stay

    # The job file goes through the same schema and hardened reader as the inbox's.
    job = parse_job_file(JOB_FILE, data_roots=[root], base_dir=root)
    spec: dict[str, Any] = job.raw
    sha, job_id = job.sha256, job.job_id
    store = Store.open(state_dir)
    store.append([DaemonStarted(pid=os.getpid(), version=__version__)])
    store.append(
        [
            JobSubmitted(
                job_id=job_id,
                name=spec["name"],
                spec=spec,
                file=str(JOB_FILE.relative_to(REPO)),
                file_sha256=sha,
            )
        ]
    )
    step(f"job {job_id} submitted; state in {state_dir}")

    store.append([StageStarted(job_id=job_id, stage=Stage.PREPARE)])
    t0 = time.monotonic()
    prepared = prepare(
        Path(spec["data"]["transactions"]),
        Path(spec["data"]["identity"]),
        cache,
        test_fraction=spec["validation"]["test_fraction"],
        valid_fraction=spec["validation"]["valid_fraction"],
    )
    store.append(
        [
            StageCompleted(
                job_id=job_id,
                stage=Stage.PREPARE,
                outputs={
                    "rows": len(prepared.y),
                    "features": len(prepared.feature_names),
                    "data_hash": prepared.data_hash,
                    "feature_version": prepared.feature_version,
                    "from_cache": prepared.from_cache,
                },
            )
        ]
    )
    step(
        f"prepared {len(prepared.y):,} rows x {len(prepared.feature_names)} features in "
        f"{time.monotonic() - t0:.1f} s ({'from the cache' if prepared.from_cache else 'built'})"
    )

    store.append([StageStarted(job_id=job_id, stage=Stage.SEARCH)])
    search = spec["search"]
    number = 0
    best: dict[str, TrialSaved] = {}
    for model in spec["models"]:
        space = resolve_space(model, (search.get("space") or {}).get(model))
        study = optuna.create_study(
            direction="maximize",
            sampler=optuna.samplers.TPESampler(seed=search["seed"]),
            pruner=optuna.pruners.MedianPruner(n_warmup_steps=20),
        )
        for _ in range(search["n_trials"]):
            trial = study.ask()
            params = suggest(trial, model, space)
            store.append(
                [TrialStarted(job_id=job_id, trial=number, model=model, params=params, attempt=1)]
            )

            def report(step_: int, value: float, trial: optuna.Trial = trial) -> bool:
                trial.report(value, step_)
                return trial.should_prune()

            started = time.monotonic()
            try:
                result = train_trial(model, params, prepared, report=report, report_every=10)
            except Pruned as pruned:
                store.append(
                    [
                        TrialPruned(
                            job_id=job_id,
                            trial=number,
                            model=model,
                            step=pruned.step,
                            value=pruned.value,
                        )
                    ]
                )
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                print(f"    trial {number:2d} {model:8s} pruned at round {pruned.step}")
                number += 1
                continue
            saved = save_model(
                result,
                model,
                state_dir / "jobs" / job_id / "trials" / str(number),
                {"job_id": job_id, "trial": number},
            )
            event = TrialSaved(
                job_id=job_id,
                trial=number,
                model=model,
                value=result.metrics["roc_auc"],
                metrics=result.metrics,
                artifact=str(saved.path.relative_to(state_dir)),
                sha256=saved.sha256,
                duration_s=round(time.monotonic() - started, 3),
            )
            store.append([event])
            study.tell(trial, event.value)
            print(
                f"    trial {number:2d} {model:8s} valid ROC AUC {event.value:.4f} "
                f"({result.best_iteration} rounds, {event.duration_s:.1f} s)"
            )
            if model not in best or event.value > best[model].value:
                best[model] = event
            number += 1
    store.append(
        [
            StageCompleted(
                job_id=job_id,
                stage=Stage.SEARCH,
                outputs={m: {"trial": e.trial, "value": e.value} for m, e in best.items()},
            )
        ]
    )

    store.append([StageStarted(job_id=job_id, stage=Stage.VALIDATE)])
    test: dict[str, dict[str, float]] = {}
    for model, event in best.items():
        loaded = load_model(state_dir / event.artifact, event.sha256)  # refuses a bad checksum
        test[model] = evaluate(loaded, prepared, split="test")
    store.append([StageCompleted(job_id=job_id, stage=Stage.VALIDATE, outputs={"test": test})])

    store.append([StageStarted(job_id=job_id, stage=Stage.EXPORT)])
    winner = max(best.values(), key=lambda e: e.value)  # chosen on validation, not on test
    best_dir = state_dir / "jobs" / job_id / "best"
    best_dir.mkdir(parents=True, exist_ok=True)
    artifact = best_dir / Path(winner.artifact).name
    copy_file_durably(state_dir / winner.artifact, artifact)
    card = {
        "job_id": job_id,
        "trial": winner.trial,
        "model": winner.model,
        "validation": winner.metrics,
        "test": test[winner.model],
        "sha256": winner.sha256,
    }
    atomic_write_bytes(best_dir / "model-card.json", orjson.dumps(card, option=orjson.OPT_INDENT_2))
    store.append(
        [
            ModelPromoted(
                job_id=job_id,
                trial=winner.trial,
                model=ModelKind(winner.model),
                artifact=str(artifact.relative_to(state_dir)),
                sha256=winner.sha256,
                value=winner.value,
            ),
            StageCompleted(job_id=job_id, stage=Stage.EXPORT, outputs={"artifact": str(artifact)}),
            JobCompleted(
                job_id=job_id, best_trial=winner.trial, best_value=winner.value, promoted=True
            ),
        ]
    )
    store.append([DaemonStopped(pid=os.getpid(), version=__version__, reason="demo finished")])
    store.close()

    step("the event log (sentinel tail --all)")
    sentinel = [sys.executable, "-m", "sentinel_daemon.cli"]
    subprocess.run([*sentinel, "tail", "--all", "--state-dir", str(state_dir)], check=True)
    step("sentinel log verify")
    subprocess.run([*sentinel, "log", "verify", "--state-dir", str(state_dir)], check=True)
    step("result")
    for model, metrics in test.items():
        mark = "  <- promoted" if model == winner.model else ""
        print(
            f"    {model:8s} test ROC AUC {metrics['roc_auc']:.4f}  PR AUC "
            f"{metrics['pr_auc']:.4f}  recall@1%FPR {metrics['recall_at_1pct_fpr']:.3f}{mark}"
        )
    print(f"    promoted model: {artifact} (sha256 {winner.sha256[:16]}...)")
    print(f"    model card:     {best_dir / 'model-card.json'}")
    return 0


def step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
