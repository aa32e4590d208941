"""Which device each library trains a trial on: what was asked, what the build and machine allow.

XGBoost (``models.xgboost.device``: ``gpu`` or ``cpu``) trains on the worker's GPU when it
has one and the setting is ``gpu``. Where XGBoost cannot use it (a build without CUDA, no
GPU visible to the process) the trial trains on the CPU and its result carries a note
saying why: the probe that finds out runs once per process and per device, with
XGBoost's own warnings about it kept out of the logs.

LightGBM (``models.lightgbm.device``: ``cpu``, ``cuda`` or ``opencl``) trains on the CPU
unless asked otherwise; a GPU is used only as asked, never picked by probing:

- ``cuda``: ``device_type=cuda``, LightGBM's CUDA learner, which only builds compiled with
  it have (``pip install lightgbm --config-settings=cmake.define.USE_CUDA=ON``; the PyPI
  wheel has none). A build without it falls back to the CPU with a note on each trial and
  one warning in the log, like XGBoost's fallback: a trial still yields a model, and the
  note says in the result and the log what to change. (Failing the trial instead would
  fail every LightGBM trial of every job until the operator changed the setting.)
- ``opencl``: ``device_type=gpu``, the OpenCL learner the PyPI wheel has. The OpenCL runtime
  compiles kernels for each booster and prints compiler warnings to file descriptor 2: the
  probe and every such trial run under :func:`~sentinel_daemon.ml.stderrguard.quiet_stderr`.
  Measured on an H200 (issue 14) it was no faster than 16 CPU threads.

Both probes train a one-round model on 200 rows; a failing one raises, never crashes.
"""

from __future__ import annotations

import functools
import json
import os
import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np
import structlog

from sentinel_daemon.ml.stderrguard import quiet_stderr

log = structlog.get_logger(__name__)

XGBOOST_DEVICES = ("gpu", "cpu")
LIGHTGBM_DEVICES = ("cpu", "cuda", "opencl")
XGBoostDevice = Literal["gpu", "cpu"]
LightGBMDevice = Literal["cpu", "cuda", "opencl"]
#: ``models.lightgbm.device`` -> LightGBM's ``device_type``.
LIGHTGBM_DEVICE_TYPE = {"cpu": "cpu", "cuda": "cuda", "opencl": "gpu"}


@dataclass(frozen=True)
class Choice:
    """The device given to the library (XGBoost ``device``, LightGBM ``device_type``) and,
    when that is not what was asked for, a note saying why."""

    device: str
    note: str | None = None


def gpu_device(gpu: int | None, visible: str | None = None) -> str:
    """XGBoost's name for the worker's GPU: ``cpu`` (none), ``cuda`` or ``cuda:<gpu>``.

    A worker pinned to its GPU (``CUDA_VISIBLE_DEVICES`` naming one device, as the
    supervisor starts them) sees it as device 0: plain ``cuda``. Otherwise the index.
    ``visible`` defaults to the process's ``CUDA_VISIBLE_DEVICES``.
    """
    if gpu is None:
        return "cpu"
    if visible is None:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and len([v for v in visible.split(",") if v.strip()]) == 1:
        return "cuda"
    return f"cuda:{gpu}"


def _tiny() -> tuple[np.ndarray, np.ndarray]:
    X = np.arange(400, dtype=np.float32).reshape(200, 2)
    y = (np.arange(200) % 2).astype(np.float32)
    return X, y


@functools.cache
def xgboost_cuda_problem(device: str = "cuda") -> str | None:
    """Why XGBoost cannot train on ``device`` here, or None when it can (probed once)."""
    import xgboost as xgb

    if not xgb.build_info().get("USE_CUDA"):
        return f"this XGBoost build ({xgb.__version__}) has no CUDA support"
    X, y = _tiny()
    with warnings.catch_warnings():
        # "No visible GPU is found, setting device to CPU.": the answer, not news.
        warnings.simplefilter("ignore")
        try:
            booster = xgb.train(
                {"device": device, "tree_method": "hist", "max_depth": 1, "verbosity": 0},
                xgb.DMatrix(X, label=y),
                num_boost_round=1,
            )
        except xgb.core.XGBoostError as exc:
            return f"XGBoost could not use {device}: {str(exc).splitlines()[0][:300]}"
    used = json.loads(booster.save_config())["learner"]["generic_param"]["device"]
    if not str(used).startswith("cuda"):
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        where = "" if visible is None else f" (CUDA_VISIBLE_DEVICES={visible!r})"
        return f"XGBoost sees no GPU for {device}{where}"
    return None


def xgboost_choice(device: str) -> Choice:
    """XGBoost's device for a trial given ``device`` (``cpu`` or ``cuda[:N]``)."""
    if device == "cpu":
        return Choice("cpu")
    problem = xgboost_cuda_problem(device)
    if problem is None:
        return Choice(device)
    _warn_once("xgboost", device, problem)
    return Choice("cpu", f"{problem}: trained on the CPU")


@functools.cache
def lightgbm_device_problem(device_type: str) -> str | None:
    """Why LightGBM cannot train with ``device_type`` (``cuda`` or ``gpu``), or None."""
    import lightgbm as lgb

    X, y = _tiny()
    params = {"device_type": device_type, "verbosity": -1, "num_leaves": 2, "min_data_in_leaf": 1}
    # Its OpenCL compiler chatter, and LightGBM's "[Fatal]" lines when it fails: the
    # failure is the answer, returned; none of it is news for the journal.
    with quiet_stderr(f"lightgbm {device_type} probe", pass_others=False):
        try:
            lgb.train(params, lgb.Dataset(X, label=y), num_boost_round=1)
        except lgb.basic.LightGBMError as exc:
            first = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
            build = f"this LightGBM build ({lgb.__version__})"
            return f"{build} cannot use device_type={device_type}: {first}"
    return None


def lightgbm_choice(device: str, setting: str) -> Choice:
    """LightGBM's ``device_type`` for a trial given ``device`` (``cpu`` or ``cuda[:N]``,
    the worker's) and ``setting`` (``models.lightgbm.device``)."""
    if setting not in LIGHTGBM_DEVICES:
        raise ValueError(
            f"models.lightgbm.device must be one of {LIGHTGBM_DEVICES}, not {setting!r}"
        )
    if setting == "cpu":
        return Choice("cpu")
    if device == "cpu":
        return Choice(
            "cpu",
            f"models.lightgbm.device is {setting} but this worker has no GPU: trained on the CPU",
        )
    device_type = LIGHTGBM_DEVICE_TYPE[setting]
    problem = lightgbm_device_problem(device_type)
    if problem is None:
        return Choice(device_type)
    _warn_once("lightgbm", setting, problem)
    return Choice("cpu", f"{problem}: trained on the CPU (models.lightgbm.device: {setting})")


@functools.cache
def _warn_once(library: str, asked: str, problem: str) -> None:
    log.warning("training.device_fallback", library=library, asked=asked, reason=problem)
