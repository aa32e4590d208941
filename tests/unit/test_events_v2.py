"""Intermediate values: from the worker's reports, through its messages, into v2 trial events."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import orjson
import pytest

from sentinel_daemon.core.events import (
    CURRENT_VERSION,
    UPCASTERS,
    TrialPruned,
    TrialSaved,
    decode,
    encode,
)
from sentinel_daemon.layout import EVENTS_DIR
from sentinel_daemon.log.segments import LogScan
from sentinel_daemon.ml import synth
from sentinel_daemon.queue.maildir import Queue
from sentinel_daemon.queue.messages import (
    MESSAGE_ADAPTER,
    Progress,
    Pruned,
    Saved,
    TrialCommand,
    TrialData,
)
from sentinel_daemon.worker.loop import Worker
from tests.unit.test_jobs import JOB, Harness

GOLDEN_V1 = Path(__file__).resolve().parents[2] / "events" / "golden" / "v1"
CURVE = ((10, 0.81), (20, 0.8350000000000001), (30, 0.84))

V1_SAVED: dict[str, Any] = {
    "type": "trial.saved",
    "v": 1,
    "job_id": "j1",
    "trial": 4,
    "model": "lightgbm",
    "value": 0.9187,
    "metrics": {"roc_auc": 0.9187},
    "artifact": "jobs/j1/trials/4/1-w0/model.txt",
    "sha256": "ab" * 32,
    "duration_s": 27.4,
}
V1_PRUNED: dict[str, Any] = {
    "type": "trial.pruned",
    "v": 1,
    "job_id": "j1",
    "trial": 2,
    "model": "xgboost",
    "step": 120,
    "value": 0.8712,
}


def test_trial_saved_and_pruned_are_written_at_v2() -> None:
    assert CURRENT_VERSION["trial.saved"] == CURRENT_VERSION["trial.pruned"] == 2
    assert ("trial.saved", 1) in UPCASTERS and ("trial.pruned", 1) in UPCASTERS


@pytest.mark.parametrize("payload", [V1_SAVED, V1_PRUNED], ids=lambda p: p["type"])
def test_a_v1_record_is_upcast_with_no_intermediate_values(payload: dict[str, Any]) -> None:
    before = dict(payload)
    event = decode(payload)
    assert isinstance(event, TrialSaved | TrialPruned)
    assert event.v == 2 and event.intermediate == ()
    assert payload == before, "an upcaster must not change the record it was given"
    assert encode(event) == {**payload, "v": 2, "intermediate": []}


def test_every_v1_golden_trial_record_reads_as_v2_with_no_intermediate_values() -> None:
    seen = 0
    for record in LogScan(GOLDEN_V1 / EVENTS_DIR):
        if record.payload["type"] in ("trial.saved", "trial.pruned"):
            assert record.payload["v"] == 1
            event = decode(dict(record.payload))
            assert isinstance(event, TrialSaved | TrialPruned)
            assert event.v == 2 and event.intermediate == ()
            seen += 1
    assert seen == 5


def test_a_v2_record_keeps_its_intermediate_values_as_step_value_pairs() -> None:
    event = TrialPruned(
        job_id="j1", trial=2, model="xgboost", step=30, value=0.84, intermediate=CURVE
    )
    payload = encode(event)
    assert payload["v"] == 2
    assert orjson.loads(orjson.dumps(payload))["intermediate"] == [[s, v] for s, v in CURVE]
    assert decode(orjson.loads(orjson.dumps(payload))) == event
    assert list(payload)[-1] == "intermediate"  # added last: older fields keep their places


def saved_message(**extra: Any) -> Saved:
    return Saved(
        worker_id="w0",
        msg_seq=3,
        command_id="j1.4.1",
        artifact="jobs/j1/trials/4/1-w0/model.txt",
        sha256="ab" * 32,
        metrics={"roc_auc": 0.84},
        value=0.84,
        train_seconds=0.5,
        duration_s=0.7,
        **extra,
    )


def test_saved_and_pruned_messages_carry_intermediate_values_through_the_queue(
    tmp_path: Path,
) -> None:
    queue = Queue(tmp_path / "queue")
    saved = saved_message(intermediate=CURVE)
    pruned = Pruned(
        worker_id="w0", msg_seq=4, command_id="j1.5.1", step=20, value=0.83, intermediate=CURVE[:2]
    )
    queue.post("w0", saved)
    queue.post("w0", pruned)
    assert [m for _, m in queue.results()] == [saved, pruned]


def test_a_message_from_an_older_worker_without_intermediate_values_still_loads() -> None:
    old = saved_message().model_dump(mode="json")
    del old["intermediate"]
    assert MESSAGE_ADAPTER.validate_json(orjson.dumps(old)) == saved_message()
    assert saved_message().intermediate == ()


def test_a_message_refuses_a_non_finite_intermediate_value() -> None:
    with pytest.raises(ValueError):
        saved_message(intermediate=((10, float("nan")),))


def test_the_job_actor_records_a_results_intermediate_values(tmp_path: Path) -> None:
    h = Harness(tmp_path, n_trials=1, parallelism=2)
    h.searching()
    model = tmp_path / "jobs" / JOB / "m.ubj"
    model.parent.mkdir(parents=True)
    model.write_bytes(b"model bytes")
    job = h.state.jobs[JOB]
    saved_trial, pruned_trial = sorted(job.trials)
    (saved,) = h.ingest(
        Saved(
            worker_id="w",
            msg_seq=1,
            command_id=f"{JOB}.{saved_trial}.1",
            artifact=f"jobs/{JOB}/m.ubj",
            sha256=hashlib.sha256(b"model bytes").hexdigest(),
            metrics={"roc_auc": 0.84},
            value=0.84,
            train_seconds=0.5,
            duration_s=0.6,
            intermediate=CURVE,
        ),
    )
    (pruned,) = h.ingest(
        Pruned(
            worker_id="w",
            msg_seq=2,
            command_id=f"{JOB}.{pruned_trial}.1",
            step=20,
            value=0.83,
            intermediate=CURVE[:2],
        ),
    )
    assert isinstance(saved, TrialSaved) and saved.intermediate == CURVE
    assert isinstance(pruned, TrialPruned) and pruned.intermediate == CURVE[:2]


# ---- the worker collects what it reports ------------------------------------------------


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return synth.generate(1500, tmp_path_factory.mktemp("v2-data"), seed=5, fraud_rate=0.1)


def run_one(state_dir: Path, data: tuple[Path, Path], trial: int, prune: bool) -> list[Any]:
    """Run one command through an in-process worker; the messages it posted, in order."""
    worker = Worker(state_dir, "w0", gpu=None, heartbeat_s=5.0, parent_pid=None, stop=None)
    command = TrialCommand(
        job_id="v2",
        trial=trial,
        attempt=1,
        model="xgboost",
        params={"n_estimators": 30, "max_depth": 3, "learning_rate": 0.3},
        data=TrialData(
            transactions=data[0],
            identity=data[1],
            cache_dir=Path("cache"),
            test_fraction=0.2,
            valid_fraction=0.2,
        ),
        artifact_dir=f"models/v2/{trial}",
        report_every=10,
    )
    worker.queue.put(command)
    claimed = worker.queue.claim("w0")
    assert claimed is not None
    if prune:
        worker.queue.request_prune("w0", command.command_id)
    worker.run_trial(claimed)
    messages = [m for _, m in worker.queue.results() if m.command_id == command.command_id]
    return messages


def test_the_worker_sends_every_progress_report_again_with_its_result(
    tmp_path: Path, data: tuple[Path, Path]
) -> None:
    messages = run_one(tmp_path, data, 0, prune=False)
    progress = [(m.step, m.value) for m in messages if isinstance(m, Progress)]
    assert isinstance(messages[-1], Saved)
    assert len(progress) == 3
    assert messages[-1].intermediate == tuple(progress)


def test_a_pruned_trial_carries_the_values_up_to_its_last_step(
    tmp_path: Path, data: tuple[Path, Path]
) -> None:
    messages = run_one(tmp_path, data, 1, prune=True)
    pruned = messages[-1]
    assert isinstance(pruned, Pruned)
    progress = [(m.step, m.value) for m in messages if isinstance(m, Progress)]
    assert pruned.intermediate == tuple(progress) and pruned.intermediate[-1][0] == pruned.step
