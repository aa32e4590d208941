"""The daemon's journal lines: events and the state in, log lines at fitting levels out."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import structlog
from structlog.testing import capture_logs

from sentinel_daemon.core.events import (
    EVENT_TYPES,
    Event,
    JobCancelled,
    JobCompleted,
    JobFailed,
    JobRejected,
    JobSubmitted,
    ModelPromoted,
    StageStarted,
    TrialFailed,
    TrialSaved,
    TrialStarted,
    WorkerLost,
    WorkerStarted,
)
from sentinel_daemon.core.ids import WorkerId
from sentinel_daemon.core.state import State, apply
from sentinel_daemon.daemon.journal import Line, line_of, lines, write
from sentinel_daemon.layout import EVENTS_DIR
from sentinel_daemon.log.segments import LogScan
from sentinel_daemon.log.store import decode_record
from sentinel_daemon.logs import configure_logging

GOLDEN_V1 = Path(__file__).resolve().parents[2] / "events" / "golden" / "v1"
JOB = "fraud-1a2b3c4d"


@pytest.fixture(autouse=True)
def structlog_restored() -> Iterator[None]:
    yield
    structlog.reset_defaults()


def fold(events: list[Event]) -> State:
    state = State()
    for event in events:
        apply(state, event)
        state.last_seq += 1
    return state


def submitted() -> JobSubmitted:
    return JobSubmitted(job_id=JOB, name="fraud", spec={}, file="inbox/fraud.yaml", file_sha256="0")


def recorded(history: list[Event], event: Event) -> Line:
    """The line of ``event`` recorded after ``history``, with the state as the daemon has it."""
    return line_of(event, fold([*history, event]))


def test_a_failed_job_is_an_error_naming_the_job_its_stage_and_the_reason() -> None:
    stage = StageStarted(job_id=JOB, stage="prepare")
    line = recorded([submitted(), stage], JobFailed(job_id=JOB, reason="prepare: no such file"))
    assert line == Line(
        "error",
        "job.failed",
        {"job_id": JOB, "name": "fraud", "reason": "prepare: no such file", "stage": "prepare"},
    )


def test_a_completed_job_is_info_when_a_model_was_promoted_and_a_warning_when_none_was() -> None:
    history: list[Event] = [
        submitted(),
        TrialStarted(job_id=JOB, trial=0, model="xgboost", params={}, attempt=1),
        TrialSaved(
            job_id=JOB, trial=0, model="xgboost", value=0.93, metrics={}, artifact="a",
            sha256="b", duration_s=2.0,
        ),
    ]  # fmt: skip
    promoted = ModelPromoted(
        job_id=JOB, trial=0, model="xgboost", artifact="a", sha256="b", value=0.93
    )
    done = JobCompleted(job_id=JOB, best_trial=0, best_value=0.93, promoted=True)
    line = recorded([*history, promoted], done)
    assert (line.level, line.event) == ("info", "job.completed")
    assert line.fields["model"] == "xgboost" and line.fields["best_value"] == 0.93
    assert line.fields["trials"] == {"xgboost": {"saved": 1}}
    gated = JobCompleted(
        job_id=JOB, best_trial=0, best_value=0.93, promoted=False,
        reason="quality gate: test ROC AUC 0.61 is under min_test_auc 0.7",
    )  # fmt: skip
    line = recorded(history, gated)
    assert (line.level, line.fields["promoted"]) == ("warning", False)
    assert "quality gate" in line.fields["reason"]


@pytest.mark.parametrize(
    ("event", "name"),
    [
        (JobCancelled(job_id=JOB, reason="cancelled by an operator"), "job.cancelled"),
        (JobRejected(file="inbox/x.yaml", reason="name: must be lower-case"), "job.rejected"),
        (
            TrialFailed(
                job_id=JOB, trial=3, model="lightgbm", error="boom", attempt=3, retry=False
            ),
            "trial.failed",
        ),
        (
            WorkerLost(worker=WorkerId("w0-1-1"), pid=9, gpu=0, reason="killed by signal 9"),
            "worker.lost",
        ),
    ],
)
def test_what_needs_a_person_is_a_warning(event: Event, name: str) -> None:
    history: list[Event] = [submitted(), WorkerStarted(worker=WorkerId("w0-1-1"), pid=9, gpu=0)]
    history.append(TrialStarted(job_id=JOB, trial=3, model="lightgbm", params={}, attempt=3))
    line = recorded(history, event)
    assert (line.level, line.event) == ("warning", name)


def test_a_trial_that_will_be_retried_is_info_and_trial_progress_is_debug() -> None:
    started = TrialStarted(job_id=JOB, trial=1, model="xgboost", params={}, attempt=1)
    retried = TrialFailed(job_id=JOB, trial=1, model="xgboost", error="x", attempt=1, retry=True)
    assert recorded([submitted(), started], retried).level == "info"
    assert recorded([submitted()], started).level == "debug"


def test_every_event_of_the_golden_log_has_a_line_named_after_its_type() -> None:
    state = State()
    seen: dict[str, set[str]] = {}
    for record in LogScan(GOLDEN_V1 / EVENTS_DIR):
        event = decode_record(record)
        apply(state, event)
        (line,) = lines([event], state)
        assert line.event == event.type
        assert orjson.dumps(line.fields)  # plain data: renders as one JSON line
        seen.setdefault(event.type, set()).add(line.level)
    assert set(seen) == set(EVENT_TYPES)
    assert seen["job.failed"] == {"error"}
    assert seen["worker.lost"] == {"warning"}
    assert seen["log.repaired"] == {"warning"}
    assert seen["trial.saved"] == {"debug"}


def test_at_warning_only_what_went_wrong_reaches_the_log() -> None:
    history: list[Event] = [submitted(), StageStarted(job_id=JOB, stage="prepare")]
    failed = JobFailed(job_id=JOB, reason="prepare: bad column")
    out = io.StringIO()
    configure_logging("warning", "json", stream=out)
    write(history, fold(history))
    write([failed], fold([*history, failed]))
    (only,) = [orjson.loads(line) for line in out.getvalue().splitlines()]
    assert (only["event"], only["level"], only["job_id"]) == ("job.failed", "error", JOB)


def test_write_logs_each_line_at_its_level() -> None:
    events: list[Event] = [submitted(), JobCancelled(job_id=JOB, reason="by an operator")]
    with capture_logs() as logs:
        write(events, fold(events))
    assert [(e["event"], e["log_level"]) for e in logs] == [
        ("job.submitted", "info"),
        ("job.cancelled", "warning"),
    ]
