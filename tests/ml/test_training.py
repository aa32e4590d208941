from __future__ import annotations

import numpy as np
import optuna
import pytest

from sentinel_daemon import ml
from sentinel_daemon.core.space import SpaceError, resolve_space
from sentinel_daemon.ml.metrics import METRIC_NAMES
from sentinel_daemon.ml.space import suggest
from sentinel_daemon.ml.training import lightgbm_params, xgboost_params

from .helpers import SMALL

MODELS = ("xgboost", "lightgbm")


@pytest.mark.parametrize("model", MODELS)
def test_trial_reports_validation_auc_every_few_rounds(model: str, prepared: ml.Prepared) -> None:
    calls: list[tuple[int, float]] = []

    def report(step: int, value: float) -> bool:
        calls.append((step, value))
        return False

    result = ml.train_trial(
        model, SMALL[model], prepared, report=report, report_every=5, n_threads=2
    )
    assert [step for step, _ in calls] == list(range(5, result.rounds + 1, 5))
    assert all(0.5 < value <= 1.0 for _, value in calls)
    assert set(result.metrics) == set(METRIC_NAMES)
    assert result.metrics["roc_auc"] > 0.7  # the synthetic fraud is learnable
    assert 1 <= result.best_iteration <= result.rounds <= 30
    assert result.train_seconds > 0 and result.device == "cpu" and result.notes == ()
    assert result.feature_names == prepared.feature_names


@pytest.mark.parametrize("model", MODELS)
def test_model_is_cut_back_to_its_best_round(model: str, prepared: ml.Prepared) -> None:
    result = ml.train_trial(model, SMALL[model] | {"learning_rate": 0.9}, prepared)
    scores = result.predict(prepared.X_valid)
    assert result.metrics == ml.metrics.compute(prepared.y_valid, scores)
    if model == "xgboost":
        assert result.model.num_boosted_rounds() == result.best_iteration
    else:
        assert result.model.current_iteration() == result.best_iteration


@pytest.mark.parametrize("model", MODELS)
def test_trial_is_pruned_when_the_hook_says_so(model: str, prepared: ml.Prepared) -> None:
    with pytest.raises(ml.TrialPruned) as caught:
        ml.train_trial(
            model, SMALL[model], prepared, report=lambda step, _: step >= 20, report_every=10
        )
    assert caught.value.step == 20 and 0.0 <= caught.value.value <= 1.0
    assert isinstance(caught.value, optuna.TrialPruned)


@pytest.mark.parametrize("model", MODELS)
def test_cuda_request_trains_anyway_and_says_where(model: str, prepared: ml.Prepared) -> None:
    lightgbm_device = "cuda" if model == "lightgbm" else "cpu"
    result = ml.train_trial(
        model, SMALL[model], prepared, device="cuda", lightgbm_device=lightgbm_device
    )
    if result.device == "cpu":  # no GPU here (or no GPU build): the fallback must be visible
        assert result.notes and "CPU" in result.notes[0]
    else:
        assert result.device == "cuda"


def test_lightgbm_given_a_gpu_trains_on_the_cpu_unless_asked(prepared: ml.Prepared) -> None:
    result = ml.train_trial("lightgbm", SMALL["lightgbm"], prepared, device="cuda")
    assert result.device == "cpu" and result.native_params["device_type"] == "cpu"
    assert result.notes == ()  # the setting's choice, not a fallback


def test_unknown_parameter_or_model_is_refused(prepared: ml.Prepared) -> None:
    with pytest.raises(SpaceError) as caught:
        ml.train_trial("xgboost", {"num_leaves": 8}, prepared)
    assert caught.value.parameter == "num_leaves"
    with pytest.raises(SpaceError):
        ml.train_trial("catboost", {}, prepared)


def test_native_parameters_translate_the_scikit_learn_names() -> None:
    xgb_native, rounds = xgboost_params(
        {"n_estimators": 7, "learning_rate": 0.1, "reg_alpha": 1.0, "reg_lambda": 2.0}, "cpu", 2, 0
    )
    assert rounds == 7 and xgb_native["eta"] == 0.1 and xgb_native["alpha"] == 1.0
    assert xgb_native["lambda"] == 2.0 and xgb_native["tree_method"] == "hist"
    assert xgb_native["nthread"] == 2 and "n_estimators" not in xgb_native
    lgb_native, _ = lightgbm_params(
        {"subsample": 0.8, "colsample_bytree": 0.5, "min_child_samples": 9, "max_depth": 0},
        "cpu",
        None,
        0,
    )
    assert lgb_native["bagging_fraction"] == 0.8 and lgb_native["bagging_freq"] == 1
    assert lgb_native["feature_fraction"] == 0.5 and lgb_native["min_data_in_leaf"] == 9
    assert lgb_native["max_depth"] == -1


def test_trials_are_reproducible_for_a_seed(prepared: ml.Prepared) -> None:
    params = SMALL["lightgbm"] | {"subsample": 0.7, "colsample_bytree": 0.5}
    a = ml.train_trial("lightgbm", params, prepared, seed=3, n_threads=1)
    b = ml.train_trial("lightgbm", params, prepared, seed=3, n_threads=1)
    assert np.array_equal(a.predict(prepared.X_test), b.predict(prepared.X_test))


def test_an_optuna_search_drives_trials_and_pruning(prepared: ml.Prepared) -> None:
    space = resolve_space("xgboost", {"n_estimators": [20, 30], "max_depth": [2, 4]})
    study = optuna.create_study(
        direction="maximize",
        sampler=optuna.samplers.RandomSampler(seed=0),
        pruner=optuna.pruners.NopPruner(),
    )

    def objective(trial: optuna.Trial) -> float:
        params = suggest(trial, "xgboost", space)

        def report(step: int, value: float) -> bool:
            trial.report(value, step)
            return trial.number == 1  # prune the second trial by hand

        return ml.train_trial("xgboost", params, prepared, report=report).metrics["roc_auc"]

    study.optimize(objective, n_trials=3)
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.PRUNED) == 1
    assert states.count(optuna.trial.TrialState.COMPLETE) == 2
