"""The job actor's decisions as data: inputs in, events and effects out, no file, no process.

Every test here gives the actor a state directory that does not exist and checks at the end
that it still does not: a decision reads and writes nothing; what it asks for (a command
queued, a stage process, ``best/``, a prune) comes back as an effect for the loop.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from sentinel_daemon.core.events import (
    Event,
    JobCancelled,
    JobCompleted,
    JobFailed,
    JobSubmitted,
    ModelPromoted,
    Stage,
    StageCompleted,
    StageStarted,
    TrialFailed,
    TrialSaved,
    TrialStarted,
)
from sentinel_daemon.core.state import State, apply
from sentinel_daemon.daemon.actor import ActorContext, JobActor
from sentinel_daemon.daemon.answers import closing
from sentinel_daemon.daemon.decisions import (
    Answer,
    BestWritten,
    Decision,
    Found,
    Input,
    Lost,
    PutCommand,
    Redispatch,
    RequestPrune,
    StageEnded,
    StartStage,
    Tick,
    Withdraw,
    WriteBest,
    WriteReport,
    reactions,
)
from sentinel_daemon.daemon.stages import PrepareRequest, StageOutcome
from sentinel_daemon.ml.artifacts import FoundModel
from sentinel_daemon.queue.messages import Progress, Saved
from tests.unit.test_jobs import JOB, make_spec

NOW = datetime(2025, 6, 2, 8, 30, tzinfo=UTC)
SHA = "c" * 64


def spec_of(models: tuple[str, ...], **search: Any) -> dict[str, Any]:
    """:func:`tests.unit.test_jobs.make_spec` for ``models``."""
    return {**make_spec(**search), "models": list(models)}


class Pure:
    """A state and an actor; decisions are folded into the state by hand, acted on never."""

    def __init__(
        self,
        tmp: Path,
        *,
        models: tuple[str, ...] = ("xgboost", "lightgbm"),
        report_every: int = 5,
        **search: Any,
    ) -> None:
        self.state_dir = tmp / "state-that-is-never-made"
        self.state = State()
        self.append(
            JobSubmitted(
                job_id=JOB,
                name="fraud",
                spec=spec_of(models, **search),
                file="f",
                file_sha256="0" * 64,
            )
        )
        ctx = ActorContext(self.state_dir, max_attempts=2, report_every=report_every)
        self.actor = JobActor(self.state.jobs[JOB], ctx)

    def append(self, *events: Event) -> None:
        for event in events:
            apply(self.state, event)
            self.state.last_seq += 1
            if hasattr(self, "actor"):
                self.actor.fold(event)

    def decide(self, inp: Input) -> Decision:
        return self.actor.decide(self.state, inp, NOW)

    def run(self, inp: Input) -> Decision:
        """Decide on ``inp`` and fold the events in (what the loop's append does)."""
        decision = self.decide(inp)
        self.append(*decision.events)
        return decision

    def at(self, stage: Stage) -> None:
        """The job with every stage before ``stage`` completed, and ``stage`` running."""
        for done in (Stage.PREPARE, Stage.SEARCH, Stage.VALIDATE, Stage.EXPORT):
            self.append(StageStarted(job_id=JOB, stage=done))
            if done is stage:
                return
            self.append(StageCompleted(job_id=JOB, stage=done, outputs={}))

    def saved(self, number: int, value: float) -> TrialSaved:
        trial = self.state.jobs[JOB].trials[number]
        return TrialSaved(
            job_id=JOB,
            trial=number,
            model=trial.model,
            value=value,
            metrics={"roc_auc": value},
            artifact=f"jobs/{JOB}/trials/{number}/1-w/model.ubj",
            sha256=SHA,
            duration_s=1.0,
        )


@pytest.fixture
def pure(tmp_path: Path) -> Any:
    made: list[Pure] = []

    def make(**kwargs: Any) -> Pure:
        made.append(Pure(tmp_path, **kwargs))
        return made[-1]

    yield make
    for p in made:
        assert not p.state_dir.exists(), "a decision touched the state directory"


def saved_message(command_id: str, value: float = 0.8, seq: int = 1) -> Saved:
    return Saved(
        worker_id="w0-1-1",
        msg_seq=seq,
        command_id=command_id,
        artifact=f"jobs/{JOB}/trials/0/1-w0-1-1/model.ubj",
        sha256=SHA,
        metrics={"roc_auc": value},
        value=value,
        train_seconds=0.5,
        duration_s=0.6,
    )


def test_a_new_trial_is_its_event_and_the_command_to_queue(pure: Any) -> None:
    p = pure(n_trials=1, parallelism=1)
    p.at(Stage.SEARCH)
    events, effects = p.run(Tick(dispatching=True))
    (started,) = events
    assert isinstance(started, TrialStarted) and (started.trial, started.attempt) == (0, 1)
    (put,) = effects
    assert isinstance(put, PutCommand)
    assert put.command.command_id == f"{JOB}.0.1" and put.command.params == started.params
    assert put.command.artifact_dir == f"jobs/{JOB}/trials/0"
    assert put.command.data.cache_dir == p.state_dir / "cache"
    assert p.decide(Tick(dispatching=True)) == ([], [])  # one in flight fills parallelism 1


def test_a_stage_without_its_process_asks_for_one_and_waits_while_it_runs(pure: Any) -> None:
    p = pure()
    p.at(Stage.PREPARE)
    events, effects = p.decide(Tick(dispatching=True))
    assert events == []
    (start,) = effects
    assert isinstance(start, StartStage) and start.stage is Stage.PREPARE
    assert isinstance(start.request, PrepareRequest)
    assert start.request.data.transactions == Path("/data/t.csv")
    assert p.decide(Tick(dispatching=True, stage_running=True)) == ([], [])
    assert p.decide(Tick(dispatching=False)) == ([], [])  # stopping: rerun after the restart


def test_a_stage_process_outcome_completes_prepare_or_fails_the_job_naming_it(
    pure: Any,
) -> None:
    p = pure()
    p.at(Stage.PREPARE)
    ok = StageOutcome(True, {"rows": 1000})
    (done,) = p.decide(StageEnded(Stage.PREPARE, ok)).events
    assert done == StageCompleted(job_id=JOB, stage=Stage.PREPARE, outputs={"rows": 1000})
    failed = StageOutcome(False, {}, "DataError: /data/t.csv is empty")
    (job_failed,) = p.decide(StageEnded(Stage.PREPARE, failed)).events
    assert isinstance(job_failed, JobFailed)
    assert job_failed.reason == "prepare failed: DataError: /data/t.csv is empty"
    assert p.decide(StageEnded(Stage.VALIDATE, ok)) == ([], [])  # not the running stage


def test_export_asks_for_best_and_completes_the_job_once_best_is_written(pure: Any) -> None:
    p = pure(n_trials=1, parallelism=1)
    p.at(Stage.SEARCH)
    p.run(Tick(dispatching=True))
    p.append(p.saved(0, 0.9))
    p.append(StageCompleted(job_id=JOB, stage=Stage.SEARCH, outputs={}))
    p.append(StageStarted(job_id=JOB, stage=Stage.VALIDATE))
    test = {"xgboost": {"roc_auc": 0.88}}
    p.run(StageEnded(Stage.VALIDATE, StageOutcome(True, {"test": test})))
    started, promoted = p.run(Tick(dispatching=True)).events
    assert isinstance(started, StageStarted) and isinstance(promoted, ModelPromoted)
    assert promoted.artifact == f"jobs/{JOB}/best/model.ubj"
    events, effects = p.decide(Tick(dispatching=True))
    assert events == []  # the job completes only once best/ is written
    (write,) = effects
    assert isinstance(write, WriteBest) and (write.artifact, write.sha256) == (
        f"jobs/{JOB}/trials/0/1-w/model.ubj",
        SHA,
    )
    assert write.card["promoted_at"] == "2025-06-02T08:30:00+00:00"  # the clock it was given
    assert write.card["test"] == {"roc_auc": 0.88} and write.card["trial"] == 0
    export_done, completed = p.decide(BestWritten(promoted.artifact)).events
    assert export_done == StageCompleted(
        job_id=JOB, stage=Stage.EXPORT, outputs={"artifact": promoted.artifact}
    )
    assert isinstance(completed, JobCompleted) and completed.promoted
    assert (completed.best_trial, completed.best_value) == (0, 0.9)


def test_a_saved_answer_counts_only_when_its_model_can_be_trusted(pure: Any) -> None:
    p = pure(n_trials=1, parallelism=1)
    p.at(Stage.SEARCH)
    p.run(Tick(dispatching=True))
    message = saved_message(f"{JOB}.0.1")
    (failed,) = p.decide(Answer(message, problem="the saved model x cannot be read")).events
    assert isinstance(failed, TrialFailed) and failed.retry
    assert failed.error == "the saved model x cannot be read"
    (saved,) = p.decide(Answer(message)).events
    assert isinstance(saved, TrialSaved) and (saved.value, saved.sha256) == (0.8, SHA)
    p.append(saved)
    assert p.decide(Answer(saved_message(f"{JOB}.0.1", seq=2))) == ([], [])  # a replay


def test_a_lost_worker_fails_the_attempt_unless_its_model_is_on_disk(pure: Any) -> None:
    p = pure(n_trials=1, parallelism=1)
    p.at(Stage.SEARCH)
    (put,) = p.run(Tick(dispatching=True)).effects
    assert isinstance(put, PutCommand)
    (failed,) = p.decide(Lost(put.command, "exit code 1")).events
    assert isinstance(failed, TrialFailed) and failed.error == "worker lost: exit code 1"
    found = FoundModel(
        artifact=f"jobs/{JOB}/trials/0/1-w/model.ubj",
        sha256=SHA,
        metrics={"roc_auc": 0.77},
        value=0.77,
        train_seconds=2.0,
        duration_s=2.0,
    )
    (saved,) = p.decide(Lost(put.command, "exit code 1", found)).events
    assert isinstance(saved, TrialSaved)
    assert (saved.artifact, saved.value, saved.duration_s) == (found.artifact, 0.77, 2.0)


def test_a_trial_the_pruner_rejects_has_its_worker_asked_to_stop_once(pure: Any) -> None:
    # The median pruner judges after 4 completed trials, from step 2 (report_every 1).
    p = pure(models=("xgboost",), report_every=1, n_trials=10, parallelism=1, pruner="median")
    p.at(Stage.SEARCH)
    seq = 0

    def progress(number: int, step: int, value: float) -> Decision:
        nonlocal seq
        seq += 1
        cid = f"{JOB}.{number}.1"
        message = Progress(worker_id="w", msg_seq=seq, command_id=cid, step=step, value=value)
        return p.decide(Answer(message))

    for number in range(4):
        p.run(Tick(dispatching=True))
        for step in range(5):
            assert progress(number, step, 0.9) == ([], [])
        p.append(p.saved(number, 0.9))
    p.run(Tick(dispatching=True))
    assert progress(4, 1, 0.1) == ([], [])  # steps 0 and 1 are the warm-up
    assert progress(4, 2, 0.1) == ([], [RequestPrune("w", f"{JOB}.4.1")])
    assert progress(4, 3, 0.1) == ([], [])  # asked already


def test_redispatch_queues_the_running_attempts_no_queue_folder_holds(pure: Any) -> None:
    p = pure(n_trials=2, parallelism=2)
    p.at(Stage.SEARCH)
    p.run(Tick(dispatching=True))
    p.run(Tick(dispatching=True))
    events, effects = p.decide(Redispatch(frozenset({f"{JOB}.0.1"})))
    assert events == []
    assert [e.command.command_id for e in effects if isinstance(e, PutCommand)] == [f"{JOB}.1.1"]


def test_a_job_that_ended_early_is_withdrawn_and_one_with_trials_gets_a_report(
    pure: Any,
) -> None:
    p = pure(n_trials=1, parallelism=1)
    p.at(Stage.SEARCH)
    cancelled = JobCancelled(job_id=JOB, reason="cancelled by an operator")
    p.append(cancelled)
    assert reactions(cancelled, p.state) == [Withdraw(JOB)]  # no trial: no report
    q = pure(n_trials=1, parallelism=1)
    q.at(Stage.SEARCH)
    q.run(Tick(dispatching=True))
    failed = JobFailed(job_id=JOB, reason="its data: gone")
    q.append(failed)
    assert reactions(failed, q.state) == [Withdraw(JOB), WriteReport(JOB)]
    assert q.decide(Tick(dispatching=True)) == ([], [])  # an ended job decides nothing


def test_a_model_found_on_disk_is_saved_with_the_reports_its_meta_kept(pure: Any) -> None:
    p = pure(n_trials=1, parallelism=1)
    p.at(Stage.SEARCH)
    (put,) = p.run(Tick(dispatching=True)).effects
    assert isinstance(put, PutCommand)
    found = FoundModel(
        artifact=f"jobs/{JOB}/trials/0/1-w/model.ubj",
        sha256=SHA,
        metrics={"roc_auc": 0.77},
        value=0.77,
        train_seconds=2.0,
        duration_s=2.0,
    )
    curve = ((5, 0.7), (10, 0.77))
    (saved,) = p.decide(Found(put.command, found, curve)).events
    assert isinstance(saved, TrialSaved) and saved.intermediate == curve
    (lost_saved,) = p.decide(Lost(put.command, "exit code 1", found, curve)).events
    assert isinstance(lost_saved, TrialSaved) and lost_saved.intermediate == curve


def test_a_failed_job_closes_its_open_trials_first_each_once(pure: Any) -> None:
    p = pure(n_trials=3, parallelism=3)
    p.at(Stage.SEARCH)
    for _ in range(3):
        p.run(Tick(dispatching=True))
    model = {n: t.model for n, t in p.state.jobs[JOB].trials.items()}
    p.append(p.saved(0, 0.8))
    p.append(TrialFailed(job_id=JOB, trial=1, model=model[1], error="x", attempt=1, retry=True))
    # Trial 2 fails for good in the very batch that fails the job (a data error).
    data_error = TrialFailed(
        job_id=JOB, trial=2, model=model[2], error="DataError: gone", attempt=1, retry=False
    )
    failed = JobFailed(job_id=JOB, reason="its data: gone")
    batch = closing(p.state, [data_error, failed])
    assert batch[0] == data_error and batch[-1] == failed
    (closed,) = batch[1:-1]  # trial 1, waiting for its retry; not 0 (saved) nor 2 (ended)
    assert (closed.trial, closed.attempt, closed.retry) == (1, 1, False)
    assert closed.error == "its job failed: its data: gone"
    p.append(*batch)
    # Folded into counts as the job ended: nothing left running or waiting for a retry.
    counts = p.state.jobs[JOB].trial_counts
    assert sorted((str(s), n) for c in counts.values() for s, n in c.items()) == [
        ("failed", 1),
        ("failed", 1),
        ("saved", 1),
    ]


def test_a_cancelled_job_closes_its_running_trials_and_other_batches_pass_unchanged(
    pure: Any,
) -> None:
    p = pure(n_trials=2, parallelism=2)
    p.at(Stage.SEARCH)
    started = [e for _ in range(2) for e in p.run(Tick(dispatching=True)).events]
    assert closing(p.state, started) is started  # no job ends: the batch as it is
    cancelled = JobCancelled(job_id=JOB, reason="cancelled by an operator")
    *closed, last = closing(p.state, [cancelled])
    assert last == cancelled
    assert [(c.trial, c.error, c.retry) for c in closed if isinstance(c, TrialFailed)] == [
        (0, "cancelled with its job", False),
        (1, "cancelled with its job", False),
    ]
