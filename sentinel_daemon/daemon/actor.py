"""The job actor: one per running job, it turns the job's state and an input into a decision.

:meth:`JobActor.decide` is ``decide(state, input, now) -> (events, effects)`` (the inputs,
effects and :class:`~sentinel_daemon.daemon.decisions.Decision` are in
:mod:`~sentinel_daemon.daemon.decisions`). The loop appends the events, folds them into the
state and into the actor (:meth:`JobActor.fold` tells Optuna how a trial ended), and only
then carries out the effects: put a trial command, start a stage process, write ``best/``,
ask a worker to prune. So every decision is durable before it is acted on, and a restart
that replays the log reaches the same decisions again: each effect is idempotent (a command
already queued is not queued twice, a stage is simply rerun, ``best/`` is kept once it holds
the model). A decision reads no file and starts no process: what those would tell (a stage
process ended, a saved model's checksum, a model found on disk) comes in as an input.

Stages: ``prepare`` (a child process: load, validate, features, cache), ``search`` (Optuna
ask/tell per model, up to ``search.parallelism`` trials in flight, retries of lost or
failed attempts up to ``max_attempts``, pruning from the workers' progress reports),
``validate`` (a child process scores each model's best trial on the held-out test split,
then the quality gate) and ``export`` (``model.promoted``, then ``best/`` is written, then
the job completes).

Optuna keeps its studies in memory only, inside the actor, as the source of suggestions: the
log is the record. At start-up each study is rebuilt from the recorded trials (same numbers,
params and values); trials that were in flight are re-created with their recorded params
through ``enqueue_trial``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
import structlog

from sentinel_daemon.core.events import (
    Event,
    Intermediate,
    JobFailed,
    ModelKind,
    Stage,
    StageCompleted,
    StageStarted,
    TrialFailed,
    TrialPruned,
    TrialSaved,
    TrialStarted,
)
from sentinel_daemon.core.ids import JobId, TrialNumber
from sentinel_daemon.core.jobspec import JobSpec
from sentinel_daemon.core.space import ParamSpec, resolve_space
from sentinel_daemon.core.state import (
    JobState,
    JobStatus,
    StageStatus,
    State,
    TrialState,
    TrialStatus,
)
from sentinel_daemon.daemon.answers import (
    MAX_UNCHARGED,
    answered,
    current_trial,
    failed,
    saved_on_disk,
)
from sentinel_daemon.daemon.decisions import (
    Answer,
    BestWritten,
    Decision,
    Effect,
    Found,
    Input,
    Lost,
    PutCommand,
    Redispatch,
    RequestPrune,
    StageEnded,
    StartStage,
    Tick,
    WriteBest,
    nothing,
)
from sentinel_daemon.daemon.hostpause import host_condition
from sentinel_daemon.daemon.promotion import completed, gate, model_card, promote, validate_request
from sentinel_daemon.daemon.stages import PrepareRequest, ValidateRequest
from sentinel_daemon.layout import CACHE_DIR, trial_dir
from sentinel_daemon.ml.artifacts import FoundModel
from sentinel_daemon.ml.space import distributions, suggest
from sentinel_daemon.ml.study import (
    TRIAL_ATTR,
    frozen_trial,
    make_pruner,
    make_sampler,
    recorded_study,
)
from sentinel_daemon.queue.messages import Progress, TrialCommand, TrialData
from sentinel_daemon.queue.routing import wanted_device
from sentinel_daemon.settings import ModelSettings
from sentinel_daemon.worker.faults import FAULT_PARAM, _test_fault

log = structlog.get_logger(__name__)

ORDER = (Stage.PREPARE, Stage.SEARCH, Stage.VALIDATE, Stage.EXPORT)


@dataclass(frozen=True)
class ActorContext:
    """What every actor shares: where the state lives and the daemon's settings."""

    state_dir: Path
    max_attempts: int
    report_every: int
    #: The folders data files must resolve into when a stage or a worker opens them (the
    #: settings' ``data_roots``): checked then too, not only when the job was accepted.
    data_roots: tuple[Path, ...] | None = None
    #: Which kind of worker each model's trials need (``models`` settings; routing).
    models: ModelSettings = field(default_factory=ModelSettings)


class JobActor:
    """The decisions of one job, and its Optuna studies (see the module doc)."""

    def __init__(self, job: JobState, ctx: ActorContext) -> None:
        self.job_id = JobId(job.job_id)
        self.spec = JobSpec.from_raw(job.spec)
        self.ctx = ctx
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
        self.built = False
        self._seq = 0
        self._idle: tuple[int, int, bool] | None = None
        #: Stage runs the host failed (a full disk), run again (see _stage_ended).
        self.host_reruns = 0

    def decide(self, state: State, inp: Input, now: datetime) -> Decision:
        """Events and effects for ``inp``, from the state (``now``: the wall clock, UTC)."""
        job = state.jobs[self.job_id]
        if job.status is not JobStatus.RUNNING:
            return nothing()
        if not self.built:
            self.rebuild(job)
        match inp:
            case Tick():
                return self._tick(state, job, inp, now)
            case StageEnded():
                return Decision(self._stage_ended(state, job, inp), [])
            case BestWritten():
                return Decision(completed(job, inp.artifact), [])
            case Answer():
                return self._answer(job, inp)
            case Lost(found=None):
                return Decision(self._lost(job, inp), [])
            case Lost() | Found():
                assert inp.found is not None  # it died after saving, before answering
                return Decision(self._found(job, inp.command, inp.found, inp.intermediate), [])
            case Redispatch():
                return Decision([], self._redispatch(job, inp.in_flight))
        return nothing()

    def fold(self, event: Event) -> None:
        """``event`` (of this job) is durable: an ended trial is told to its study."""
        match event:
            case TrialSaved():
                self._tell(event.trial, optuna.trial.TrialState.COMPLETE, event.value)
            case TrialPruned():
                self._tell(event.trial, optuna.trial.TrialState.PRUNED, None)
            case TrialFailed() if not event.retry:
                self._tell(event.trial, optuna.trial.TrialState.FAIL, None)
            case _:
                pass

    # ---- studies ------------------------------------------------------------------------

    def rebuild(self, job: JobState) -> None:
        """Create each model's study from the recorded trials (once, before deciding)."""
        search = self.spec.search
        ended: dict[str, list[optuna.trial.FrozenTrial]] = {m: [] for m in self.spec.models}
        dists: dict[str, dict[str, optuna.distributions.BaseDistribution]] = {
            m: distributions(self.spaces[m]) for m in self.spec.models
        }
        for number in sorted(job.trials):
            t = job.trials[number]
            if t.status.ended:
                # A pruned trial's value stays out, as it always has: the samplers and
                # pruners read pruned trials by their state and intermediate values.
                value = t.value if t.status is TrialStatus.SAVED else None
                frozen = frozen_trial(
                    t.number, t.status, params=t.params, distributions=dists[t.model], value=value
                )
                ended[t.model].append(frozen)
        for i, model in enumerate(self.spec.models):
            self.studies[model] = recorded_study(
                ended[model],
                make_sampler(search.sampler, search.seed + i),
                make_pruner(search.pruner, self.ctx.report_every),
            )
        for number in sorted(job.trials):
            if not job.trials[number].status.ended:
                self._restore(job.trials[number])
        self.next_number = max(job.trials, default=-1) + 1
        self.built = True

    def _restore(self, trial: TrialState) -> None:
        """A trial in flight when the daemon stopped: the same params, asked again."""
        study = self.studies[trial.model]
        study.enqueue_trial(dict(trial.params), user_attrs={TRIAL_ATTR: trial.number})
        ot = study.ask()
        suggest(ot, trial.model, self.spaces[trial.model])
        self.live[trial.number] = ot

    def _tell(self, number: int, state: optuna.trial.TrialState, value: float | None) -> None:
        ot = self.live.pop(number, None)
        self.reported.pop(number, None)
        if ot is None:
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna warns on a pruned trial with no report
            ot.study.tell(
                ot, value if state is optuna.trial.TrialState.COMPLETE else None, state=state
            )

    # ---- stages ------------------------------------------------------------------------

    def _tick(self, state: State, job: JobState, tick: Tick, now: datetime) -> Decision:
        self._seq = state.last_seq
        for stage in ORDER:
            current = job.stages.get(stage)
            if current is None:
                if not tick.dispatching:
                    return nothing()  # stopping: no new stage; the restart takes it from here
                if stage is Stage.EXPORT:
                    return Decision(promote(job), [])
                return Decision([StageStarted(job_id=self.job_id, stage=stage)], [])
            if current.status is StageStatus.RUNNING:
                if stage is Stage.SEARCH:
                    return self._search(job, tick.dispatching and tick.admit)
                if stage is Stage.EXPORT:
                    return self._export(job, now)
                if tick.stage_running or not tick.dispatching:
                    return nothing()  # it runs; or, stopping, it is rerun after the restart
                request = self._stage_request(state, job, stage)
                return Decision([], [StartStage(self.job_id, stage, request)])
        return nothing()

    def _stage_ended(self, state: State, job: JobState, ended: StageEnded) -> list[Event]:
        current = job.stages.get(ended.stage)
        if current is None or current.status is not StageStatus.RUNNING:
            return []
        outcome = ended.outcome
        if not outcome.ok and host_condition(outcome.error) and self.host_reruns < MAX_UNCHARGED:
            # The host's disk failed it, not the job: run it again (dispatch pauses while
            # the disk is full: .hostpause), as a trial would be, without failing the job.
            self.host_reruns += 1
            log.warning(
                "job.stage_rerun", job=self.job_id, stage=str(ended.stage), error=outcome.error
            )
            return []
        if not outcome.ok:
            return [JobFailed(job_id=self.job_id, reason=f"{ended.stage} failed: {outcome.error}")]
        if ended.stage is Stage.PREPARE:
            return [StageCompleted(job_id=self.job_id, stage=ended.stage, outputs=outcome.outputs)]
        return self._gate(state, job, outcome.outputs)

    def _stage_request(
        self, state: State, job: JobState, stage: Stage
    ) -> PrepareRequest | ValidateRequest:
        if stage is Stage.PREPARE:
            return PrepareRequest(data=self._data())
        return validate_request(state, job, self.spec.models, self._data())

    def _gate(self, state: State, job: JobState, outputs: dict[str, Any]) -> list[Event]:
        return gate(state, job, self.spec, outputs)

    def _export(self, job: JobState, now: datetime) -> Decision:
        """``model.promoted`` is durable: have ``best/`` written (then the job completes)."""
        if job.promoted is None:
            return Decision(promote(job)[1:], [])
        winner = job.trials[job.promoted.trial]
        assert winner.artifact is not None and winner.sha256 is not None
        card = model_card(job, winner, now)
        return Decision([], [WriteBest(self.job_id, winner.artifact, winner.sha256, card)])

    # ---- search ------------------------------------------------------------------------

    def _search(self, job: JobState, dispatching: bool) -> Decision:
        # Deciding walks the job's trials; when no event arrived since a pass that decided
        # nothing, the same pass would decide nothing again.
        idle_key = (len(job.trials), self._seq, dispatching)
        if idle_key == self._idle:
            return nothing()
        decision = self._decide_search(job, dispatching)
        self._idle = None if decision.events else idle_key
        return decision

    def _decide_search(self, job: JobState, dispatching: bool) -> Decision:
        decision = nothing()
        in_flight = [t for t in job.trials.values() if not t.status.ended]
        if dispatching:
            for t in in_flight:
                if t.status is TrialStatus.RETRYING:
                    self._start(decision, t.number, t.model, t.params, t.attempt + 1)
            free = self.spec.search.parallelism - len(in_flight)
            started: dict[str, int] = {m: 0 for m in self.spec.models}
            for t in job.trials.values():
                started[str(t.model)] += 1
            # One new trial a decision: an ask can take a large share of a second (TPE
            # over thousands of trials), and the first trial is dispatched (committed,
            # queued) before the next is asked. The loop decides again at once.
            model = self._next_model(job, started, in_flight) if free > 0 else None
            if model is not None:
                ot = self.studies[model].ask()
                ot.set_user_attr(TRIAL_ATTR, self.next_number)
                params = suggest(ot, model, self.spaces[model])
                self.live[self.next_number] = ot
                self._start(decision, self.next_number, ModelKind(model), params, 1)
                self.next_number += 1
        if decision.events or in_flight:
            return decision
        n_trials = self.spec.search.n_trials
        if any(job.ended_trials(ModelKind(m)) < n_trials for m in self.spec.models):
            return decision  # not dispatching (shutting down): the rest waits for the restart
        outputs: dict[str, Any] = {}
        for model in self.spec.models:
            best = job.best_saved(ModelKind(model))
            outputs[model] = None if best is None else {"trial": best.number, "value": best.value}
        done = StageCompleted(job_id=self.job_id, stage=Stage.SEARCH, outputs=outputs)
        if all(v is None for v in outputs.values()):
            reason = self._no_model_reason(job)
            return Decision([done, JobFailed(job_id=self.job_id, reason=reason)], [])
        return Decision([done], [])

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

    def _start(
        self,
        decision: Decision,
        number: int,
        model: ModelKind,
        params: dict[str, Any],
        attempt: int,
    ) -> None:
        """Add ``trial.started`` of this attempt to ``decision``, and the queuing of its command."""
        decision.events.append(
            TrialStarted(
                job_id=self.job_id,
                trial=TrialNumber(number),
                model=model,
                params=params,
                attempt=attempt,
            )
        )
        decision.effects.append(PutCommand(self.command(number, model, params, attempt)))

    # ---- workers' answers --------------------------------------------------------------

    def current(self, job: JobState, command_id: str) -> bool:
        """Whether ``command_id`` is the running attempt of its trial (else it is stale)."""
        return current_trial(job, command_id) is not None

    def _answer(self, job: JobState, answer: Answer) -> Decision:
        message = answer.message
        trial = current_trial(job, message.command_id)
        if trial is None:
            return nothing()  # a replayed result, or one for an attempt already given up
        if isinstance(message, Progress):
            return Decision([], self._progress(trial.number, message))
        return Decision(answered(trial, message, answer.problem, self.ctx.max_attempts), [])

    def _progress(self, number: int, message: Progress) -> list[Effect]:
        """Tell the study; when its pruner says so, ask the worker (once) to stop."""
        ot = self.live.get(number)
        if ot is None or message.step <= self.reported.get(number, -1):
            return []  # a retried attempt reports the same steps again
        self.reported[number] = message.step
        ot.report(message.value, message.step)
        if message.command_id not in self.prune_asked and ot.should_prune():
            self.prune_asked.add(message.command_id)
            return [RequestPrune(message.worker_id, message.command_id)]
        return []

    def _lost(self, job: JobState, inp: Lost) -> list[Event]:
        """The worker is gone: the attempt failed (and is retried if attempts are left)."""
        trial = current_trial(job, inp.command.command_id)
        if trial is None:
            return []
        why = f"worker lost: {inp.reason}"
        if inp.host:
            why += " (while the state directory's disk was full)"
        return [failed(self.job_id, trial, why, self.ctx.max_attempts, host=inp.host)]

    def _found(
        self, job: JobState, command: TrialCommand, found: FoundModel, intermediate: Intermediate
    ) -> list[Event]:
        """A complete model of the running attempt is on disk: it counts, never retrained."""
        trial = current_trial(job, command.command_id)
        if trial is None:
            return []
        log.info(
            "job.model_found_on_disk", job=self.job_id, trial=trial.number, artifact=found.artifact
        )
        return [saved_on_disk(self.job_id, trial, found, intermediate)]

    def _redispatch(self, job: JobState, in_flight: frozenset[str]) -> list[Effect]:
        """Queue again every running attempt whose command is in no queue folder."""
        effects: list[Effect] = []
        for t in job.trials.values():
            if t.status is TrialStatus.RUNNING:
                command = self.command(t.number, t.model, t.params, t.attempt)
                if command.command_id not in in_flight:
                    effects.append(PutCommand(command))
        return effects

    # ---- commands ----------------------------------------------------------------------

    def command(
        self, number: int, model: ModelKind, params: dict[str, Any], attempt: int
    ) -> TrialCommand:
        """The command of attempt ``attempt`` of trial ``number``."""
        fault = _test_fault(self.job_id, number, attempt)
        if fault is not None:
            params = {**params, FAULT_PARAM: fault}
        return TrialCommand(
            job_id=self.job_id,
            trial=TrialNumber(number),
            attempt=attempt,
            model=model,
            params=params,
            data=self._data(),
            artifact_dir=trial_dir(self.job_id, number),
            report_every=self.ctx.report_every,
            device=wanted_device(model, self.ctx.models),
        )

    def _data(self) -> TrialData:
        v = self.spec.validation
        return TrialData(
            transactions=Path(self.spec.data.transactions),
            identity=Path(self.spec.data.identity) if self.spec.data.identity else None,
            cache_dir=self.ctx.state_dir / CACHE_DIR,
            test_fraction=v.test_fraction,
            valid_fraction=v.valid_fraction,
            data_roots=self.ctx.data_roots,
        )
