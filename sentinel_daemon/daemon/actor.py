"""The job actor: one per running job, it turns the job's state into its next decisions.

The daemon's loop calls :meth:`JobActor.step` with the job's current state (a fold of the
log) and appends the events it returns; only then does it call :meth:`JobActor.act` for
each, which performs the side effect the event announced (put a trial command, start a
stage process, tell Optuna). So every decision is durable before it is acted on, and a
restart that replays the log reaches the same decisions again: each side effect is
idempotent (a command already queued is not queued twice, a stage is simply rerun).

Stages: ``prepare`` (a child process: load, validate, features, cache), ``search`` (Optuna
ask/tell per model, up to ``search.parallelism`` trials in flight, retries of lost or
failed attempts up to ``max_attempts``, pruning from the workers' progress reports),
``validate`` (a child process scores each model's best trial on the held-out test split,
then the quality gate) and ``export`` (``model.promoted``, then ``best/`` is written).

Optuna keeps its studies in memory only: the log is the record. At start-up each study is
rebuilt from the recorded trials (same numbers, params and values); trials that were in
flight are re-created with their recorded params through ``enqueue_trial``.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import optuna
import structlog

from sentinel_daemon.core.events import (
    Event,
    JobCompleted,
    JobFailed,
    ModelKind,
    ModelPromoted,
    Stage,
    StageCompleted,
    StageStarted,
    TrialFailed,
    TrialPruned,
    TrialSaved,
    TrialStarted,
)
from sentinel_daemon.core.gate import quality_gate
from sentinel_daemon.core.ids import JobId, TrialNumber
from sentinel_daemon.core.jobspec import JobSpec
from sentinel_daemon.core.state import (
    JobState,
    JobStatus,
    StageStatus,
    State,
    TrialState,
    TrialStatus,
)
from sentinel_daemon.daemon.stages import (
    Candidate,
    DataRequest,
    PrepareRequest,
    StageProcess,
    ValidateRequest,
    export_best,
)
from sentinel_daemon.layout import CACHE_DIR, JOBS_DIR
from sentinel_daemon.ml.space import TRIAL_ATTR, ParamSpec, distributions, resolve_space, suggest
from sentinel_daemon.queue.maildir import Queue
from sentinel_daemon.queue.messages import (
    Failed,
    Progress,
    Pruned,
    Saved,
    TrialCommand,
    TrialData,
    WorkerMessage,
    split_command_id,
)
from sentinel_daemon.worker.faults import FAULT_PARAM, _test_fault
from sentinel_daemon.worker.runner import find_saved

log = structlog.get_logger(__name__)

#: How a worker's Failed message starts when the trial's data could not be read.
DATA_ERROR = "DataError"


@dataclass(frozen=True)
class ActorContext:
    """What every actor shares: where things live and the daemon's settings."""

    state_dir: Path
    queue: Queue
    max_attempts: int
    report_every: int


def _sampler(kind: str, seed: int) -> optuna.samplers.BaseSampler:
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def _pruner(kind: str, report_every: int) -> optuna.pruners.BasePruner:
    if kind == "median":
        # Steps are boosting rounds; judge a trial only after a few reports.
        return optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=2 * report_every)
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=report_every)
    return optuna.pruners.NopPruner()


_ENDED_STATES = {
    TrialStatus.SAVED: optuna.trial.TrialState.COMPLETE,
    TrialStatus.PRUNED: optuna.trial.TrialState.PRUNED,
    TrialStatus.FAILED: optuna.trial.TrialState.FAIL,
}


def _frozen(
    trial: TrialState, dists: dict[str, optuna.distributions.BaseDistribution]
) -> optuna.trial.FrozenTrial:
    """A recorded, ended trial as Optuna's record of it (the log validated it already)."""
    state = _ENDED_STATES[trial.status]
    return optuna.trial.FrozenTrial(
        number=-1,
        state=state,
        value=trial.value if state is optuna.trial.TrialState.COMPLETE else None,
        datetime_start=None,
        datetime_complete=None,
        params=dict(trial.params),
        distributions={k: dists[k] for k in trial.params if k in dists},
        user_attrs={TRIAL_ATTR: trial.number},
        system_attrs={},
        intermediate_values={},
        trial_id=-1,
    )


class RecordedTrialsStorage(optuna.storages.InMemoryStorage):
    """Optuna's in-memory storage that takes the recorded trials in one bulk load.

    ``add_trial`` validates and deep-copies each trial, three quarters of the time it takes
    to rebuild a study of 10,000 trials; these trials come from the log and belong to no one
    else, so :meth:`adopt` appends them as they are. It uses the storage's internals, so it
    checks that they look as expected and otherwise falls back to the public, slower path.
    """

    _INTERNALS = ("_lock", "_studies", "_max_trial_id", "_trial_id_to_study_id_and_number")

    def adopt(self, study_id: int, trials: list[optuna.trial.FrozenTrial]) -> None:
        if not all(hasattr(self, name) for name in self._INTERNALS) or not hasattr(
            self, "_update_cache"
        ):
            for trial in trials:
                self.create_new_trial(study_id, template_trial=trial)
            return
        with self._lock:
            study = self._studies[study_id]
            for trial in trials:
                self._max_trial_id += 1
                trial.number = len(study.trials)
                trial._trial_id = self._max_trial_id
                self._trial_id_to_study_id_and_number[trial._trial_id] = (study_id, trial.number)
                study.trials.append(trial)
                for name, dist in trial.distributions.items():
                    study.param_distribution.setdefault(name, dist)
                self._update_cache(trial._trial_id, study_id)


class JobActor:
    """Decisions and side effects of one job (see the module doc)."""

    def __init__(self, job: JobState, ctx: ActorContext) -> None:
        self.job_id = JobId(job.job_id)
        self.name = job.name
        self.spec = JobSpec.from_raw(job.spec)
        self.ctx = ctx
        self.job_dir = ctx.state_dir / JOBS_DIR / job.job_id
        overrides = self.spec.search.space
        self.spaces: dict[str, dict[str, ParamSpec]] = {
            m: resolve_space(m, overrides.for_model(m) if overrides else None)
            for m in self.spec.models
        }
        self.studies: dict[str, optuna.Study] = {}
        self.live: dict[int, optuna.trial.Trial] = {}  # trial number -> Optuna trial in flight
        self.reported: dict[int, int] = {}  # trial number -> last step told to Optuna
        self.prune_asked: set[str] = set()  # command ids
        self.next_number = 0
        self.stage_proc: StageProcess | None = None
        self._built = False
        self._seq = 0
        self._idle: tuple[int, int, bool] | None = None

    # ---- studies ------------------------------------------------------------------------

    def rebuild(self, job: JobState) -> None:
        """Create each model's study from the recorded trials (once, before deciding)."""
        search = self.spec.search
        ended: dict[str, list[optuna.trial.FrozenTrial]] = {m: [] for m in self.spec.models}
        dists: dict[str, dict[str, optuna.distributions.BaseDistribution]] = {
            m: distributions(self.spaces[m]) for m in self.spec.models
        }
        for number in sorted(job.trials):
            trial = job.trials[number]
            if trial.status.ended:
                ended[trial.model].append(_frozen(trial, dists[trial.model]))
        for i, model in enumerate(self.spec.models):
            storage = RecordedTrialsStorage()
            storage.adopt(
                storage.create_new_study([optuna.study.StudyDirection.MAXIMIZE]), ended[model]
            )
            self.studies[model] = optuna.load_study(
                study_name=storage.get_all_studies()[0].study_name,
                storage=storage,
                sampler=_sampler(search.sampler, search.seed + i),
                pruner=_pruner(search.pruner, self.ctx.report_every),
            )
        for number in sorted(job.trials):
            if not job.trials[number].status.ended:
                self._restore(job.trials[number])
        self.next_number = max(job.trials, default=-1) + 1
        self._built = True

    def _restore(self, trial: TrialState) -> None:
        """A trial in flight when the daemon stopped: the same params, asked again."""
        study = self.studies[trial.model]
        study.enqueue_trial(dict(trial.params), user_attrs={TRIAL_ATTR: trial.number})
        ot = study.ask()
        suggest(ot, trial.model, self.spaces[trial.model])
        self.live[trial.number] = ot

    # ---- deciding ----------------------------------------------------------------------

    def step(self, state: State, dispatching: bool, admit: bool = True) -> list[Event]:
        """The next events for this job, from its state; may start or poll a stage process.

        ``admit`` False (admission control: memory is short) holds back new trials and
        retries only; stages still start and end.
        """
        job = state.jobs[self.job_id]
        if job.status is not JobStatus.RUNNING:
            return []
        self._seq = state.last_seq
        if not self._built:
            self.rebuild(job)
        order = (Stage.PREPARE, Stage.SEARCH, Stage.VALIDATE, Stage.EXPORT)
        for stage in order:
            current = job.stages.get(stage)
            if current is None:
                if not dispatching:
                    return []  # stopping: no new stage; the restart takes it from here
                if stage is Stage.EXPORT:
                    return self._promote(job)
                return [StageStarted(job_id=self.job_id, stage=stage)]
            if current.status is StageStatus.RUNNING:
                if stage is Stage.SEARCH:
                    return self._search(job, dispatching and admit)
                if stage is Stage.EXPORT:
                    return self._export(state, job)
                return self._poll_stage(state, job, stage, dispatching)
        return []

    def _search(self, job: JobState, dispatching: bool) -> list[Event]:
        # Deciding walks the job's trials; when no event arrived since a pass that decided
        # nothing, the same pass would decide nothing again.
        idle_key = (len(job.trials), self._seq, dispatching)
        if idle_key == self._idle:
            return []
        events = self._decide_search(job, dispatching)
        self._idle = None if events else idle_key
        return events

    def _decide_search(self, job: JobState, dispatching: bool) -> list[Event]:
        events: list[Event] = []
        in_flight = [t for t in job.trials.values() if not t.status.ended]
        if dispatching:
            for t in in_flight:
                if t.status is TrialStatus.RETRYING:
                    events.append(self._started(t.number, t.model, t.params, t.attempt + 1))
            free = self.spec.search.parallelism - len(in_flight)
            started: dict[str, int] = {m: 0 for m in self.spec.models}
            for t in job.trials.values():
                started[str(t.model)] += 1
            # One new trial a call: an ask can take a large share of a second (TPE over
            # thousands of trials), and the first trial is dispatched (committed, queued)
            # before the next is asked. The daemon calls step again at once.
            model = self._next_model(job, started, in_flight) if free > 0 else None
            if model is not None:
                ot = self.studies[model].ask()
                ot.set_user_attr(TRIAL_ATTR, self.next_number)
                params = suggest(ot, model, self.spaces[model])
                self.live[self.next_number] = ot
                events.append(self._started(self.next_number, ModelKind(model), params, 1))
                self.next_number += 1
        if events or in_flight:
            return events
        n_trials = self.spec.search.n_trials
        if any(job.ended_trials(ModelKind(m)) < n_trials for m in self.spec.models):
            return []  # not dispatching (shutting down): the rest waits for the restart
        outputs: dict[str, Any] = {}
        for model in self.spec.models:
            best = job.best_saved(ModelKind(model))
            outputs[model] = None if best is None else {"trial": best.number, "value": best.value}
        completed = StageCompleted(job_id=self.job_id, stage=Stage.SEARCH, outputs=outputs)
        if all(v is None for v in outputs.values()):
            return [completed, JobFailed(job_id=self.job_id, reason=self._no_model_reason(job))]
        return [completed]

    def _next_model(
        self, job: JobState, started: dict[str, int], in_flight: list[TrialState]
    ) -> str | None:
        """The model with budget left and the fewest trials started (models interleave)."""
        best: str | None = None
        for model in self.spec.models:
            running = sum(1 for t in in_flight if t.model == model)
            if job.ended_trials(ModelKind(model)) + running >= self.spec.search.n_trials:
                continue
            if best is None or started[model] < started[best]:
                best = model
        return best

    def _no_model_reason(self, job: JobState) -> str:
        errors = [t.error for t in job.trials.values() if t.error]
        last = f"; the last error: {errors[-1]}" if errors else ""
        return f"no trial produced a model (all pruned or failed){last}"

    def _started(
        self, number: int, model: ModelKind, params: dict[str, Any], attempt: int
    ) -> TrialStarted:
        return TrialStarted(
            job_id=self.job_id,
            trial=TrialNumber(number),
            model=model,
            params=params,
            attempt=attempt,
        )

    def _poll_stage(
        self, state: State, job: JobState, stage: Stage, dispatching: bool
    ) -> list[Event]:
        if self.stage_proc is None:
            if not dispatching:
                return []  # shutting down: the stage is rerun after the restart
            self._start_stage(state, job, stage)
            return []
        outcome = self.stage_proc.poll()
        if outcome is None:
            return []
        self.stage_proc = None
        if not outcome.ok:
            return [JobFailed(job_id=self.job_id, reason=f"{stage} failed: {outcome.error}")]
        if stage is Stage.PREPARE:
            return [StageCompleted(job_id=self.job_id, stage=stage, outputs=outcome.outputs)]
        return self._gate(state, job, outcome.outputs)

    def _gate(self, state: State, job: JobState, outputs: dict[str, Any]) -> list[Event]:
        winner = self._winner(job)
        test = outputs.get("test", {})
        previous = self._previous_promotion(state, job)
        prev_metrics = outputs.get("previous")
        passed, reason = quality_gate(
            test_auc=float(test[winner.model]["roc_auc"]),
            min_test_auc=self.spec.quality_gate.min_test_auc,
            allow_regression=self.spec.quality_gate.allow_regression,
            previous_job=previous.job_id if previous is not None else None,
            previous_auc=float(prev_metrics["roc_auc"]) if prev_metrics else None,
            previous_error=outputs.get("previous_error"),
        )
        outputs = {**outputs, "winner": {"trial": winner.number, "model": str(winner.model)}}
        outputs["gate"] = {"passed": passed, "reason": reason}
        done = StageCompleted(job_id=self.job_id, stage=Stage.VALIDATE, outputs=outputs)
        if passed:
            return [done]
        return [
            done,
            JobCompleted(
                job_id=self.job_id,
                best_trial=TrialNumber(winner.number),
                best_value=winner.value,
                promoted=False,
                reason=reason,
            ),
        ]

    def _winner(self, job: JobState) -> TrialState:
        """The best saved trial across models, chosen on validation (never on test)."""
        best = job.best_saved()
        assert best is not None, "search completes only with a saved trial"
        return best

    def _previous_promotion(self, state: State, job: JobState) -> JobState | None:
        """The latest earlier job of the same name that promoted a model."""
        found: JobState | None = None
        for other in state.jobs.values():
            if (
                other.name == job.name
                and other.promoted is not None
                and other.submitted_seq < job.submitted_seq
                and (found is None or other.submitted_seq > found.submitted_seq)
            ):
                found = other
        return found

    def _promote(self, job: JobState) -> list[Event]:
        winner = self._winner(job)
        assert winner.artifact is not None and winner.sha256 is not None
        name = Path(winner.artifact).name
        return [
            StageStarted(job_id=self.job_id, stage=Stage.EXPORT),
            ModelPromoted(
                job_id=self.job_id,
                trial=TrialNumber(winner.number),
                model=winner.model,
                artifact=f"{JOBS_DIR}/{self.job_id}/best/{name}",
                sha256=winner.sha256,
                value=float(winner.value or 0.0),
            ),
        ]

    def _export(self, state: State, job: JobState) -> list[Event]:
        """``model.promoted`` is durable: write ``best/`` (idempotent), then finish the job."""
        if job.promoted is None:
            return self._promote(job)[1:]
        winner = job.trials[job.promoted.trial]
        assert winner.artifact is not None and winner.sha256 is not None
        validate = job.stages[Stage.VALIDATE].outputs
        card = {
            "job_id": self.job_id,
            "name": self.name,
            "trial": winner.number,
            "model": str(winner.model),
            "params": winner.params,
            "attempt": winner.attempt,
            "validation": winner.metrics,
            "test": validate.get("test", {}).get(winner.model),
            "quality_gate": validate.get("gate"),
            "data": job.stages[Stage.PREPARE].outputs,
            "trial_artifact": winner.artifact,
            "sha256": winner.sha256,
            "job_file_sha256": job.file_sha256,
            "promoted_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        path = export_best(self.ctx.state_dir, self.job_dir, winner.artifact, winner.sha256, card)
        return [
            StageCompleted(job_id=self.job_id, stage=Stage.EXPORT, outputs={"artifact": path}),
            JobCompleted(
                job_id=self.job_id,
                best_trial=TrialNumber(winner.number),
                best_value=winner.value,
                promoted=True,
                reason=str((validate.get("gate") or {}).get("reason", "")),
            ),
        ]

    def _data_request(self) -> DataRequest:
        v = self.spec.validation
        return DataRequest(
            transactions=Path(self.spec.data.transactions),
            identity=Path(self.spec.data.identity) if self.spec.data.identity else None,
            cache_dir=self.ctx.state_dir / CACHE_DIR,
            test_fraction=v.test_fraction,
            valid_fraction=v.valid_fraction,
        )

    def _start_stage(self, state: State, job: JobState, stage: Stage) -> None:
        request: PrepareRequest | ValidateRequest
        if stage is Stage.PREPARE:
            request = PrepareRequest(data=self._data_request())
        else:
            candidates = {}
            for model in self.spec.models:
                best = job.best_saved(ModelKind(model))
                if best is not None and best.artifact and best.sha256:
                    candidates[model] = Candidate(
                        trial=best.number, artifact=best.artifact, sha256=best.sha256
                    )
            prev = self._previous_promotion(state, job)
            previous = None
            if prev is not None and prev.promoted is not None:
                p = prev.promoted
                previous = Candidate(trial=p.trial, artifact=p.artifact, sha256=p.sha256)
            request = ValidateRequest(
                data=self._data_request(), candidates=candidates, previous=previous
            )
        self.stage_proc = StageProcess(self.ctx.state_dir, self.job_dir / "stages", request, stage)
        log.info("job.stage_process", job=self.job_id, stage=str(stage), pid=self.stage_proc.pid)

    # ---- results from workers ----------------------------------------------------------

    def ingest(self, job: JobState, message: WorkerMessage) -> list[Event]:
        """Events for a worker's message; [] when it is stale or already recorded."""
        _, number, attempt = split_command_id(message.command_id)
        trial = job.trials.get(number)
        if (
            job.status is not JobStatus.RUNNING
            or trial is None
            or trial.attempt != attempt
            or trial.status is not TrialStatus.RUNNING
        ):
            return []  # a replayed result, or one for an attempt already given up
        match message:
            case Progress():
                self._progress(trial, message)
                return []
            case Saved():
                problem = self._check_artifact(message.artifact, message.sha256)
                if problem is not None:
                    return [self._failed(trial, problem)]
                return [
                    TrialSaved(
                        job_id=self.job_id,
                        trial=TrialNumber(number),
                        model=trial.model,
                        value=message.value,
                        metrics=message.metrics,
                        artifact=message.artifact,
                        sha256=message.sha256,
                        duration_s=round(message.duration_s, 6),
                        intermediate=message.intermediate,
                    )
                ]
            case Pruned():
                return [
                    TrialPruned(
                        job_id=self.job_id,
                        trial=TrialNumber(number),
                        model=trial.model,
                        step=message.step,
                        value=message.value,
                        intermediate=message.intermediate,
                    )
                ]
            case Failed():
                failed = self._failed(trial, message.error)
                if message.error.startswith(DATA_ERROR):
                    # The job's own data no longer reads (deleted, replaced by garbage):
                    # every other attempt would fail the same way, so the job stops here.
                    return [
                        failed.model_copy(update={"retry": False}),
                        JobFailed(job_id=self.job_id, reason=f"its data: {message.error}"),
                    ]
                return [failed]
        return []

    def lost(self, job: JobState, command: TrialCommand, reason: str) -> list[Event]:
        """A worker died holding ``command``: the attempt failed (and is retried if allowed)."""
        trial = job.trials.get(command.trial)
        if (
            job.status is not JobStatus.RUNNING
            or trial is None
            or trial.attempt != command.attempt
            or trial.status is not TrialStatus.RUNNING
        ):
            return []
        on_disk = self.saved_on_disk(trial)
        if on_disk is not None:
            return [on_disk]  # it died after saving, before reporting: the model counts
        return [self._failed(trial, f"worker lost: {reason}")]

    def recover_saved(self, job: JobState) -> list[Event]:
        """At start-up: running attempts whose model is complete on disk, as ``trial.saved``."""
        events: list[Event] = []
        for t in job.trials.values():
            if t.status is TrialStatus.RUNNING and (saved := self.saved_on_disk(t)) is not None:
                events.append(saved)
        return events

    def saved_on_disk(self, trial: TrialState) -> TrialSaved | None:
        """The model of ``trial``'s current attempt, if a worker saved it whole.

        A worker writes the model file, then ``meta.json`` (each atomically), then posts
        its result; a crash after the second write leaves a complete, checkable model that
        no result announces. It is recorded from its metadata instead of trained again.
        """
        command = self.command(trial.number, trial.model, trial.params, trial.attempt)
        found = find_saved(self.ctx.state_dir, command)
        if found is None:
            return None  # not a complete model: the attempt runs again
        log.info(
            "job.model_found_on_disk",
            job=self.job_id,
            trial=trial.number,
            artifact=found["artifact"],
        )
        return TrialSaved(
            job_id=self.job_id,
            trial=TrialNumber(trial.number),
            model=trial.model,
            value=found["value"],
            metrics=found["metrics"],
            artifact=found["artifact"],
            sha256=found["sha256"],
            duration_s=found["duration_s"],
        )

    def _failed(self, trial: TrialState, error: str) -> TrialFailed:
        return TrialFailed(
            job_id=self.job_id,
            trial=TrialNumber(trial.number),
            model=trial.model,
            error=error[:2000],
            attempt=trial.attempt,
            retry=trial.attempt < self.ctx.max_attempts,
        )

    def _check_artifact(self, artifact: str, sha256: str) -> str | None:
        """Whether the model file exists and matches its checksum (the log's promise)."""
        try:
            data = (self.ctx.state_dir / artifact).read_bytes()
        except OSError as exc:
            return f"the saved model {artifact} cannot be read ({exc.strerror})"
        if hashlib.sha256(data).hexdigest() != sha256:
            return f"the saved model {artifact} does not match the sha256 its worker reported"
        return None

    def _progress(self, trial: TrialState, message: Progress) -> None:
        ot = self.live.get(trial.number)
        if ot is None or message.step <= self.reported.get(trial.number, -1):
            return  # a retried attempt reports the same steps again
        self.reported[trial.number] = message.step
        ot.report(message.value, message.step)
        if message.command_id not in self.prune_asked and ot.should_prune():
            self.prune_asked.add(message.command_id)
            self.ctx.queue.request_prune(message.worker_id, message.command_id)

    # ---- acting ------------------------------------------------------------------------

    def act(self, event: Event) -> None:
        """The side effect of ``event``, now that it is durable."""
        match event:
            case TrialStarted():
                self.ctx.queue.put(
                    self.command(event.trial, event.model, event.params, event.attempt)
                )
            case TrialSaved():
                self._tell(event.trial, optuna.trial.TrialState.COMPLETE, event.value)
            case TrialPruned():
                self._tell(event.trial, optuna.trial.TrialState.PRUNED, None)
            case TrialFailed() if not event.retry:
                self._tell(event.trial, optuna.trial.TrialState.FAIL, None)
            case JobFailed() | JobCompleted():
                self.stop()
            case _:
                pass

    def command(
        self, number: int, model: ModelKind, params: dict[str, Any], attempt: int
    ) -> TrialCommand:
        d = self._data_request()
        fault = _test_fault(self.job_id, number, attempt)
        if fault is not None:
            params = {**params, FAULT_PARAM: fault}
        return TrialCommand(
            job_id=self.job_id,
            trial=TrialNumber(number),
            attempt=attempt,
            model=model,
            params=params,
            data=TrialData(
                transactions=d.transactions,
                identity=d.identity,
                cache_dir=d.cache_dir,
                test_fraction=d.test_fraction,
                valid_fraction=d.valid_fraction,
            ),
            artifact_dir=f"{JOBS_DIR}/{self.job_id}/trials/{number}",
            report_every=self.ctx.report_every,
        )

    def _tell(self, number: int, state: optuna.trial.TrialState, value: float | None) -> None:
        ot = self.live.pop(number, None)
        self.reported.pop(number, None)
        if ot is None:
            return
        study = ot.study
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna warns on a pruned trial with no report
            study.tell(
                ot, value if state is optuna.trial.TrialState.COMPLETE else None, state=state
            )

    def redispatch(self, job: JobState, in_flight: set[str]) -> int:
        """At start-up: queue again every running attempt whose command is nowhere."""
        n = 0
        for t in job.trials.values():
            if t.status is TrialStatus.RUNNING:
                command = self.command(t.number, t.model, t.params, t.attempt)
                if command.command_id not in in_flight:
                    self.ctx.queue.put(command)
                    n += 1
        return n

    def stop(self) -> None:
        """Kill a stage process (job ended, or the daemon stops)."""
        if self.stage_proc is not None:
            self.stage_proc.kill()
            self.stage_proc = None
