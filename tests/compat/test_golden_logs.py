"""Every golden log in ``events/golden/<version>/`` still replays, byte for byte, to its state.

A golden folder is a state directory's ``events/`` as some version of Sentinel wrote it,
and ``expected-state.json``, the state it replays to. They are committed once and never
regenerated: later code must read today's bytes. A format change adds a folder (and an
upcaster in ``events.py``); it never edits one. Every folder here is tested.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import TypeAdapter

from sentinel_daemon.core.events import EVENT_TYPES, ModelKind
from sentinel_daemon.core.state import JobStatus, State, TrialStatus, WorkerStatus
from sentinel_daemon.layout import EVENTS_DIR
from sentinel_daemon.log.segfiles import list_segments
from sentinel_daemon.log.segments import LogScan
from sentinel_daemon.log.store import Store, decode_record

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "events" / "golden"


def golden_versions() -> list[Path]:
    return sorted(p for p in GOLDEN.iterdir() if p.is_dir() and p.name[0] not in "._")


VERSIONS = golden_versions()


def state_data(state: State) -> Any:
    """The state as JSON data, the shape of ``expected-state.json``."""
    return TypeAdapter(State).dump_python(state, mode="json")


def expected_state(version: Path) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads((version / "expected-state.json").read_bytes())
    return data


def copy_to_state_dir(version: Path, tmp: Path) -> Path:
    """A fresh state directory holding the golden log (the golden folder stays untouched)."""
    state_dir = tmp / f"state-{version.name}"
    shutil.copytree(version / EVENTS_DIR, state_dir / EVENTS_DIR)
    return state_dir


@pytest.fixture(params=VERSIONS, ids=lambda p: p.name)
def version(request: pytest.FixtureRequest) -> Path:
    path: Path = request.param
    return path


def test_golden_folders_exist_and_each_holds_a_log_and_its_expected_state() -> None:
    assert VERSIONS, f"no golden logs under {GOLDEN}"
    for version in VERSIONS:
        assert list_segments(version / EVENTS_DIR), f"{version} has no events/*.jsonl"
        assert (version / "expected-state.json").is_file(), f"{version} lacks expected-state.json"


def test_golden_log_replays_through_the_store_to_its_expected_state(
    version: Path, tmp_path: Path
) -> None:
    state_dir = copy_to_state_dir(version, tmp_path)
    store = Store.open(state_dir)
    try:
        assert store.report.torn is None
        assert store.report.replayed == store.state.last_seq
        assert state_data(store.state) == expected_state(version)
    finally:
        store.close(snapshot=False)


def test_opening_a_golden_log_changes_none_of_its_bytes(version: Path, tmp_path: Path) -> None:
    state_dir = copy_to_state_dir(version, tmp_path)
    Store.open(state_dir).close(snapshot=False)
    for name in list_segments(version / EVENTS_DIR):
        assert (state_dir / EVENTS_DIR / name).read_bytes() == (
            version / EVENTS_DIR / name
        ).read_bytes(), f"{name} was rewritten on open"


def test_golden_state_survives_a_snapshot_and_reopen(version: Path, tmp_path: Path) -> None:
    state_dir = copy_to_state_dir(version, tmp_path)
    Store.open(state_dir).close(snapshot=True)
    store = Store.open(state_dir)
    try:
        assert store.report.snapshot_seq == store.state.last_seq
        assert store.report.replayed == 0
        assert state_data(store.state) == expected_state(version)
    finally:
        store.close(snapshot=False)


def test_golden_log_scans_intact_with_contiguous_seq_from_one(version: Path) -> None:
    scan = LogScan(version / EVENTS_DIR)
    records = list(scan)
    assert scan.torn is None
    assert [r.seq for r in records] == list(range(1, len(records) + 1))
    assert scan.last_seq == len(records)
    for record in records:
        decode_record(record)  # every record decodes (upcast if older) into a current event


def test_every_event_type_appears_in_some_golden_log() -> None:
    seen = {str(r.payload["type"]) for version in VERSIONS for r in LogScan(version / EVENTS_DIR)}
    missing = sorted(set(EVENT_TYPES) - seen)
    assert not missing, (
        f"no golden log holds {missing}: add a golden folder (events/golden/vN/, written "
        f"through Store by a script like events/golden/make_golden.py) that does"
    )


# ---- what the v1 story must say (events/golden/make_golden.py tells it) -----------------

V1 = GOLDEN / "v1"


@pytest.fixture(scope="module")
def v1(tmp_path_factory: pytest.TempPathFactory) -> Iterator[State]:
    store = Store.open(copy_to_state_dir(V1, tmp_path_factory.mktemp("golden")))
    try:
        yield store.state
    finally:
        store.close(snapshot=False)


def jobs_by_name(state: State) -> dict[str, Any]:
    return {job.name: job for job in state.jobs.values()}


def test_v1_jobs_end_completed_failed_and_cancelled(v1: State) -> None:
    jobs = jobs_by_name(v1)
    assert {name: job.status for name, job in jobs.items()} == {
        "ieee-fraud": JobStatus.COMPLETED,
        "chargeback-q1": JobStatus.FAILED,
        "ieee-fraud-nightly": JobStatus.CANCELLED,
    }
    assert "TransactionDT" in jobs["chargeback-q1"].reason
    assert jobs["ieee-fraud-nightly"].reason == "cancelled by operator"
    assert v1.rejected == 1
    assert v1.running_jobs() == []


def v1_records(**match: Any) -> list[dict[str, Any]]:
    """The v1 log's payloads whose fields equal ``match``."""
    return [
        r.payload
        for r in LogScan(V1 / EVENTS_DIR)
        if all(r.payload.get(k) == v for k, v in match.items())
    ]


def test_v1_promotes_the_best_saved_trial(v1: State) -> None:
    job = jobs_by_name(v1)["ieee-fraud"]
    saved = v1_records(type="trial.saved", job_id=job.job_id)
    best = max(saved, key=lambda p: p["value"])
    assert (best["trial"], best["model"], best["value"]) == (1, "lightgbm", 0.9241)
    assert job.promoted is not None
    assert (job.promoted.trial, job.promoted.model, job.promoted.value) == (
        1,
        ModelKind.LIGHTGBM,
        0.9241,
    )
    assert job.promoted.sha256 == best["sha256"]
    assert (job.best_trial, job.best_value) == (1, 0.9241)


def test_v1_completed_job_has_n_trials_ended_trials_per_model(v1: State) -> None:
    job = jobs_by_name(v1)["ieee-fraud"]
    n_trials = job.spec["search"]["n_trials"]
    assert n_trials == 3
    for model in (ModelKind.XGBOOST, ModelKind.LIGHTGBM):
        assert job.ended_trials(model) == n_trials, model
    # An ended job keeps counts, not trials: the state grows with running work only.
    assert job.trials == {}
    assert job.trial_counts == {
        ModelKind.XGBOOST: {TrialStatus.SAVED: 1, TrialStatus.PRUNED: 1, TrialStatus.FAILED: 1},
        ModelKind.LIGHTGBM: {TrialStatus.SAVED: 3},
    }
    assert v1_records(type="trial.pruned", job_id=job.job_id)[0]["step"] == 120
    failed = v1_records(type="trial.failed", job_id=job.job_id, retry=False)
    assert len(failed) == 1 and "out of memory" in failed[0]["error"]


def test_v1_retried_trial_is_saved_on_its_second_attempt(v1: State) -> None:
    lines = [r.payload for r in LogScan(V1 / EVENTS_DIR) if r.payload.get("trial") == 1]
    story = [(p["type"], p.get("attempt"), p.get("retry")) for p in lines]
    assert story == [
        ("trial.started", 1, None),
        ("trial.failed", 1, True),
        ("trial.started", 2, None),
        ("trial.saved", None, None),
        ("model.promoted", None, None),
    ]


def test_v1_no_trial_is_saved_twice(v1: State) -> None:
    saved = [
        (r.payload["job_id"], r.payload["trial"])
        for r in LogScan(V1 / EVENTS_DIR)
        if r.payload["type"] == "trial.saved"
    ]
    assert len(saved) == len(set(saved)) == 4


def test_v1_workers_end_lost_or_exited(v1: State) -> None:
    assert {w: s.status for w, s in v1.workers.items()} == {
        "w0": WorkerStatus.LOST,
        "w1": WorkerStatus.LOST,
        "w2": WorkerStatus.LOST,
        "w3": WorkerStatus.EXITED,
        "w4": WorkerStatus.EXITED,
    }
    assert v1.workers["w1"].signal == 9
    assert (v1.workers["w3"].exit_code, v1.workers["w4"].signal) == (0, 15)
    assert v1.workers_ended == {WorkerStatus.LOST: 3, WorkerStatus.EXITED: 2}


def test_v1_daemon_started_twice_repaired_the_log_once_and_stopped(v1: State) -> None:
    assert v1.last_seq == 50
    assert v1.daemon_starts == 2
    assert v1.log_repairs == 1
    assert v1.daemon_pid is None  # daemon.stopped was the last word
    assert v1.orphans == 0
    types = [r.payload["type"] for r in LogScan(V1 / EVENTS_DIR)]
    assert types[0] == "daemon.started" and types[-1] == "daemon.stopped"
    assert types.index("log.repaired") == types.index("daemon.started", 1) - 1


# ---- the README's jq recipes print what the README says they print ----------------------


def readme_recipes() -> list[tuple[str, str]]:
    """``(command, expected output)`` of each recipe that shows its output."""
    text = (REPO / "events" / "README.md").read_text(encoding="utf-8")
    section = text.split("## jq recipes", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"^```(\w+)\n(.*?)^```$", section, flags=re.M | re.S)
    return [
        (cmd, out)
        for (lang, cmd), (next_lang, out) in pairwise(blocks)
        if lang == "sh" and next_lang == "text"
    ]


def test_readme_jq_recipes_print_what_the_readme_shows(tmp_path: Path, jq_dir: Path) -> None:
    recipes = readme_recipes()
    assert len(recipes) >= 10
    state_dir = copy_to_state_dir(V1, tmp_path)
    path = f"{jq_dir}{os.pathsep}{os.environ['PATH']}"
    for command, expected in recipes:
        done = subprocess.run(
            ["bash", "-c", "set -o pipefail\n" + command],
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "STATE": str(state_dir), "PATH": path},
        )
        assert done.returncode == 0 and not done.stderr, f"{command}\n{done.stderr}"
        assert done.stdout == expected, command
