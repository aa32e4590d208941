from __future__ import annotations

import optuna
import pytest

from sentinel_daemon.core.space import ParamSpec, SpaceError, default_space, resolve_space
from sentinel_daemon.ml.space import suggest

XGB = {"n_estimators", "learning_rate", "max_depth", "min_child_weight", "subsample",
       "colsample_bytree", "reg_alpha", "reg_lambda", "gamma"}  # fmt: skip
LGB = {"n_estimators", "learning_rate", "num_leaves", "max_depth", "min_child_samples",
       "subsample", "colsample_bytree", "reg_alpha", "reg_lambda"}  # fmt: skip


def test_default_spaces_use_the_scikit_learn_names() -> None:
    assert set(default_space("xgboost")) == XGB
    assert set(default_space("lightgbm")) == LGB
    for model in ("xgboost", "lightgbm"):
        for spec in default_space(model).values():
            assert spec.bounds[0] <= spec.low <= spec.high <= spec.bounds[1]


def test_overrides_narrow_the_space_within_the_bounds() -> None:
    space = resolve_space("xgboost", {"n_estimators": [10, 30], "max_depth": [3, 3]})
    assert (space["n_estimators"].low, space["n_estimators"].high) == (10, 30)
    assert space["n_estimators"].kind == "int" and space["n_estimators"].log
    assert space["learning_rate"] == default_space("xgboost")["learning_rate"]


@pytest.mark.parametrize(
    ("overrides", "parameter", "words"),
    [
        ({"max_leaves": [2, 4]}, "max_leaves", "unknown parameter"),
        ({"max_depth": [3, 100]}, "max_depth", "bounds"),
        ({"max_depth": [8, 3]}, "max_depth", "above"),
        ({"max_depth": [3.5, 6]}, "max_depth", "whole number"),
        ({"max_depth": 6}, "max_depth", "[low, high]"),
        ({"subsample": ["a", 1.0]}, "subsample", "not a finite number"),
        ({"subsample": [True, 1.0]}, "subsample", "not a finite number"),
        ({"reg_alpha": [0, 1]}, "reg_alpha", "bounds"),
    ],
)
def test_bad_overrides_name_the_parameter(overrides: dict, parameter: str, words: str) -> None:
    with pytest.raises(SpaceError) as caught:
        resolve_space("xgboost", overrides)
    assert caught.value.parameter == parameter and words in caught.value.reason
    assert f"search.space.xgboost.{parameter}" in str(caught.value)


def test_unknown_model_is_refused() -> None:
    with pytest.raises(SpaceError, match="unknown model"):
        default_space("catboost")


def test_suggest_samples_inside_the_resolved_space() -> None:
    space = resolve_space("lightgbm", {"n_estimators": [10, 20], "num_leaves": [4, 8]})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(20):
        trial = study.ask()
        params = suggest(trial, "lightgbm", space)
        assert set(params) == LGB
        assert 10 <= params["n_estimators"] <= 20 and isinstance(params["n_estimators"], int)
        assert 4 <= params["num_leaves"] <= 8
        assert 0.5 <= params["subsample"] <= 1.0
        study.tell(trial, 0.5)


def test_suggest_handles_choice_parameters() -> None:
    space = {"max_depth": ParamSpec("choice", choices=(-1, 6, 8))}
    trial = optuna.create_study().ask()
    assert suggest(trial, "lightgbm", space)["max_depth"] in (-1, 6, 8)
