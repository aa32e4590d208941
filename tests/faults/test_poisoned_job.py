"""A poisoned job: its data file turns unreadable mid-job; that job fails, the others go on.

Several jobs run at once on two workers, each poisoned job on a data set of its own (so a
cache file of its own). Once a poisoned job has prepared its data and saved a trial, its
transactions file is

- ``deleted``: removed, and its Parquet cache under ``STATE/cache`` overwritten with
  garbage, so that neither the cache nor a fresh read can serve it again;
- ``garbage``: overwritten with random bytes (not UTF-8, not CSV), its cache damaged too;
- ``cache-only`` (full scale): only its cache file is damaged; the source is intact.

Workers keep the prepared data in memory between trials, so a poisoned job may still save
trials from memory; it must end either way: ``job.failed`` whose reason names the file (a
trial that cannot load its data fails, and ``validate`` reads the file again). Tests run
as root here, so ``chmod 000`` would not stop a read: the file is removed or rewritten.
The healthy job must complete with every invariant, and a job whose cache alone was damaged
must complete too (the cache is rebuilt from the source).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from sentinel_daemon.ml import loading
from sentinel_daemon.ml.cache import cache_key, cache_path
from sentinel_daemon.ml.errors import DataError
from tests.daemonkit import (
    DATASET_ROWS,
    SLOW_SPACE,
    TRANSACTIONS,
    DaemonProcess,
    Event,
    copy_dataset,
    job_id_of,
    make_dataset,
    write_job,
)
from tests.faults import faultkit
from tests.faults.faultkit import MakeDaemon
from tests.faults.record import full, record

pytestmark = pytest.mark.faults

#: kind -> how the job's data is poisoned (for the table)
POISONS: dict[str, str] = {
    "deleted": "transactions file deleted mid-search, its Parquet cache overwritten",
    "garbage": "transactions file overwritten with random bytes mid-search, cache overwritten",
    "cache-only": "Parquet cache overwritten mid-search; the source file intact",
}
KINDS = ("deleted", "garbage", "cache-only") if full() else ("deleted", "garbage")
JOB_TIMEOUT_S = 240.0


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One data set per poisoned job (distinct content, so distinct cache files)."""
    root = tmp_path_factory.mktemp("poison-data")
    return {
        kind: make_dataset(root / kind, rows=DATASET_ROWS, seed=101 + i)
        for i, kind in enumerate(KINDS)
    }


def _cache_file(state_dir: Path, prepared: Event) -> Path:
    outputs = prepared["outputs"]
    key = cache_key(outputs["data_hash"], outputs["feature_version"], "full")
    return cache_path(state_dir / "cache", key, "full")


def _poison(kind: str, data_file: Path, cache_file: Path) -> None:
    if kind in ("deleted", "garbage"):
        if kind == "deleted":
            data_file.unlink()
        else:
            size = data_file.stat().st_size
            data_file.write_bytes(b"\xff\xfe\x00" + os.urandom(size))
    cache_file.write_bytes(b"PAR1" + os.urandom(4096))  # looks like Parquet, is not


def test_a_poisoned_data_file_fails_its_job_naming_the_file_and_other_jobs_complete(
    daemons: MakeDaemon, workspace: Path, datasets: dict[str, Path]
) -> None:
    # Every trial of a poisoned job is slow, so that the poison lands mid-search.
    plan = {f"poisoned-{kind}/{n}": "slow" for kind in KINDS for n in range(4)}
    daemon = daemons(
        workers=2,
        settings={**faultkit.FAULT_SETTINGS, "SENTINEL_TRIALS__REPORT_EVERY": "1"},
        faults=plan,
    ).start()
    jobs = workspace / "jobs"
    steady = daemon.submit(
        write_job(jobs, "steady", models=("xgboost", "lightgbm"), n_trials=3, parallelism=2)
    )
    poisoned: dict[str, str] = {}
    for kind in KINDS:
        copy_dataset(datasets[kind], workspace / f"data-{kind}")
        job_file = write_job(
            jobs, f"poisoned-{kind}", n_trials=4, parallelism=1, space=SLOW_SPACE,
            data_dir=f"data-{kind}",
        )  # fmt: skip
        poisoned[kind] = job_id_of(job_file)
        daemon.submit(job_file)

    outcomes: dict[str, list[str]] = {kind: [] for kind in KINDS}
    broken: list[str] = []
    try:
        for kind, job_id in poisoned.items():
            _poison_when_ready(daemon, kind, job_id, workspace)
        for job_id in [steady, *poisoned.values()]:
            daemon.wait_for_event(_ended(job_id), timeout=JOB_TIMEOUT_S, what=f"{job_id} to end")
        events = daemon.events()
        steady_end = faultkit.job_end(events, steady)
        assert steady_end is not None
        if steady_end["type"] != "job.completed":
            broken.append(f"the healthy job {steady} did not complete: {steady_end}")
        for kind, job_id in poisoned.items():
            outcomes[kind] = _judge(events, kind, job_id)
        broken += faultkit.violations(daemon.state_dir)
    except BaseException as exc:
        broken.append(f"the run stopped: {type(exc).__name__}: {exc}"[:500])
        raise
    finally:
        for kind in KINDS:
            wrong = len(outcomes[kind]) + len(broken)
            recovered = int(kind == "cache-only" and not wrong)
            refused = int(kind != "cache-only" and not wrong)
            record(
                f"poisoned job: {kind}",
                POISONS[kind] + "; a healthy job runs beside it",
                cases=1,
                recovered=recovered,
                refused=refused,
                violations=wrong,
                note="; ".join(outcomes[kind] + broken),
            )
    assert not broken, faultkit.describe(broken)
    assert not any(outcomes.values()), faultkit.describe(
        [p for found in outcomes.values() for p in found]
    )
    assert daemon.stop() == 0


def _ended(job_id: str) -> Callable[[Event], bool]:
    ends = ("job.completed", "job.failed", "job.cancelled")
    return lambda e: e["type"] in ends and e.get("job_id") == job_id


def _poison_when_ready(daemon: DaemonProcess, kind: str, job_id: str, workspace: Path) -> None:
    """Poison ``job_id``'s data once it is prepared and has saved a trial."""
    prepared = daemon.wait_for_event(
        lambda e: e["type"] == "stage.completed" and e.get("job_id") == job_id
        and e["stage"] == "prepare",
        timeout=JOB_TIMEOUT_S, what=f"{job_id} prepared",
    )  # fmt: skip
    daemon.wait_for_event(
        lambda e: e["type"] in ("trial.saved", "job.completed", "job.failed")
        and e.get("job_id") == job_id,
        timeout=JOB_TIMEOUT_S, what=f"{job_id} to save a trial",
    )  # fmt: skip
    cache_file = _cache_file(daemon.state_dir, prepared)
    assert cache_file.is_file(), f"no cache file {cache_file} for {job_id}"
    _poison(kind, workspace / f"data-{kind}" / TRANSACTIONS, cache_file)


def _judge(events: list[Event], kind: str, job_id: str) -> list[str]:
    end = faultkit.job_end(events, job_id)
    if end is None:
        return [f"{job_id} never ended"]
    after = [e for e in events if e["seq"] > end["seq"] and e.get("job_id") == job_id]
    found = [f"{job_id}: {e['type']} (seq {e['seq']}) after its end"
             for e in after if e["type"].startswith("trial.")]  # fmt: skip
    if kind == "cache-only":
        if end["type"] != "job.completed":
            found.append(f"{job_id}: a damaged cache alone failed the job: {end}")
        return found
    if end["type"] != "job.failed":
        found.append(f"{job_id}: ended {end['type']} on a poisoned data file, not job.failed")
    elif TRANSACTIONS not in end["reason"]:
        found.append(f"{job_id}: job.failed does not name {TRANSACTIONS}: {end['reason']!r}")
    return found


def test_binary_garbage_in_a_csv_file_is_a_data_error_naming_the_file(tmp_path: Path) -> None:
    # Regression: a CSV that is not UTF-8 raised UnicodeDecodeError, so the poisoned job's
    # reason ("validate failed: UnicodeDecodeError: 'utf-8' codec can't decode...") named
    # no file. Found by test_a_poisoned_data_file_fails_its_job_naming_the_file_...
    data = copy_dataset(make_dataset(tmp_path / "src", rows=200), tmp_path / "data")
    transactions = data / TRANSACTIONS
    transactions.write_bytes(b"\xff\xfe\x00" + os.urandom(2000))
    with pytest.raises(DataError) as caught:
        loading.load(transactions, data / "train_identity.csv")
    assert caught.value.path == transactions
    assert str(transactions) in str(caught.value) and "UTF-8" in str(caught.value)
