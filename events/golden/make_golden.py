"""Write the v1 golden log: a realistic day of the daemon, through the real FileLog and Store.

Kept for the record of how ``events/golden/v1/`` was made. The golden files are committed
and are NOT regenerated: their point is that every later Sentinel must read *today's*
bytes. When the format changes, write a new folder (``v2/``, ...) with a new script and
leave the old ones alone. This script refuses to overwrite an existing folder unless told
``--force`` (and a forced rewrite must be justified in the commit).

    python events/golden/make_golden.py [--out events/golden/v1] [--force]
    python events/golden/make_golden.py --refresh-expected events/golden/v1

``--refresh-expected DIR`` rewrites only ``DIR/expected-state.json``, by replaying the
committed log with the current code: for a deliberate change to ``State``. It never
touches the log.

The story, in two daemon runs with fixed timestamps:

- run 1: the daemon starts with two workers, rejects a bad job file, accepts
  ``ieee-fraud`` (XGBoost and LightGBM, 3 trials each) and prepares it; trials are saved,
  pruned and failed; worker ``w1`` is lost mid-trial, its trial fails with ``retry=true``
  and runs again as attempt 2; the daemon then dies mid-write (a torn last line).
- run 2: start-up cuts the torn tail (``log.repaired``), the old workers are found gone,
  new ones start, ``ieee-fraud`` finishes its search, validates, promotes its best trial
  and completes; ``chargeback-q1`` fails in ``prepare``; ``ieee-fraud-nightly`` is
  cancelled by an operator; the daemon stops on SIGTERM and its workers exit.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from sentinel_daemon.core.events import (
    EVENT_TYPES,
    DaemonStarted,
    DaemonStopped,
    Event,
    JobCancelled,
    JobCompleted,
    JobFailed,
    JobRejected,
    JobSubmitted,
    ModelKind,
    ModelPromoted,
    Stage,
    StageCompleted,
    StageStarted,
    TrialFailed,
    TrialPruned,
    TrialSaved,
    TrialStarted,
    WorkerExited,
    WorkerLost,
    WorkerStarted,
    encode,
)
from sentinel_daemon.core.ids import JobId, TrialNumber, WorkerId
from sentinel_daemon.core.state import State
from sentinel_daemon.layout import EVENTS_DIR
from sentinel_daemon.log.records import encode_line, format_ts
from sentinel_daemon.log.segfiles import segment_name
from sentinel_daemon.log.segments import LogScan
from sentinel_daemon.log.store import Store, replay

HERE = Path(__file__).resolve().parent
VERSION = "0.1.0"
XGB = ModelKind.XGBOOST
LGB = ModelKind.LIGHTGBM


class Clock:
    """A hand-driven clock: every record appended gets the time it was last set to."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def job_id(name: str, file_sha256: str) -> JobId:
    return JobId(f"{name}-{file_sha256[:8]}")


def spec(name: str, models: list[str], n_trials: int, transactions: str) -> dict[str, Any]:
    """A job spec as the inbox would accept it (defaults filled in)."""
    return {
        "name": name,
        "data": {"transactions": transactions, "identity": None},
        "models": models,
        "search": {
            "n_trials": n_trials,
            "parallelism": 2,
            "sampler": "tpe",
            "pruner": "median",
            "seed": 42,
            "space": {},
        },
        "validation": {"test_fraction": 0.2, "valid_fraction": 0.2},
    }


XGB_PARAMS: list[dict[str, Any]] = [
    {
        "n_estimators": 220,
        "learning_rate": 0.081,
        "max_depth": 7,
        "min_child_weight": 3.0,
        "subsample": 0.85,
        "colsample_bytree": 0.7,
        "reg_alpha": 0.01,
        "reg_lambda": 1.2,
        "gamma": 0.0,
    },
    {
        "n_estimators": 380,
        "learning_rate": 0.012,
        "max_depth": 4,
        "min_child_weight": 8.5,
        "subsample": 0.62,
        "colsample_bytree": 0.55,
        "reg_alpha": 0.3,
        "reg_lambda": 4.0,
        "gamma": 1.5,
    },
    {
        "n_estimators": 400,
        "learning_rate": 0.2,
        "max_depth": 10,
        "min_child_weight": 1.0,
        "subsample": 0.95,
        "colsample_bytree": 0.9,
        "reg_alpha": 0.0,
        "reg_lambda": 0.5,
        "gamma": 0.0,
    },
]
LGB_PARAMS: list[dict[str, Any]] = [
    {
        "n_estimators": 300,
        "learning_rate": 0.05,
        "num_leaves": 96,
        "max_depth": -1,
        "min_child_samples": 40,
        "subsample": 0.8,
        "colsample_bytree": 0.6,
        "reg_alpha": 0.05,
        "reg_lambda": 2.0,
    },
    {
        "n_estimators": 150,
        "learning_rate": 0.11,
        "num_leaves": 48,
        "max_depth": 8,
        "min_child_samples": 20,
        "subsample": 0.9,
        "colsample_bytree": 0.75,
        "reg_alpha": 0.0,
        "reg_lambda": 0.8,
    },
    {
        "n_estimators": 260,
        "learning_rate": 0.07,
        "num_leaves": 128,
        "max_depth": 12,
        "min_child_samples": 60,
        "subsample": 0.7,
        "colsample_bytree": 0.5,
        "reg_alpha": 0.2,
        "reg_lambda": 1.0,
    },
]


def artifact(job: str, trial: int, model: ModelKind) -> str:
    ext = "ubj" if model is XGB else "txt"
    return f"jobs/{job}/trials/{trial:04d}/model.{ext}"


def metrics(auc: float, pr_auc: float, logloss: float) -> dict[str, float]:
    return {"roc_auc": auc, "pr_auc": pr_auc, "logloss": logloss}


def run_one(store: Store, clock: Clock) -> None:
    """Daemon run 1: ends with a crash in the middle of a write (see :func:`tear`)."""

    def put(after_s: float, *events: Event) -> None:
        clock.advance(after_s)
        store.append(list(events))

    put(0, DaemonStarted(pid=4242, version=VERSION))
    put(
        0.4,
        WorkerStarted(worker=WorkerId("w0"), pid=4250, gpu=0),
        WorkerStarted(worker=WorkerId("w1"), pid=4251, gpu=1),
    )
    bad = "name: Fraud Model\nsearch: {n_trials: 0}\n"
    put(
        3.1,
        JobRejected(
            file="inbox/fraud-model.yaml",
            reason="name: must be lower-case letters, digits and '-' (got 'Fraud Model'); "
            "search.n_trials: must be at least 1 (got 0)",
            file_sha256=sha(bad),
        ),
    )
    text = "name: ieee-fraud\nmodels: [xgboost, lightgbm]\nsearch: {n_trials: 3}\n"
    fsha = sha(text)
    job = job_id("ieee-fraud", fsha)
    put(
        12.0,
        JobSubmitted(
            job_id=job,
            name="ieee-fraud",
            spec=spec("ieee-fraud", ["xgboost", "lightgbm"], 3, "data/train_transaction.csv"),
            file="inbox/ieee-fraud.yaml",
            file_sha256=fsha,
        ),
        StageStarted(job_id=job, stage=Stage.PREPARE),
    )
    put(
        41.7,
        StageCompleted(
            job_id=job,
            stage=Stage.PREPARE,
            outputs={
                "rows": 590540,
                "features": 431,
                "train_rows": 377945,
                "valid_rows": 94487,
                "test_rows": 118108,
                "cache": f"cache/{sha('ieee-fraud-features')[:16]}.parquet",
            },
        ),
        StageStarted(job_id=job, stage=Stage.SEARCH),
    )
    put(
        0.2,
        TrialStarted(job_id=job, trial=TrialNumber(0), model=XGB, params=XGB_PARAMS[0], attempt=1),
        TrialStarted(job_id=job, trial=TrialNumber(1), model=LGB, params=LGB_PARAMS[0], attempt=1),
    )
    put(
        96.3,
        TrialSaved(
            job_id=job,
            trial=TrialNumber(0),
            model=XGB,
            value=0.9123,
            metrics=metrics(0.9123, 0.5871, 0.0934),
            artifact=artifact(job, 0, XGB),
            sha256=sha("model 0"),
            duration_s=96.1,
        ),
        TrialStarted(job_id=job, trial=TrialNumber(2), model=XGB, params=XGB_PARAMS[1], attempt=1),
    )
    # w1 stops heartbeating; the supervisor kills it and hands its trial back.
    put(
        35.0,
        WorkerLost(
            worker=WorkerId("w1"), pid=4251, gpu=1, reason="no heartbeat for 30 s; killed", signal=9
        ),
        TrialFailed(
            job_id=job,
            trial=TrialNumber(1),
            model=LGB,
            error="worker w1 lost (no heartbeat for 30 s)",
            attempt=1,
            retry=True,
        ),
    )
    put(
        2.0,
        WorkerStarted(worker=WorkerId("w2"), pid=4263, gpu=1),
        TrialStarted(job_id=job, trial=TrialNumber(1), model=LGB, params=LGB_PARAMS[0], attempt=2),
    )
    put(
        18.4,
        TrialPruned(job_id=job, trial=TrialNumber(2), model=XGB, step=120, value=0.8712),
        TrialStarted(job_id=job, trial=TrialNumber(3), model=XGB, params=XGB_PARAMS[2], attempt=1),
    )
    put(
        4.9,
        TrialFailed(
            job_id=job,
            trial=TrialNumber(3),
            model=XGB,
            error="XGBoostError: out of memory on device 0 allocating 6.1 GiB "
            "(max_depth=10, n_estimators=400)",
            attempt=1,
            retry=False,
        ),
        TrialStarted(job_id=job, trial=TrialNumber(4), model=LGB, params=LGB_PARAMS[1], attempt=1),
    )
    put(
        51.2,
        TrialSaved(
            job_id=job,
            trial=TrialNumber(1),
            model=LGB,
            value=0.9241,
            metrics=metrics(0.9241, 0.6122, 0.0871),
            artifact=artifact(job, 1, LGB),
            sha256=sha("model 1"),
            duration_s=69.5,
        ),
        TrialStarted(job_id=job, trial=TrialNumber(5), model=LGB, params=LGB_PARAMS[2], attempt=1),
    )
    put(
        22.6,
        TrialSaved(
            job_id=job,
            trial=TrialNumber(4),
            model=LGB,
            value=0.9187,
            metrics=metrics(0.9187, 0.6010, 0.0889),
            artifact=artifact(job, 4, LGB),
            sha256=sha("model 4"),
            duration_s=27.4,
        ),
    )


def trial_5_saved(job: JobId) -> TrialSaved:
    """The result the crash interrupted: written torn in run 1, written whole in run 2."""
    return TrialSaved(
        job_id=job,
        trial=TrialNumber(5),
        model=LGB,
        value=0.9219,
        metrics=metrics(0.9219, 0.6051, 0.0880),
        artifact=artifact(job, 5, LGB),
        sha256=sha("model 5"),
        duration_s=61.7,
    )


def tear(events_dir: Path, store: Store, clock: Clock) -> None:
    """Leave the first bytes of a record that a crash cut short at the end of the log."""
    clock.advance(40.0)
    job = next(iter(store.state.jobs))
    line = encode_line(
        store.state.last_seq + 1, format_ts(clock()), encode(trial_5_saved(JobId(job)))
    )
    with open(events_dir / segment_name(1), "ab") as fh:
        fh.write(line[:97])


def run_two(store: Store, clock: Clock) -> None:
    """Daemon run 2: recovery, the end of ``ieee-fraud``, a failed and a cancelled job."""

    def put(after_s: float, *events: Event) -> None:
        clock.advance(after_s)
        store.append(list(events))

    job = JobId(next(iter(store.state.jobs)))
    put(0.3, DaemonStarted(pid=5117, version=VERSION))
    # The workers died with the daemon; w2 had finished trial 5 and its result was still
    # waiting in the queue, unacknowledged, so it is saved now instead of trained again.
    put(
        0.1,
        WorkerLost(
            worker=WorkerId("w0"), pid=4250, gpu=0, reason="process gone after daemon restart"
        ),
        WorkerLost(
            worker=WorkerId("w2"), pid=4263, gpu=1, reason="process gone after daemon restart"
        ),
    )
    put(
        0.5,
        WorkerStarted(worker=WorkerId("w3"), pid=5124, gpu=0),
        WorkerStarted(worker=WorkerId("w4"), pid=5125, gpu=1),
    )
    put(
        0.4,
        trial_5_saved(job),
        StageCompleted(
            job_id=job,
            stage=Stage.SEARCH,
            outputs={
                "trials": 6,
                "best_trial": 1,
                "best_model": "lightgbm",
                "best_value": 0.9241,
            },
        ),
        StageStarted(job_id=job, stage=Stage.VALIDATE),
    )
    put(
        8.2,
        StageCompleted(
            job_id=job,
            stage=Stage.VALIDATE,
            outputs={
                "trial": 1,
                "test_roc_auc": 0.9176,
                "test_pr_auc": 0.6034,
                "gate": 0.9,
                "passed": True,
            },
        ),
        StageStarted(job_id=job, stage=Stage.EXPORT),
    )
    promoted = f"models/ieee-fraud/{job}/model.txt"
    put(
        1.3,
        ModelPromoted(
            job_id=job,
            trial=TrialNumber(1),
            model=LGB,
            artifact=promoted,
            sha256=sha("model 1"),
            value=0.9241,
        ),
        StageCompleted(job_id=job, stage=Stage.EXPORT, outputs={"artifact": promoted}),
        JobCompleted(job_id=job, best_trial=TrialNumber(1), best_value=0.9241, promoted=True),
    )

    text = "name: chargeback-q1\nmodels: [xgboost]\nsearch: {n_trials: 2}\n"
    fsha = sha(text)
    failed = job_id("chargeback-q1", fsha)
    put(
        300.0,
        JobSubmitted(
            job_id=failed,
            name="chargeback-q1",
            spec=spec("chargeback-q1", ["xgboost"], 2, "data/chargebacks/q1.parquet"),
            file="inbox/chargeback-q1.yaml",
            file_sha256=fsha,
        ),
        StageStarted(job_id=failed, stage=Stage.PREPARE),
    )
    put(
        2.4,
        JobFailed(
            job_id=failed,
            reason="prepare: data/chargebacks/q1.parquet: required column 'TransactionDT' is "
            "missing; fix the file and submit the job again",
        ),
    )

    text = "name: ieee-fraud-nightly\nmodels: [xgboost]\nsearch: {n_trials: 20}\n"
    fsha = sha(text)
    cancelled = job_id("ieee-fraud-nightly", fsha)
    put(
        120.0,
        JobSubmitted(
            job_id=cancelled,
            name="ieee-fraud-nightly",
            spec=spec("ieee-fraud-nightly", ["xgboost"], 20, "data/train_transaction.csv"),
            file="inbox/ieee-fraud-nightly.yaml",
            file_sha256=fsha,
        ),
        StageStarted(job_id=cancelled, stage=Stage.PREPARE),
    )
    put(
        3.0,
        StageCompleted(
            job_id=cancelled,
            stage=Stage.PREPARE,
            outputs={
                "rows": 590540,
                "features": 431,
                "train_rows": 377945,
                "valid_rows": 94487,
                "test_rows": 118108,
                "cache": f"cache/{sha('ieee-fraud-features')[:16]}.parquet",
                "cache_hit": True,
            },
        ),
        StageStarted(job_id=cancelled, stage=Stage.SEARCH),
    )
    put(
        0.2,
        TrialStarted(
            job_id=cancelled, trial=TrialNumber(0), model=XGB, params=XGB_PARAMS[0], attempt=1
        ),
    )
    put(
        14.5,
        TrialFailed(
            job_id=cancelled,
            trial=TrialNumber(0),
            model=XGB,
            error="cancelled with its job",
            attempt=1,
            retry=False,
        ),
        JobCancelled(job_id=cancelled, reason="cancelled by operator"),
    )

    put(
        600.0,
        WorkerExited(worker=WorkerId("w3"), pid=5124, gpu=0, exit_code=0),
        WorkerExited(worker=WorkerId("w4"), pid=5125, gpu=1, signal=15),
    )
    put(0.2, DaemonStopped(pid=5117, version=VERSION, reason="SIGTERM"))


def build(state_dir: Path) -> State:
    """Write the story into ``state_dir`` through Store; returns the state the daemon held."""
    clock = Clock(datetime(2024, 3, 1, 9, 0, 0, 125000, tzinfo=UTC))
    store = Store.open(state_dir, clock=clock)
    try:
        run_one(store, clock)
        tear(state_dir / EVENTS_DIR, store, clock)
    finally:
        store.close(snapshot=False)  # a crash leaves no snapshot behind
    clock.advance(9.0)  # systemd restarts the daemon
    store = Store.open(state_dir, clock=clock)  # cuts the torn tail, writes log.repaired
    try:
        assert store.report.torn is not None, "the torn tail was not found"
        run_two(store, clock)
        return store.state.copy_state()
    finally:
        store.close(snapshot=False)


def state_data(state: State) -> Any:
    """The state as JSON data (through pydantic, which dumps State whatever its base class)."""
    return TypeAdapter(State).dump_python(state, mode="json")


def write_expected(out: Path, state: State) -> None:
    text = json.dumps(state_data(state), indent=2, sort_keys=True) + "\n"
    (out / "expected-state.json").write_text(text, encoding="utf-8")


def refresh_expected(folder: Path) -> State:
    """Replay a committed golden log (read-only) into the state this code folds it into."""
    state = State()
    replay(LogScan(folder / EVENTS_DIR), state)
    write_expected(folder, state)
    return state


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--out", type=Path, default=HERE / "v1")
    parser.add_argument("--force", action="store_true", help="overwrite an existing folder")
    parser.add_argument(
        "--refresh-expected",
        type=Path,
        metavar="DIR",
        help="only rewrite DIR/expected-state.json from DIR's committed log",
    )
    args = parser.parse_args(argv)
    if args.refresh_expected is not None:
        state = refresh_expected(args.refresh_expected)
        print(f"wrote {args.refresh_expected / 'expected-state.json'}: seq {state.last_seq}")
        return 0
    out: Path = args.out
    if out.exists() and not args.force:
        print(
            f"{out} exists: golden logs are never regenerated casually (see --force)",
            file=sys.stderr,
        )
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        state_dir = Path(tmp) / "state"
        held = build(state_dir)
        events_dir = state_dir / EVENTS_DIR
        seen = {r.payload["type"] for r in LogScan(events_dir)}
        missing = sorted(set(EVENT_TYPES) - seen)
        assert not missing, f"the story lacks {missing}"
        replayed = State()
        replay(LogScan(events_dir), replayed)
        assert replayed == held, "replay differs from the state the daemon held"
        if out.exists():
            shutil.rmtree(out)
        (out / EVENTS_DIR).mkdir(parents=True)
        # Only the log: the lock, the backup in events/damaged/ and snapshots are not the contract.
        shutil.copyfile(events_dir / segment_name(1), out / EVENTS_DIR / segment_name(1))
    write_expected(out, replayed)
    print(f"wrote {out}: {replayed.last_seq} records")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
