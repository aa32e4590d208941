"""The search space: each model's parameters, their default ranges and bounds, and overrides.

This is part of the job-file contract (``search.space``), so it lives in the pure core:
the job check (:mod:`sentinel_daemon.core.jobspec`, run by ``sentinel submit`` and by the
daemon's intake), the job actor that builds the Optuna studies and the trainer all use
these definitions, and what one accepts the others cannot refuse. Sampling the space with
Optuna is the ML library's part (:mod:`sentinel_daemon.ml.space`); nothing here imports
Optuna.

Parameters carry the scikit-learn-API names. Each has a default search range and wider
*bounds*: an override may narrow or move the range anywhere within the bounds, so a test
or a small data set can ask for 10 trees while the default searches hundreds. ``[low,
high]`` sets a numeric range (equal ends fix the value); a list sets the choices of a
categorical parameter, a subset of its defaults.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from sentinel_daemon.errors import SentinelError

MODELS = ("xgboost", "lightgbm")


class SpaceError(SentinelError):
    """A search-space override names an unknown parameter or an invalid range."""

    def __init__(self, model: str, parameter: str | None, reason: str) -> None:
        self.model = model
        self.parameter = parameter
        self.reason = reason
        where = f"search.space.{model}.{parameter}" if parameter else f"search.space.{model}"
        super().__init__(f"{where}: {reason}. Correct the job file and submit it again.")


@dataclass(frozen=True)
class ParamSpec:
    """One searched parameter: ``int`` / ``float`` ranges (maybe log-scaled) or a ``choice``."""

    kind: Literal["int", "float", "choice"]
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    bounds: tuple[float, float] = (0.0, 0.0)
    choices: tuple[Any, ...] = ()

    def describe(self) -> str:
        if self.kind == "choice":
            return f"one of {list(self.choices)}"
        scale = ", log scale" if self.log else ""
        return f"{self.kind} in [{_fmt(self.bounds[0])}, {_fmt(self.bounds[1])}]{scale}"


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


def _int(low: int, high: int, bounds: tuple[int, int], log: bool = False) -> ParamSpec:
    return ParamSpec("int", low, high, log, bounds)


def _float(low: float, high: float, bounds: tuple[float, float], log: bool = False) -> ParamSpec:
    return ParamSpec("float", low, high, log, bounds)


# Ranges in the spirit of the strong IEEE-CIS solutions: deep trees (depth ~12 for
# XGBoost, hundreds of leaves for LightGBM), feature subsampling around 0.4-0.8, row
# subsampling around 0.8, small learning rates with early stopping choosing the rounds.
_DEFAULTS: dict[str, dict[str, ParamSpec]] = {
    "xgboost": {
        "n_estimators": _int(200, 2000, (1, 20_000), log=True),
        "learning_rate": _float(0.01, 0.2, (1e-4, 1.0), log=True),
        "max_depth": _int(4, 14, (1, 20)),
        "min_child_weight": _float(0.5, 50.0, (1e-3, 1e3), log=True),
        "subsample": _float(0.5, 1.0, (0.05, 1.0)),
        "colsample_bytree": _float(0.2, 1.0, (0.05, 1.0)),
        "reg_alpha": _float(1e-3, 10.0, (1e-8, 1e3), log=True),
        "reg_lambda": _float(1e-3, 10.0, (1e-8, 1e3), log=True),
        "gamma": _float(0.0, 5.0, (0.0, 100.0)),
    },
    "lightgbm": {
        "n_estimators": _int(200, 3000, (1, 20_000), log=True),
        "learning_rate": _float(0.005, 0.2, (1e-4, 1.0), log=True),
        "num_leaves": _int(16, 512, (2, 131_072), log=True),
        "max_depth": _int(-1, 16, (-1, 64)),  # -1 (or 0): no limit
        "min_child_samples": _int(5, 300, (1, 100_000), log=True),
        "subsample": _float(0.5, 1.0, (0.05, 1.0)),
        "colsample_bytree": _float(0.2, 1.0, (0.05, 1.0)),
        "reg_alpha": _float(1e-3, 10.0, (1e-8, 1e3), log=True),
        "reg_lambda": _float(1e-3, 10.0, (1e-8, 1e3), log=True),
    },
}


def default_space(model: str) -> dict[str, ParamSpec]:
    """The default search space of ``xgboost`` or ``lightgbm``."""
    if model not in _DEFAULTS:
        raise SpaceError(model, None, f"unknown model; choose one of {list(MODELS)}")
    return dict(_DEFAULTS[model])


def resolve_space(model: str, overrides: Mapping[str, Any] | None) -> dict[str, ParamSpec]:
    """The default space with ``overrides`` applied; SpaceError names a bad parameter."""
    space = default_space(model)
    if overrides is None:
        return space
    if not isinstance(overrides, Mapping):
        raise SpaceError(model, None, "must be a mapping of parameter names to ranges")
    for name, value in overrides.items():
        space[name] = override(model, str(name), value)
    return space


def override(model: str, name: str, value: Any) -> ParamSpec:
    """The default of parameter ``name`` of ``model`` narrowed to ``value``, or SpaceError.

    The one check of a single override: :func:`resolve_space` applies it to a whole
    section, and the job check applies it to each entry, so that both say the same thing.
    """
    space = default_space(model)
    if name not in space:
        raise SpaceError(model, name, f"unknown parameter; known: {sorted(space)}")
    spec = space[name]
    if spec.kind == "choice":
        if not isinstance(value, list | tuple) or not value:
            raise SpaceError(model, name, f"expected a non-empty list, {spec.describe()}")
        bad = [v for v in value if v not in spec.choices]
        if bad:
            raise SpaceError(model, name, f"{bad} not allowed; expected {spec.describe()}")
        return replace(spec, choices=tuple(dict.fromkeys(value)))
    if not isinstance(value, list | tuple) or len(value) != 2:
        got = f"a list of {len(value)}" if isinstance(value, list | tuple) else repr(value)
        raise SpaceError(
            model, name, f"expected [low, high] (two numbers), got {got}; {spec.describe()}"
        )
    low, high = value
    for end in (low, high):
        # bool is an int subclass; True as a bound is a typo, not a number.
        if isinstance(end, bool) or not isinstance(end, int | float):
            raise SpaceError(model, name, f"{end!r} is not a finite number")
        # An int is finite whatever its size (math.isfinite would overflow converting it).
        if isinstance(end, float) and not math.isfinite(end):
            raise SpaceError(model, name, f"{end!r} is not a finite number")
        if spec.kind == "int" and isinstance(end, float) and not end.is_integer():
            raise SpaceError(model, name, f"{end!r} is not a whole number; it is an integer")
    if low > high:
        raise SpaceError(
            model, name, f"low {low} is above high {high}; give [low, high], low <= high"
        )
    if low < spec.bounds[0] or high > spec.bounds[1]:
        raise SpaceError(model, name, f"[{low}, {high}] leaves the bounds: {spec.describe()}")
    if spec.log and low <= 0:
        raise SpaceError(model, name, "a log-scale range must be above 0")
    if spec.kind == "int":
        return replace(spec, low=int(low), high=int(high))
    return replace(spec, low=float(low), high=float(high))
