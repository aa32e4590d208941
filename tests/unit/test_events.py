from __future__ import annotations

from typing import Any

import pydantic
import pytest

from sentinel_daemon.core.events import (
    CURRENT_VERSION,
    EVENT_TYPES,
    JobSubmitted,
    TrialSaved,
    TrialStarted,
    UnknownEventVersion,
    decode,
    encode,
    upcast,
)

SAMPLES: list[Any] = [
    JobSubmitted(
        job_id="j1", name="fraud", spec={"name": "fraud"}, file="a.yaml", file_sha256="ab" * 32
    ),
    TrialStarted(job_id="j1", trial=0, model="lightgbm", params={"num_leaves": 31}, attempt=1),
    TrialSaved(
        job_id="j1",
        trial=0,
        model="xgboost",
        value=0.93,
        metrics={"roc_auc": 0.93},
        artifact="jobs/j1/trials/0/model.ubj",
        sha256="cd" * 32,
        duration_s=1.5,
    ),
]


@pytest.mark.parametrize("event", SAMPLES, ids=lambda e: e.type)
def test_events_round_trip_through_their_json_payload(event: Any) -> None:
    payload = encode(event)
    assert payload["type"] == event.type and payload["v"] == CURRENT_VERSION[event.type]
    assert decode(payload) == event


def test_every_event_type_carries_type_and_version() -> None:
    assert len(EVENT_TYPES) >= 18
    for name, cls in EVENT_TYPES.items():
        assert cls.model_fields["type"].default == name
        assert CURRENT_VERSION[name] >= 1


def test_events_are_frozen() -> None:
    with pytest.raises(pydantic.ValidationError):
        SAMPLES[0].name = "other"  # type: ignore[misc]


def test_unknown_fields_and_wrong_types_are_rejected() -> None:
    payload = encode(SAMPLES[1])
    with pytest.raises(pydantic.ValidationError):
        decode({**payload, "surprise": 1})
    with pytest.raises(pydantic.ValidationError):
        decode({**payload, "model": "random-forest"})
    with pytest.raises(pydantic.ValidationError):
        decode({**payload, "attempt": 0})


def test_a_newer_version_than_the_code_knows_is_refused() -> None:
    payload = {**encode(SAMPLES[1]), "v": 2}
    with pytest.raises(UnknownEventVersion, match="v2"):
        decode(payload)


def test_old_versions_are_upcast_step_by_step_before_validation() -> None:
    # A type at v3 whose v1 called the field "score" and whose v2 lacked "unit".
    def v1_to_v2(p: dict[str, Any]) -> dict[str, Any]:
        p = dict(p)
        p["value"] = p.pop("score")
        return {**p, "v": 2}

    def v2_to_v3(p: dict[str, Any]) -> dict[str, Any]:
        return {**p, "v": 3, "unit": "auc"}

    table = {("x.done", 1): v1_to_v2, ("x.done", 2): v2_to_v3}
    out = upcast({"type": "x.done", "v": 1, "score": 0.5}, table, {"x.done": 3})
    assert out == {"type": "x.done", "v": 3, "value": 0.5, "unit": "auc"}


def test_a_missing_upcaster_is_an_error_not_a_silent_pass() -> None:
    with pytest.raises(UnknownEventVersion, match="no upcaster"):
        upcast({"type": "x.done", "v": 1}, {}, {"x.done": 2})


def test_an_unknown_type_is_refused() -> None:
    with pytest.raises(UnknownEventVersion, match="unknown event type"):
        decode({"type": "job.exploded", "v": 1})


def test_a_worker_exit_carries_exactly_one_of_exit_code_and_signal() -> None:
    from sentinel_daemon.core.events import WorkerExited

    WorkerExited(worker="w0", pid=3, gpu=None, exit_code=0)
    WorkerExited(worker="w0", pid=3, gpu=None, signal=9)
    with pytest.raises(pydantic.ValidationError, match="exactly one"):
        WorkerExited(worker="w0", pid=3, gpu=None)
    with pytest.raises(pydantic.ValidationError, match="exactly one"):
        WorkerExited(worker="w0", pid=3, gpu=None, exit_code=1, signal=9)
