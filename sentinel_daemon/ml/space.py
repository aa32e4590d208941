"""Sampling the search space with Optuna: suggestions and the distributions behind them.

The space itself (parameters, default ranges, bounds, overrides) is defined in the core,
:mod:`sentinel_daemon.core.space`, because the job check must accept exactly what is
sampled here; its names are re-exported for the callers that sample.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import optuna

from sentinel_daemon.core.space import (
    MODELS,
    ParamSpec,
    SpaceError,
    default_space,
    resolve_space,
)

__all__ = [
    "MODELS",
    "ParamSpec",
    "SpaceError",
    "default_space",
    "distributions",
    "resolve_space",
    "suggest",
]


def suggest(trial: optuna.Trial, model: str, space: Mapping[str, ParamSpec]) -> dict[str, Any]:
    """Sample one point of ``space`` through ``trial`` (parameter names as in the space)."""
    if model not in MODELS:
        raise SpaceError(model, None, f"unknown model; choose one of {list(MODELS)}")
    params: dict[str, Any] = {}
    for name, spec in space.items():
        if spec.kind == "choice":
            params[name] = trial.suggest_categorical(name, list(spec.choices))
        elif spec.kind == "int":
            params[name] = trial.suggest_int(name, int(spec.low), int(spec.high), log=spec.log)
        else:
            params[name] = trial.suggest_float(name, spec.low, spec.high, log=spec.log)
    return params


def distributions(
    space: Mapping[str, ParamSpec],
) -> dict[str, optuna.distributions.BaseDistribution]:
    """The Optuna distributions :func:`suggest` samples from, to rebuild recorded trials."""
    out: dict[str, optuna.distributions.BaseDistribution] = {}
    for name, spec in space.items():
        if spec.kind == "choice":
            out[name] = optuna.distributions.CategoricalDistribution(list(spec.choices))
        elif spec.kind == "int":
            out[name] = optuna.distributions.IntDistribution(
                int(spec.low), int(spec.high), log=spec.log
            )
        else:
            out[name] = optuna.distributions.FloatDistribution(spec.low, spec.high, log=spec.log)
    return out
