"""One trial: train XGBoost or LightGBM on a prepared data set, with early stopping and pruning.

Validation AUC comes from the library's own evaluation, which early stopping needs
anyway, so the reporting hook adds nothing but a Python call every few rounds. The
model kept is cut back to its best round, so what is scored, saved and reloaded is
the same model.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import lightgbm as lgb
import numpy as np
import optuna
import xgboost as xgb

from sentinel_daemon.core.space import SpaceError, default_space
from sentinel_daemon.ml import metrics
from sentinel_daemon.ml.devicedata import DEFAULT_MAX_BIN, DeviceData
from sentinel_daemon.ml.errors import MLError
from sentinel_daemon.ml.learners import lightgbm_choice, xgboost_choice
from sentinel_daemon.ml.preparation import Prepared
from sentinel_daemon.ml.stderrguard import quiet_stderr

Report = Callable[[int, float], bool]
Booster = xgb.Booster | lgb.Booster
#: What a trainer returns: the model cut to its best round, its native parameters, rounds
#: trained, best round, seconds, device used, notes, and how to score the validation rows.
Trained = tuple[Booster, dict[str, Any], int, int, float, str, list[str], Callable[[], np.ndarray]]


class TrialPruned(MLError, optuna.TrialPruned):
    """The report hook asked to stop: the trial is pruned at ``step`` with AUC ``value``.

    It is also an ``optuna.TrialPruned``, so a plain Optuna objective may let it escape.
    """

    def __init__(self, step: int, value: float) -> None:
        self.step = step
        self.value = value
        super().__init__(f"trial pruned at round {step} (validation ROC AUC {value:.6f})")


@dataclass(eq=False)
class TrainResult:
    """A trained model cut back to its best round, with its validation scores.

    ``best_iteration`` counts the boosting rounds the model keeps (1-based); ``rounds``
    how many were trained before early stopping. ``train_seconds`` is the libraries'
    own work (building their data sets, boosting, cutting the model back to its best round);
    ``score_seconds`` is scoring the
    validation split and computing its metrics. Neither counts saving.
    """

    model_kind: str
    model: Booster
    params: dict[str, Any]
    native_params: dict[str, Any]
    metrics: dict[str, float]
    best_iteration: int
    rounds: int
    train_seconds: float
    device: str
    feature_names: tuple[str, ...]
    data_hash: str
    feature_version: str
    feature_set: str
    notes: tuple[str, ...] = field(default=())
    score_seconds: float = 0.0

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Fraud probabilities for the rows of ``X``."""
        return predict(self.model_kind, self.model, X)


class Predictor(Protocol):
    def predict(self, X: np.ndarray) -> np.ndarray: ...


def predict(model_kind: str, model: Booster, X: np.ndarray) -> np.ndarray:
    """Probabilities from a booster; the one path both trained and reloaded models take."""
    if model_kind == "xgboost" and isinstance(model, xgb.Booster):
        return np.asarray(model.inplace_predict(X))
    if model_kind == "lightgbm" and isinstance(model, lgb.Booster):
        return np.asarray(model.predict(X))
    raise MLError(f"cannot predict with a {type(model).__name__} as model kind {model_kind!r}")


def evaluate(model: Predictor, prepared: Prepared, split: str = "test") -> dict[str, float]:
    """Metrics of a trained or reloaded model on one split of ``prepared``."""
    X, y = prepared.rows(split)
    return metrics.compute(y, model.predict(X))


def train_trial(
    model: str,
    params: Mapping[str, Any],
    prepared: Prepared,
    *,
    device: str = "cpu",
    n_threads: int | None = None,
    report: Report | None = None,
    report_every: int = 10,
    early_stopping_rounds: int = 50,
    seed: int = 0,
    lightgbm_device: str = "cpu",
    data: DeviceData | None = None,
) -> TrainResult:
    """Train one model on the train split, early-stopping on the validation split.

    ``params`` uses the scikit-learn-API names of :mod:`sentinel_daemon.core.space` (missing
    ones take the library defaults; ``n_estimators`` defaults to 100). Every ``report_every`` rounds
    ``report(step, valid_auc)`` is called; when it returns True the trial stops and
    :class:`TrialPruned` is raised.

    ``device`` is the device the trial is given: ``cpu``, or ``cuda[:N]``, on which XGBoost
    trains where its build and the machine allow it, else on the CPU with a note in the
    result (:mod:`sentinel_daemon.ml.learners`). LightGBM uses a GPU it is given only as
    ``lightgbm_device`` says (``cpu``, ``cuda`` or ``opencl``). ``data`` keeps XGBoost's
    matrices across trials (:class:`~sentinel_daemon.ml.devicedata.DeviceData`); without
    it they are built for this trial alone.
    """
    known = default_space(model)  # also rejects an unknown model
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise SpaceError(model, unknown[0], f"unknown parameter; known: {sorted(known)}")
    if report_every < 1 or early_stopping_rounds < 1:
        raise ValueError("report_every and early_stopping_rounds must be at least 1")
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda[:N]', not {device!r}")
    fit = (report, report_every, early_stopping_rounds, seed)
    if model == "xgboost":
        trained = _train_xgboost(dict(params), prepared, device, n_threads, fit, data)
    else:
        trained = _train_lightgbm(dict(params), prepared, device, n_threads, fit, lightgbm_device)
    booster, native, rounds, best, seconds, used, notes, score = trained
    scoring = time.perf_counter()
    valid_scores = score()
    valid_metrics = metrics.compute(prepared.y_valid, valid_scores)
    return TrainResult(
        model_kind=model,
        model=booster,
        params=dict(params),
        native_params=native,
        metrics=valid_metrics,
        best_iteration=best,
        rounds=rounds,
        train_seconds=seconds,
        device=used,
        feature_names=prepared.feature_names,
        data_hash=prepared.data_hash,
        feature_version=prepared.feature_version,
        feature_set=prepared.feature_set,
        notes=tuple(notes),
        score_seconds=time.perf_counter() - scoring,
    )


def xgboost_params(
    params: Mapping[str, Any], device: str, n_threads: int | None, seed: int
) -> tuple[dict[str, Any], int]:
    """Native ``xgboost.train`` parameters and the number of rounds for scikit-learn names."""
    names = {"learning_rate": "eta", "reg_alpha": "alpha", "reg_lambda": "lambda"}
    native: dict[str, Any] = {
        "objective": "binary:logistic",
        "eval_metric": "auc",
        "tree_method": "hist",
        "device": device,
        "seed": seed,
    }
    if n_threads is not None:
        native["nthread"] = n_threads
    for name, value in params.items():
        if name != "n_estimators":
            native[names.get(name, name)] = value
    return native, int(params.get("n_estimators", 100))


def lightgbm_params(
    params: Mapping[str, Any], device: str, n_threads: int | None, seed: int
) -> tuple[dict[str, Any], int]:
    """Native ``lightgbm.train`` parameters and the number of rounds for scikit-learn names."""
    names = {
        "min_child_samples": "min_data_in_leaf",
        "subsample": "bagging_fraction",
        "colsample_bytree": "feature_fraction",
        "reg_alpha": "lambda_l1",
        "reg_lambda": "lambda_l2",
    }
    native: dict[str, Any] = {
        "objective": "binary",
        "metric": "auc",
        "device_type": device,
        "seed": seed,
        "verbosity": -1,
    }
    if n_threads is not None:
        native["num_threads"] = n_threads
    for name, value in params.items():
        if name != "n_estimators":
            native[names.get(name, name)] = value
    if native.get("max_depth") == 0:
        native["max_depth"] = -1  # both mean "no limit"; LightGBM documents -1
    if native.get("bagging_fraction", 1.0) < 1.0:
        native["bagging_freq"] = 1  # without it LightGBM silently ignores the subsample
    return native, int(params.get("n_estimators", 100))


class _XGBoostReport(xgb.callback.TrainingCallback):
    def __init__(self, report: Report, every: int) -> None:
        self.report, self.every = report, every
        self.pruned: tuple[int, float] | None = None

    def after_iteration(self, model: Any, epoch: int, evals_log: dict[str, Any]) -> bool:
        step = epoch + 1
        if step % self.every:
            return False
        value = float(evals_log["valid"]["auc"][-1])
        if self.report(step, value):
            self.pruned = (step, value)
            return True  # stops xgboost.train; train_trial then raises TrialPruned
        return False


def _train_xgboost(
    params: dict[str, Any],
    prepared: Prepared,
    device: str,
    n_threads: int | None,
    fit: tuple[Report | None, int, int, int],
    data: DeviceData | None,
) -> Trained:
    report, every, patience, seed = fit
    choice = xgboost_choice(device)
    notes = [choice.note] if choice.note else []
    native, rounds = xgboost_params(params, choice.device, n_threads, seed)
    hook = _XGBoostReport(report, every) if report is not None else None
    started = time.perf_counter()
    dtrain: xgb.DMatrix
    dvalid: xgb.DMatrix
    if data is not None:
        # Kept across trials, binned once (QuantileDMatrix); the booster's max_bin must match.
        matrices = data.xgboost(
            prepared, device=choice.device, max_bin=int(native.get("max_bin", DEFAULT_MAX_BIN))
        )
        native["max_bin"] = matrices.shape.max_bin
        dtrain, dvalid = matrices.train, matrices.valid
    else:
        # A plain DMatrix for the eval set: as a QuantileDMatrix built per trial it costs ~2x.
        dtrain = xgb.DMatrix(prepared.X_train, label=prepared.y_train, nthread=n_threads or -1)
        dvalid = xgb.DMatrix(prepared.X_valid, label=prepared.y_valid, nthread=n_threads or -1)
    booster = xgb.train(
        native,
        dtrain,
        num_boost_round=rounds,
        evals=[(dvalid, "valid")],
        early_stopping_rounds=patience,
        verbose_eval=False,
        callbacks=[hook] if hook is not None else None,
    )
    if hook is not None and hook.pruned is not None:
        raise TrialPruned(*hook.pruned)
    trained = booster.num_boosted_rounds()
    best = int(booster.best_iteration) + 1
    final = booster[:best]
    seconds = time.perf_counter() - started  # the final model, cut to its best round, included

    def score() -> np.ndarray:
        # On the validation matrix, where it lives (the GPU for a GPU booster): never
        # inplace_predict of host rows with a GPU booster (XGBoost's mismatched devices).
        return np.asarray(booster.predict(dvalid, iteration_range=(0, best)))

    return final, native, trained, best, seconds, choice.device, notes, score


class _Pruned(Exception):  # internal signal, never escapes train_trial
    def __init__(self, step: int, value: float) -> None:
        self.step, self.value = step, value


def _lightgbm_report(report: Report, every: int) -> Callable[[Any], None]:
    def callback(env: Any) -> None:
        step = env.iteration + 1
        if step % every:
            return
        value = next(r[2] for r in env.evaluation_result_list if r[0] == "valid" and r[1] == "auc")
        if report(step, float(value)):
            raise _Pruned(step, float(value))

    callback.order = 20  # type: ignore[attr-defined]  # before early stopping (30) ends the loop
    return callback


def _train_lightgbm(
    params: dict[str, Any],
    prepared: Prepared,
    device: str,
    n_threads: int | None,
    fit: tuple[Report | None, int, int, int],
    lightgbm_device: str,
) -> Trained:
    report, every, patience, seed = fit
    choice = lightgbm_choice(device, lightgbm_device)
    notes = [choice.note] if choice.note else []
    native, rounds = lightgbm_params(params, choice.device, n_threads, seed)
    if choice.device != "cpu" and ":" in device:
        native["gpu_device_id"] = int(device.split(":", 1)[1])
    callbacks: list[Callable[..., Any]] = [
        lgb.early_stopping(patience, first_metric_only=True, verbose=False)
    ]
    if report is not None:
        callbacks.append(_lightgbm_report(report, every))
    started = time.perf_counter()
    names = list(prepared.feature_names)
    dtrain = lgb.Dataset(prepared.X_train, label=prepared.y_train, feature_name=names)
    dvalid = lgb.Dataset(prepared.X_valid, label=prepared.y_valid, reference=dtrain)
    # The OpenCL runtime prints its kernels' compiler warnings to fd 2 as the booster is
    # built: kept out of the journal (the data sets are built inside lgb.train).
    guard = (
        quiet_stderr(f"lightgbm device_type={choice.device}")
        if choice.device != "cpu"
        else contextlib.nullcontext()
    )
    try:
        with guard:
            booster = lgb.train(
                native,
                dtrain,
                num_boost_round=rounds,
                valid_sets=[dvalid],
                valid_names=["valid"],
                callbacks=callbacks,
                # Keep every round: otherwise LightGBM cuts the booster to its best round
                # through a model-string round trip of its own, and the rounds trained are lost.
                keep_training_booster=True,
            )
    except _Pruned as stop:
        raise TrialPruned(stop.step, stop.value) from None
    trained = booster.current_iteration()
    best = booster.best_iteration or trained
    final = lgb.Booster(model_str=booster.model_to_string(num_iteration=best))
    seconds = time.perf_counter() - started  # the final model, cut to its best round, included
    return (
        final, native, trained, best, seconds, choice.device, notes,
        lambda: predict("lightgbm", final, prepared.X_valid),
    )  # fmt: skip
