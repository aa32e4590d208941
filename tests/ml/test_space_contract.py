"""One validator: what the job check accepts in ``search.space``, the samplers sample.

The job check (:func:`parse_job_file`, what ``sentinel submit`` and the daemon's intake run)
and the search (:func:`resolve_space`, then Optuna through :func:`suggest`) must agree on
every input, as an attacker would write it: every parameter of both models, in range,
beyond each bound, of the wrong length or type, NaN, infinite, huge, negative, booleans,
strings, nested. Accepted means sampled from without error, inside the range asked for;
refused means a :class:`JobSpecError` naming the file and the ``search.space`` field.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st

from sentinel_daemon.core.jobspec import JobSpecError, LightGBMSpace, XGBoostSpace
from sentinel_daemon.core.space import MODELS, ParamSpec, SpaceError, default_space, resolve_space
from sentinel_daemon.jobfile import parse_job_file
from sentinel_daemon.ml.space import distributions, suggest

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="module")
def workspace() -> Iterator[Path]:
    """A data root holding a transactions file (Hypothesis reuses it across examples)."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "data").mkdir()
        (root / "data" / "tx.csv").write_text("TransactionID\n1\n")
        (root / "jobs").mkdir()
        yield root


def check(root: Path, space: dict[str, Any], as_json: bool) -> tuple[Path, Any]:
    doc = {"name": "space", "data": {"transactions": "data/tx.csv"}, "search": {"space": space}}
    if as_json:
        path, text = root / "jobs" / "space.json", json.dumps(doc)
    else:
        path, text = root / "jobs" / "space.yaml", yaml.safe_dump(doc)
    path.write_text(text)
    try:
        return path, parse_job_file(path, data_roots=[root], base_dir=root)
    except JobSpecError as exc:
        return path, exc


# ---- what an attacker writes for one parameter --------------------------------------------


def _number(spec: ParamSpec, low: float, high: float) -> st.SearchStrategy[float]:
    if spec.kind == "int":
        return st.integers(min_value=math.ceil(low), max_value=math.floor(high))
    return st.floats(min_value=low, max_value=high, allow_nan=False)


def _in_range(spec: ParamSpec) -> st.SearchStrategy[list[Any]]:
    lo, hi = spec.bounds
    ends = st.tuples(_number(spec, lo, hi), _number(spec, lo, hi)).map(sorted)
    if spec.kind == "int":  # also as floats with whole values, which JSON and YAML may hold
        ends = ends | ends.map(lambda e: [float(e[0]), float(e[1])])
    return ends.map(list)


def _wild_number() -> st.SearchStrategy[Any]:
    return (
        st.integers(min_value=-(10**30), max_value=10**30)
        | st.floats(allow_nan=True, allow_infinity=True)
        | st.sampled_from([0, -1, 0.0, -0.0, 1e-320, 5e-324, 1e308, -1e308, 2**63, 2**64 + 1])
    )


def _past_a_bound(spec: ParamSpec) -> st.SearchStrategy[list[Any]]:
    lo, hi = spec.bounds
    below = st.floats(min_value=lo - 1e6, max_value=lo, exclude_max=True, allow_nan=False)
    above = st.floats(min_value=hi, max_value=hi + 1e6, exclude_min=True, allow_nan=False)
    inside = _number(spec, lo, hi)
    return st.one_of(
        st.tuples(below, inside),
        st.tuples(inside, above),
        st.tuples(below, above),
        st.tuples(st.just(lo - 1) if spec.kind == "int" else below, inside),
        st.tuples(inside, st.just(hi + 1) if spec.kind == "int" else above),
    ).map(list)


def _values(spec: ParamSpec) -> st.SearchStrategy[Any]:
    scalar = _wild_number() | st.booleans() | st.text(max_size=5) | st.none()
    return st.one_of(
        _in_range(spec),
        _in_range(spec),  # twice: accepted inputs must come up often
        _past_a_bound(spec),
        _in_range(spec).map(lambda e: [e[1], e[0]]),  # reversed
        st.lists(_number(spec, *spec.bounds), min_size=0, max_size=5),  # wrong lengths too
        st.lists(_wild_number(), min_size=2, max_size=2),
        st.lists(st.floats(*spec.bounds), min_size=2, max_size=2),  # floats, also for ints
        st.lists(scalar, min_size=1, max_size=3),
        scalar,
        st.lists(st.lists(_wild_number(), max_size=2), min_size=2, max_size=2),  # nested
        st.dictionaries(st.sampled_from(["low", "high"]), _wild_number(), max_size=2),
    )


def _model_space(model: str) -> st.SearchStrategy[dict[str, Any]]:
    params = default_space(model)
    entries = st.one_of(
        *[st.tuples(st.just(name), _values(spec)) for name, spec in params.items()],
        # Names of the other model, of the libraries' native API, or none at all.
        st.tuples(
            st.sampled_from(["eta", "depth", "num_leaves", "gamma", ""]),
            _in_range(params["n_estimators"]),
        ),
    )
    return st.lists(entries, max_size=4).map(dict)


_spaces = st.fixed_dictionaries({}, optional={m: _model_space(m) for m in MODELS})


# ---- the property ---------------------------------------------------------------------------


def _sample(model: str, space: dict[str, ParamSpec], sampler: optuna.samplers.BaseSampler) -> None:
    """Ask, suggest and tell a few trials of a real study; every value inside its range."""
    study = optuna.create_study(direction="maximize", sampler=sampler)
    for i in range(4):
        trial = study.ask()
        params = suggest(trial, model, space)
        for name, value in params.items():
            spec = space[name]
            if spec.kind == "int":
                assert isinstance(value, int) and spec.low <= value <= spec.high, (name, value)
            elif spec.kind == "float":
                assert spec.low <= value <= spec.high, (name, value)
        study.tell(trial, 0.5 + i / 100)
    assert set(distributions(space)) == set(space)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(space=_spaces, as_json=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_what_the_job_check_accepts_the_samplers_sample_and_what_it_refuses_is_named(
    workspace: Path, space: dict[str, Any], as_json: bool, seed: int
) -> None:
    path, outcome = check(workspace, space, as_json)
    note(f"outcome: {outcome!r}")
    event("refused" if isinstance(outcome, JobSpecError) else "accepted")
    if isinstance(outcome, JobSpecError):
        assert outcome.path == path and str(path) in str(outcome)
        assert outcome.field.startswith("search.space"), outcome.field
        assert outcome.field in str(outcome)
        return
    overrides = outcome.spec.search.space
    for model in outcome.spec.models:
        given_ = overrides.for_model(model) if overrides is not None else None
        resolved = resolve_space(model, given_)  # must not raise: the job check agreed
        for name, value in (given_ or {}).items():
            assert (resolved[name].low, resolved[name].high) == (value[0], value[1])
        _sample(model, resolved, optuna.samplers.RandomSampler(seed=seed))
        _sample(model, resolved, optuna.samplers.TPESampler(seed=seed, n_startup_trials=2))


# ---- the examples that were accepted, then refused -----------------------------------------


@pytest.mark.parametrize(
    ("model", "name", "value", "words"),
    [
        ("xgboost", "max_depth", [2, 500], "leaves the bounds"),
        ("xgboost", "max_depth", [2, 3, 4], "[low, high]"),
        ("xgboost", "max_depth", [2.5, 3], "whole number"),
        ("xgboost", "learning_rate", [0.0, 0.1], "leaves the bounds"),
        ("lightgbm", "num_leaves", [1, 8], "leaves the bounds"),
        ("lightgbm", "min_child_samples", [10**30, 10**30], "leaves the bounds"),
        ("xgboost", "subsample", [10**400, 1], "above high"),
    ],
)
def test_the_job_check_refuses_what_the_search_would_refuse(
    workspace: Path, model: str, name: str, value: list[Any], words: str
) -> None:
    _path, outcome = check(workspace, {model: {name: value}}, as_json=False)

    assert isinstance(outcome, JobSpecError)
    assert outcome.field == f"search.space.{model}.{name}" and words in outcome.reason
    with pytest.raises(SpaceError):
        resolve_space(model, {name: value})


def test_ranges_at_the_bounds_are_accepted_and_sampled(workspace: Path) -> None:
    space = {m: {n: list(s.bounds) for n, s in default_space(m).items()} for m in MODELS}
    _path, outcome = check(workspace, space, as_json=True)

    assert not isinstance(outcome, JobSpecError), outcome
    for model in MODELS:
        _sample(model, resolve_space(model, space[model]), optuna.samplers.TPESampler(seed=1))


def test_the_job_file_schema_lists_every_parameter_of_the_space() -> None:
    assert set(XGBoostSpace.model_fields) == set(default_space("xgboost"))
    assert set(LightGBMSpace.model_fields) == set(default_space("lightgbm"))
