"""The job actor's decisions: events in, events out, carried out against a real queue folder."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import optuna
import pytest

from sentinel_daemon.core.events import (
    Event,
    JobCompleted,
    JobFailed,
    JobSubmitted,
    ModelKind,
    ModelPromoted,
    Stage,
    StageCompleted,
    StageStarted,
    TrialFailed,
    TrialSaved,
    TrialStarted,
)
from sentinel_daemon.core.gate import quality_gate
from sentinel_daemon.core.jobspec import JobSpec
from sentinel_daemon.core.state import State, TrialStatus, apply
from sentinel_daemon.daemon.actor import ActorContext, JobActor
from sentinel_daemon.daemon.decisions import Found, Input, Lost, Tick
from sentinel_daemon.daemon.effects import Effector
from sentinel_daemon.daemon.reports import ReportRunner
from sentinel_daemon.daemon.results import answer_of, saved_model
from sentinel_daemon.daemon.stages import export_best
from sentinel_daemon.queue.maildir import Queue
from sentinel_daemon.queue.messages import Failed, Saved, TrialCommand, WorkerMessage

JOB = "fraud-0123abcd"
NOW = datetime(2025, 6, 2, 8, 0, tzinfo=UTC)


def make_spec(**search: Any) -> dict[str, Any]:
    spec = JobSpec.from_raw(
        {
            "name": "fraud",
            "data": {"transactions": "/data/t.csv"},
            "models": ["xgboost", "lightgbm"],
            "search": {"n_trials": 2, "parallelism": 2, "seed": 3, "sampler": "random", **search},
        }
    )
    return spec.model_dump(mode="json", exclude_none=True)


class Harness:
    """A state, an actor and a queue; ``step`` appends what the actor decides, then acts."""

    def __init__(self, tmp: Path, max_attempts: int = 2, **search: Any) -> None:
        self.tmp = tmp
        self.state = State()
        self.queue = Queue(tmp / "queue")
        self.effector = Effector(tmp, self.queue, ReportRunner(tmp))
        self.ctx = ActorContext(tmp, max_attempts=max_attempts, report_every=5)
        self.append(
            JobSubmitted(
                job_id=JOB, name="fraud", spec=make_spec(**search), file="f", file_sha256="0" * 64
            )
        )
        self.actor = JobActor(self.state.jobs[JOB], self.ctx)

    def append(self, *events: Event) -> None:
        for event in events:
            apply(self.state, event)
            self.state.last_seq += 1

    def step(self, dispatching: bool = True) -> list[Event]:
        running = self.effector.stage_running(JOB)
        events, effects = self.actor.decide(self.state, Tick(dispatching, True, running), NOW)
        self.append(*events)
        for event in events:
            self.actor.fold(event)
        self.effector.carry_out(effects)
        return events

    def decide(self, inp: Input) -> list[Event]:
        """What the actor decides on ``inp`` (not appended)."""
        return self.actor.decide(self.state, inp, NOW).events

    def ingest(self, message: WorkerMessage) -> list[Event]:
        return self.decide(answer_of(self.tmp, message))

    def lost(self, command: TrialCommand, reason: str) -> list[Event]:
        return self.decide(Lost(command, reason, saved_model(self.tmp, command)))

    def recover_saved(self) -> list[Event]:
        """At start-up: the running attempts whose model is complete on disk."""
        events: list[Event] = []
        for t in self.state.jobs[JOB].trials.values():
            command = self.actor.command(t.number, t.model, t.params, t.attempt)
            if t.status is TrialStatus.RUNNING and (found := saved_model(self.tmp, command)):
                events += self.decide(Found(command, found))
        return events

    def searching(self) -> list[Event]:
        self.append(
            StageStarted(job_id=JOB, stage=Stage.PREPARE),
            StageCompleted(job_id=JOB, stage=Stage.PREPARE, outputs={}),
            StageStarted(job_id=JOB, stage=Stage.SEARCH),
        )
        return self.fill()

    def fill(self) -> list[Event]:
        """Step until the search has nothing more to start (one new trial a step)."""
        started: list[Event] = []
        while events := self.step():
            started += events
        return started

    def save(self, trial: int, value: float) -> TrialSaved:
        t = self.state.jobs[JOB].trials[trial]
        event = TrialSaved(
            job_id=JOB,
            trial=trial,
            model=t.model,
            value=value,
            metrics={"roc_auc": value},
            artifact=f"a/{trial}",
            sha256="b" * 64,
            duration_s=1.0,
        )
        self.append(event)
        self.actor.fold(event)
        return event


def test_a_new_job_starts_with_prepare_and_waits_while_stopping(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    assert h.step(dispatching=False) == []
    assert h.step() == [StageStarted(job_id=JOB, stage=Stage.PREPARE)]


def test_search_fills_parallelism_interleaving_models_and_queues_each_command(
    tmp_path: Path,
) -> None:
    h = Harness(tmp_path)
    started = h.searching()
    assert [type(e) for e in started] == [TrialStarted, TrialStarted]
    assert [e.model for e in started if isinstance(e, TrialStarted)] == ["xgboost", "lightgbm"]
    assert [e.trial for e in started if isinstance(e, TrialStarted)] == [0, 1]
    assert sorted(h.queue.in_flight()) == [f"{JOB}.0.1", f"{JOB}.1.1"]
    assert h.step() == []  # nothing more while both are in flight


def test_search_completes_after_n_trials_ended_per_model_with_the_best_of_each(
    tmp_path: Path,
) -> None:
    h = Harness(tmp_path)
    h.searching()
    values = {0: 0.7, 1: 0.6, 2: 0.9, 3: 0.65}
    for number in range(4):
        h.save(number, values[number])
        if number < 2:  # each model has one more trial to start
            assert [type(e) for e in h.step()] == [TrialStarted]
        elif number == 2:  # xgboost is done; lightgbm's last trial still runs
            assert h.step() == []
    done = h.step()
    assert isinstance(done[0], StageCompleted) and done[0].stage is Stage.SEARCH
    assert done[0].outputs == {
        "xgboost": {"trial": 2, "value": 0.9},
        "lightgbm": {"trial": 3, "value": 0.65},
    }
    assert h.state.jobs[JOB].ended_trials(ModelKind.XGBOOST) == 2


def test_a_failed_attempt_is_retried_with_the_same_params_until_max_attempts(
    tmp_path: Path,
) -> None:
    h = Harness(tmp_path, max_attempts=2, n_trials=1, parallelism=1)
    (first,) = h.searching()
    assert isinstance(first, TrialStarted)
    msg = Failed(worker_id="w0-1-1", msg_seq=1, command_id=f"{JOB}.0.1", error="boom")
    (failed,) = h.ingest(msg)
    assert isinstance(failed, TrialFailed) and failed.retry
    h.append(failed)
    (retry,) = h.step()
    assert isinstance(retry, TrialStarted)
    assert (retry.trial, retry.attempt, retry.params) == (0, 2, first.params)
    assert f"{JOB}.0.2" in h.queue.in_flight()
    # The first attempt's result, seen again, is stale now.
    assert h.ingest(msg) == []
    msg2 = Failed(worker_id="w0-1-1", msg_seq=2, command_id=f"{JOB}.0.2", error="boom again")
    (last,) = h.ingest(msg2)
    assert isinstance(last, TrialFailed) and not last.retry
    h.append(last)
    h.actor.fold(last)
    assert h.state.jobs[JOB].trials[0].status is TrialStatus.FAILED


def test_a_job_whose_trials_all_fail_fails_and_names_the_last_error(tmp_path: Path) -> None:
    h = Harness(tmp_path, max_attempts=1, n_trials=1, parallelism=2)
    h.searching()
    for number in (0, 1):
        cid = f"{JOB}.{number}.1"
        (ev,) = h.ingest(
            Failed(
                worker_id="w", msg_seq=number + 1, command_id=cid, error=f"ValueError: bad {number}"
            ),
        )
        h.append(ev)
        h.actor.fold(ev)
    events = h.step()
    assert isinstance(events[-1], JobFailed)
    assert "ValueError: bad 1" in events[-1].reason


def test_a_saved_result_is_checked_against_its_file_and_recorded_once(tmp_path: Path) -> None:
    h = Harness(tmp_path, n_trials=1, parallelism=1)
    h.searching()
    model = tmp_path / "jobs" / JOB / "m.ubj"
    model.parent.mkdir(parents=True)
    model.write_bytes(b"model bytes")
    good = hashlib.sha256(b"model bytes").hexdigest()

    def saved(sha: str, seq: int) -> Saved:
        return Saved(
            worker_id="w",
            msg_seq=seq,
            command_id=f"{JOB}.0.1",
            artifact=f"jobs/{JOB}/m.ubj",
            sha256=sha,
            metrics={"roc_auc": 0.8},
            value=0.8,
            train_seconds=0.5,
            duration_s=0.6,
        )

    (bad,) = h.ingest(saved("c" * 64, 1))
    assert isinstance(bad, TrialFailed) and "does not match" in bad.error
    (ok,) = h.ingest(saved(good, 2))
    assert isinstance(ok, TrialSaved) and ok.sha256 == good
    h.append(ok)
    assert h.ingest(saved(good, 3)) == []  # a replayed result is a no-op


def test_rebuilt_studies_hold_the_recorded_trials_and_reask_the_ones_in_flight(
    tmp_path: Path,
) -> None:
    h = Harness(tmp_path, n_trials=3, parallelism=2)
    h.searching()
    h.save(0, 0.75)
    h.step()  # trial 2 starts
    recorded = {n: dict(t.params) for n, t in h.state.jobs[JOB].trials.items()}
    # A new daemon: a fresh actor over the same state.
    actor = JobActor(h.state.jobs[JOB], h.ctx)
    actor.rebuild(h.state.jobs[JOB])
    xgb = actor.studies["xgboost"].get_trials(deepcopy=False)
    assert [t.state for t in xgb] == [
        optuna.trial.TrialState.COMPLETE,
        optuna.trial.TrialState.RUNNING,
    ]
    assert xgb[0].value == 0.75 and xgb[0].params == recorded[0]
    assert actor.live[2].params == recorded[2]
    assert actor.live[1].params == recorded[1]
    assert actor.next_number == 3


def test_the_gate_refuses_a_model_below_the_minimum_or_worse_than_the_last_promoted() -> None:
    passed, reason = quality_gate(
        test_auc=0.6, min_test_auc=0.7, allow_regression=False, previous_job=None, previous_auc=None
    )
    assert not passed and "min_test_auc" in reason
    passed, reason = quality_gate(
        test_auc=0.8,
        min_test_auc=0.7,
        allow_regression=False,
        previous_job="fraud-1",
        previous_auc=0.85,
    )
    assert not passed and "fraud-1" in reason and "allow_regression" in reason
    assert quality_gate(
        test_auc=0.8,
        min_test_auc=0.7,
        allow_regression=True,
        previous_job="fraud-1",
        previous_auc=0.85,
    )[0]
    assert quality_gate(
        test_auc=0.9,
        min_test_auc=0.7,
        allow_regression=False,
        previous_job="fraud-1",
        previous_auc=0.85,
    )[0]


def test_a_job_that_fails_the_gate_completes_without_promotion(tmp_path: Path) -> None:
    h = Harness(tmp_path, n_trials=1, parallelism=2)
    h.searching()
    h.save(0, 0.8)
    h.save(1, 0.7)
    assert isinstance(h.step()[0], StageCompleted)
    assert h.step() == [StageStarted(job_id=JOB, stage=Stage.VALIDATE)]
    events = h.actor._gate(
        h.state,
        h.state.jobs[JOB],
        {"test": {"xgboost": {"roc_auc": 0.4}, "lightgbm": {"roc_auc": 0.9}}},
    )
    _, completed = events
    assert isinstance(completed, JobCompleted) and not completed.promoted
    assert completed.best_trial == 0  # chosen on validation, never on the test split
    assert "min_test_auc" in completed.reason


def test_export_promotes_atomically_and_is_idempotent(tmp_path: Path) -> None:
    src = tmp_path / "jobs" / JOB / "trials" / "0" / "1-w" / "model.ubj"
    src.parent.mkdir(parents=True)
    src.write_bytes(b"the model")
    (src.parent / "meta.json").write_text("{}")
    sha = hashlib.sha256(b"the model").hexdigest()
    job_dir = tmp_path / "jobs" / JOB
    rel = src.relative_to(tmp_path).as_posix()
    path = export_best(tmp_path, job_dir, rel, sha, {"trial": 0})
    assert path == f"jobs/{JOB}/best/model.ubj"
    assert sorted(p.name for p in (job_dir / "best").iterdir()) == [
        "meta.json",
        "model-card.json",
        "model.ubj",
    ]
    assert export_best(tmp_path, job_dir, rel, sha, {"trial": 0}) == path  # again: kept
    assert not (job_dir / ".best.tmp").exists()
    with pytest.raises(ValueError, match="does not match"):
        export_best(tmp_path, tmp_path / "other", rel, "d" * 64, {})


def test_promotion_is_recorded_before_best_is_written(tmp_path: Path) -> None:
    h = Harness(tmp_path, n_trials=1, parallelism=2)
    h.searching()
    for number in (0, 1):
        ev = h.save(number, 0.8 - number / 10)
    assert ev
    h.step()
    h.step()  # validate started
    h.append(*h.actor._gate(h.state, h.state.jobs[JOB], {"test": {"xgboost": {"roc_auc": 0.9}}}))
    started, promoted = h.step()
    assert isinstance(started, StageStarted) and isinstance(promoted, ModelPromoted)
    assert not (tmp_path / "jobs" / JOB / "best").exists()  # nothing acted on yet


def test_a_model_saved_but_never_reported_is_recorded_not_retrained(tmp_path: Path) -> None:
    import json

    h = Harness(tmp_path, n_trials=1, parallelism=1)
    (first,) = h.searching()
    assert isinstance(first, TrialStarted)
    command = TrialCommand.model_validate_json(
        (tmp_path / "queue" / "pending" / f"{JOB}.0.1.json").read_bytes()
    )
    folder = tmp_path / "jobs" / JOB / "trials" / "0" / "1-w0-1-1"
    folder.mkdir(parents=True)
    (folder / "model.ubj").write_bytes(b"half")  # the meta is missing: not complete
    (lost,) = h.lost(command, "killed by signal 9")
    assert isinstance(lost, TrialFailed)
    (folder / "model.ubj").write_bytes(b"whole model")
    meta = {
        "job_id": JOB,
        "trial": 0,
        "attempt": 1,
        "model_file": "model.ubj",
        "sha256": hashlib.sha256(b"whole model").hexdigest(),
        "metrics": {"valid": {"roc_auc": 0.81, "pr_auc": 0.3}},
        "train_seconds": 0.4,
    }
    (folder / "meta.json").write_text(json.dumps(meta))
    (saved,) = h.lost(command, "killed by signal 9")
    assert isinstance(saved, TrialSaved)
    assert (saved.value, saved.sha256) == (0.81, meta["sha256"])
    assert saved.artifact == f"jobs/{JOB}/trials/0/1-w0-1-1/model.ubj"
    assert h.recover_saved() == [saved]


@pytest.mark.parametrize("bulk", [True, False])
def test_a_rebuilt_study_holds_every_recorded_trial_and_samples_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bulk: bool
) -> None:
    from sentinel_daemon.ml import study as jobs

    if not bulk:  # the public path, taken when Optuna's internals look different
        monkeypatch.setattr(jobs.RecordedTrialsStorage, "_INTERNALS", ("_no_such_internal",))
    h = Harness(tmp_path, n_trials=200, parallelism=1, sampler="tpe")
    h.searching()
    values: dict[int, float] = {}
    for number in range(120):
        trial = h.state.jobs[JOB].trials.get(number)
        if trial is None:
            break
        values[number] = 0.5 + (number * 37 % 100) / 1000
        h.save(number, values[number])
        h.step()
    job = h.state.jobs[JOB]
    actor = JobActor(job, h.ctx)
    actor.rebuild(job)
    for model, study in actor.studies.items():
        trials = study.get_trials(deepcopy=False)
        done = [t for t in trials if t.state is optuna.trial.TrialState.COMPLETE]
        recorded = {n: t for n, t in job.trials.items() if t.model == model and t.status.ended}
        assert sorted(t.user_attrs["sentinel_trial"] for t in done) == sorted(recorded)
        for t in done:
            number = t.user_attrs["sentinel_trial"]
            assert t.params == recorded[number].params and t.value == values[number]
        assert study.best_value == max(values[n] for n in recorded)
        asked = study.ask()  # TPE samples from the adopted history
        assert set(suggest_params(asked, model, actor)) == set(recorded[min(recorded)].params)


def suggest_params(trial: optuna.Trial, model: str, actor: JobActor) -> dict[str, Any]:
    from sentinel_daemon.ml.space import suggest

    return suggest(trial, model, actor.spaces[model])


def test_a_trial_that_cannot_read_the_jobs_data_fails_the_job_at_once(tmp_path: Path) -> None:
    h = Harness(tmp_path, max_attempts=3, n_trials=2, parallelism=2)
    h.searching()
    msg = Failed(
        worker_id="w",
        msg_seq=1,
        command_id=f"{JOB}.0.1",
        error="DataError: /data/t.csv: not a UTF-8 text (CSV) file",
    )
    failed, stopped = h.ingest(msg)
    assert isinstance(failed, TrialFailed) and failed.retry is False
    assert isinstance(stopped, JobFailed) and "/data/t.csv" in stopped.reason
