from __future__ import annotations

import json
from pathlib import Path

from sentinel_daemon.core.events import (
    DaemonStarted,
    Event,
    JobCompleted,
    JobSubmitted,
    ModelKind,
    ModelPromoted,
    StageCompleted,
    StageStarted,
    TrialFailed,
    TrialPruned,
    TrialSaved,
    TrialStarted,
    WorkerExited,
    WorkerLost,
    WorkerStarted,
)
from sentinel_daemon.core.state import (
    KEPT_ENDED_WORKERS,
    JobStatus,
    StageStatus,
    TrialStatus,
    WorkerStatus,
    apply,
    fold,
    state_as_dict,
    state_from_data,
    state_to_json,
)
from sentinel_daemon.log.records import Position
from sentinel_daemon.log.snapshot import load_snapshot, write_snapshot


def submitted(job: str = "j1") -> JobSubmitted:
    return JobSubmitted(
        job_id=job, name="fraud", spec={"name": "fraud"}, file=f"{job}.yaml", file_sha256="0" * 64
    )


def started(trial: int, model: str = "xgboost", attempt: int = 1) -> TrialStarted:
    return TrialStarted(
        job_id="j1", trial=trial, model=model, params={"max_depth": 4}, attempt=attempt
    )


def saved(trial: int, value: float, model: str = "xgboost") -> TrialSaved:
    return TrialSaved(
        job_id="j1",
        trial=trial,
        model=model,
        value=value,
        metrics={"roc_auc": value},
        artifact=f"jobs/j1/trials/{trial}/model.ubj",
        sha256="a" * 64,
        duration_s=2.0,
    )


def test_a_trial_goes_from_started_to_saved_with_its_artifact() -> None:
    state = fold([submitted(), started(0), saved(0, 0.9)])
    trial = state.jobs["j1"].trials[0]
    assert trial.status is TrialStatus.SAVED and trial.value == 0.9
    assert trial.artifact == "jobs/j1/trials/0/model.ubj"
    assert state.last_seq == 3


def test_a_failed_attempt_with_retry_is_not_an_ended_trial_until_the_last_attempt() -> None:
    events: list[Event] = [
        submitted(),
        started(0),
        TrialFailed(job_id="j1", trial=0, model="xgboost", error="boom", attempt=1, retry=True),
    ]
    state = fold(events)
    job = state.jobs["j1"]
    assert job.trials[0].status is TrialStatus.RETRYING
    assert job.ended_trials(ModelKind.XGBOOST) == 0
    fold(
        [
            started(0, attempt=2),
            TrialFailed(
                job_id="j1", trial=0, model="xgboost", error="boom", attempt=2, retry=False
            ),
        ],
        state,
    )
    assert job.trials[0].status is TrialStatus.FAILED and job.trials[0].attempt == 2
    assert job.ended_trials(ModelKind.XGBOOST) == 1


def test_ended_trials_count_saved_pruned_and_finally_failed_per_model() -> None:
    state = fold(
        [
            submitted(),
            started(0),
            saved(0, 0.8),
            started(1),
            TrialPruned(job_id="j1", trial=1, model="xgboost", step=20, value=0.6),
            started(2, "lightgbm"),
            saved(2, 0.85, "lightgbm"),
            started(3),
        ]
    )
    job = state.jobs["j1"]
    assert job.ended_trials(ModelKind.XGBOOST) == 2
    assert job.ended_trials(ModelKind.LIGHTGBM) == 1
    assert job.best_saved().number == 2  # type: ignore[union-attr]
    assert job.best_saved(ModelKind.XGBOOST).number == 0  # type: ignore[union-attr]


def test_stages_promotion_and_completion_are_recorded() -> None:
    state = fold(
        [
            submitted(),
            StageStarted(job_id="j1", stage="search"),
            started(0),
            saved(0, 0.9),
            StageCompleted(job_id="j1", stage="search", outputs={"best": 0}),
            ModelPromoted(
                job_id="j1", trial=0, model="xgboost", artifact="a", sha256="b", value=0.9
            ),
            JobCompleted(job_id="j1", best_trial=0, best_value=0.9, promoted=True),
        ]
    )
    job = state.jobs["j1"]
    assert job.stages["search"].status is StageStatus.COMPLETED
    assert job.stages["search"].outputs == {"best": 0}
    assert job.promoted is not None and job.promoted.trial == 0
    assert job.status is JobStatus.COMPLETED and state.running_jobs() == []


def test_workers_are_tracked_until_lost() -> None:
    state = fold(
        [
            DaemonStarted(pid=10, version="0.1"),
            WorkerStarted(worker="w0", pid=11, gpu=None),
            WorkerLost(worker="w0", pid=11, gpu=None, reason="no heartbeat", signal=9),
            WorkerExited(worker="w1", pid=12, gpu=None, exit_code=0),  # never started
        ]
    )
    assert state.daemon_pid == 10
    assert state.workers["w0"].status is WorkerStatus.LOST
    assert state.workers["w0"].signal == 9
    assert state.workers_ended == {WorkerStatus.LOST: 1} and state.orphans == 1


def test_only_the_latest_ended_workers_are_kept_and_all_are_counted() -> None:
    """A crash-looping worker must not grow the state (and its snapshots) without bound.

    The worker that ran longest and ended last is kept: the daemon looks up a predecessor's
    workers by id at start-up to hand their commands back.
    """
    events: list[Event] = [
        DaemonStarted(pid=10, version="0.1"),
        WorkerStarted(worker="old", pid=11, gpu=0),
    ]
    for n in range(KEPT_ENDED_WORKERS + 100):
        events.append(WorkerStarted(worker=f"w1-1-{n}", pid=100 + n, gpu=1))
        events.append(WorkerLost(worker=f"w1-1-{n}", pid=100 + n, gpu=1, reason="crashed"))
    events.append(WorkerStarted(worker="new", pid=12, gpu=1))
    events.append(WorkerExited(worker="old", pid=11, gpu=0, signal=15))
    state = fold(events)
    assert len(state.workers) == KEPT_ENDED_WORKERS + 1  # "new" is alive
    assert state.workers["new"].status is WorkerStatus.ALIVE
    assert state.workers["old"].status is WorkerStatus.EXITED
    assert list(state.workers)[-1] == "old"  # ended last
    assert "w1-1-100" not in state.workers and "w1-1-101" in state.workers
    assert state.workers_ended == {
        WorkerStatus.LOST: KEPT_ENDED_WORKERS + 100,
        WorkerStatus.EXITED: 1,
    }


def test_pruning_after_a_snapshot_round_trip_matches_a_full_replay(tmp_path: Path) -> None:
    """The ended workers' order (which decides what is pruned) survives a snapshot."""
    first: list[Event] = [DaemonStarted(pid=10, version="0.1")]
    for n in range(KEPT_ENDED_WORKERS + 20):
        first.append(WorkerStarted(worker=f"a{n}", pid=n + 100, gpu=None))
    for n in reversed(range(KEPT_ENDED_WORKERS + 10)):  # end in the reverse of start order
        first.append(WorkerExited(worker=f"a{n}", pid=n + 100, gpu=None, exit_code=0))
    rest: list[Event] = [
        WorkerLost(worker=f"a{n}", pid=n + 100, gpu=None, reason="gone")
        for n in range(KEPT_ENDED_WORKERS + 10, KEPT_ENDED_WORKERS + 20)
    ]
    whole = fold(first + rest)
    write_snapshot(tmp_path / "snapshot.json", fold(first), Position("s", 0))
    snapshot = load_snapshot(tmp_path / "snapshot.json")
    assert snapshot is not None
    resumed = fold(rest, snapshot.state)
    assert state_as_dict(resumed) == state_as_dict(whole)
    assert list(resumed.workers) == list(whole.workers)
    assert len(whole.workers) == KEPT_ENDED_WORKERS


def test_events_about_unknown_jobs_are_counted_not_fatal() -> None:
    state = fold([saved(5, 0.5)])
    assert state.jobs == {} and state.orphans == 1


def test_apply_is_deterministic_and_touches_only_the_state_it_is_given() -> None:
    events: list[Event] = [submitted(), started(0), saved(0, 0.7)]
    a = fold(events)
    before = a.copy_state()
    b = fold(events)
    assert a == b
    apply(b, started(1))
    assert a == before  # folding into b left a alone


def test_state_survives_a_json_round_trip_for_snapshots() -> None:
    state = fold(
        [submitted(), started(0), saved(0, 0.7), StageStarted(job_id="j1", stage="prepare")]
    )
    again = state_from_data(json.loads(state_to_json(state)))
    assert again == state


def test_an_ended_job_keeps_counts_and_its_best_not_every_trial() -> None:
    from sentinel_daemon.core.events import JobFailed

    state = fold(
        [
            submitted(),
            started(0),
            saved(0, 0.8),
            started(1),
            saved(1, 0.9),
            started(2, "lightgbm"),
            TrialFailed(job_id="j1", trial=2, model="lightgbm", error="x", attempt=1, retry=False),
            JobFailed(job_id="j1", reason="data file vanished"),
        ]
    )
    job = state.jobs["j1"]
    assert job.trials == {} and (job.best_trial, job.best_value) == (1, 0.9)
    assert job.ended_trials(ModelKind.XGBOOST) == 2
    assert job.ended_trials(ModelKind.LIGHTGBM) == 1
    assert job.trial_counts == {"xgboost": {"saved": 2}, "lightgbm": {"failed": 1}}
