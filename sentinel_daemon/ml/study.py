"""Optuna studies from recorded trials: the sampler, the pruner and the trials themselves.

The event log is the record of a search; Optuna keeps its studies in memory only. The
daemon's job actor rebuilds each model's study from the log at start-up (and asks it for
the next parameters); the tools (``sentinel report``, ``sentinel export-optuna``) rebuild
studies from a job's history for Optuna's own analyses. Both turn a recorded trial into
Optuna's ``FrozenTrial`` with :func:`frozen_trial`, and mark it with :data:`TRIAL_ATTR`,
its number in the log.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import optuna

#: The user attribute that holds a trial's number in the log (Optuna numbers per study).
TRIAL_ATTR = "sentinel_trial"

#: How a recorded trial ended (``saved``, ``pruned``, ``failed``; ``running``: it has not)
#: as Optuna's trial state.
OUTCOME_STATES = {
    "saved": optuna.trial.TrialState.COMPLETE,
    "pruned": optuna.trial.TrialState.PRUNED,
    "failed": optuna.trial.TrialState.FAIL,
    "running": optuna.trial.TrialState.RUNNING,
}

Distributions = Mapping[str, optuna.distributions.BaseDistribution]


def make_sampler(kind: str, seed: int) -> optuna.samplers.BaseSampler:
    """The job file's ``search.sampler``: ``random``, else TPE."""
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def make_pruner(kind: str, report_every: int) -> optuna.pruners.BasePruner:
    """The job file's ``search.pruner``: ``median``, ``hyperband``, else none."""
    if kind == "median":
        # Steps are boosting rounds; judge a trial only after a few reports.
        return optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=2 * report_every)
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=report_every)
    return optuna.pruners.NopPruner()


def frozen_trial(
    number: int,
    outcome: str,
    *,
    params: Mapping[str, Any],
    distributions: Distributions,
    value: float | None = None,
    user_attrs: Mapping[str, Any] | None = None,
    intermediate: Iterable[tuple[int, float]] = (),
    started: datetime | None = None,
    completed: datetime | None = None,
) -> optuna.trial.FrozenTrial:
    """Trial ``number`` of the log as Optuna's record of it.

    ``outcome`` is one of :data:`OUTCOME_STATES`; ``value`` is kept for a saved or pruned
    trial only, and a running trial gets no completion time. Each parameter takes its
    distribution from ``distributions`` (one it lacks is left out). Not validated here:
    Optuna's ``Study.add_trial`` does that, and the daemon's bulk load trusts the log.
    """
    state = OUTCOME_STATES[outcome]
    keeps_value = state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return optuna.trial.FrozenTrial(
        number=-1,
        state=state,
        value=value if keeps_value else None,
        datetime_start=started,
        datetime_complete=completed if state.is_finished() else None,
        params=dict(params),
        distributions={k: distributions[k] for k in params if k in distributions},
        user_attrs={TRIAL_ATTR: number, **(user_attrs or {})},
        system_attrs={},
        intermediate_values=dict(intermediate),
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


def recorded_study(
    trials: list[optuna.trial.FrozenTrial],
    sampler: optuna.samplers.BaseSampler,
    pruner: optuna.pruners.BasePruner,
) -> optuna.Study:
    """A maximising in-memory study that holds ``trials`` (ended ones, in log order)."""
    storage = RecordedTrialsStorage()
    storage.adopt(storage.create_new_study([optuna.study.StudyDirection.MAXIMIZE]), trials)
    return optuna.load_study(
        study_name=storage.get_all_studies()[0].study_name,
        storage=storage,
        sampler=sampler,
        pruner=pruner,
    )
