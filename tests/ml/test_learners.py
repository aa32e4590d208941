"""Which device each library trains on: the worker's GPU, the settings, the build, the machine."""

from __future__ import annotations

import warnings

import pytest

from sentinel_daemon import ml
from sentinel_daemon.ml import learners
from sentinel_daemon.ml.learners import (
    gpu_device,
    lightgbm_choice,
    lightgbm_device_problem,
    xgboost_choice,
    xgboost_cuda_problem,
)

from .helpers import SMALL


def test_a_worker_pinned_to_its_gpu_names_it_plain_cuda() -> None:
    assert gpu_device(None, "0") == "cpu"
    assert gpu_device(3, "3") == "cuda"  # the supervisor's CUDA_VISIBLE_DEVICES=3: device 0
    assert gpu_device(1, "0,1") == "cuda:1"
    assert gpu_device(2, "") == "cuda:2"  # nothing visible: XGBoost's probe says so later


def test_lightgbm_trains_on_the_cpu_by_default_and_never_probes_opencl(
    prepared: ml.Prepared,
) -> None:
    lightgbm_device_problem.cache_clear()
    assert lightgbm_choice("cuda", "cpu") == learners.Choice("cpu")
    result = ml.train_trial("lightgbm", SMALL["lightgbm"], prepared, device="cuda")
    assert result.device == "cpu" and result.notes == ()
    # Nothing looked for a GPU learner: OpenCL is used only when asked for.
    assert lightgbm_device_problem.cache_info().misses == 0


def test_lightgbm_settings_map_to_its_device_types() -> None:
    assert learners.LIGHTGBM_DEVICE_TYPE == {"cpu": "cpu", "cuda": "cuda", "opencl": "gpu"}
    with pytest.raises(ValueError, match=r"models\.lightgbm\.device"):
        lightgbm_choice("cuda", "rocm")


def test_lightgbm_asked_for_a_gpu_on_a_cpu_worker_says_so() -> None:
    choice = lightgbm_choice("cpu", "opencl")
    assert choice.device == "cpu" and choice.note is not None and "no GPU" in choice.note


@pytest.mark.parametrize("setting", ["cuda", "opencl"])
def test_lightgbm_asked_for_a_gpu_learner_uses_it_or_falls_back_with_a_note(setting: str) -> None:
    device_type = learners.LIGHTGBM_DEVICE_TYPE[setting]
    choice = lightgbm_choice("cuda", setting)
    problem = lightgbm_device_problem(device_type)
    if problem is None:  # a build and machine that have it
        assert choice == learners.Choice(device_type)
    else:
        assert choice.device == "cpu"
        assert choice.note is not None and problem in choice.note and setting in choice.note


def test_xgboost_without_a_usable_gpu_trains_on_the_cpu_with_a_note(
    prepared: ml.Prepared,
) -> None:
    problem = xgboost_cuda_problem("cuda")
    if problem is None:
        pytest.skip("XGBoost has a usable GPU here: no fallback to see")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # XGBoost's own "No visible GPU" warning stays out
        result = ml.train_trial("xgboost", SMALL["xgboost"], prepared, device="cuda")
    assert result.device == "cpu" and result.native_params["device"] == "cpu"
    assert result.notes == (f"{problem}: trained on the CPU",)
    assert xgboost_choice("cpu") == learners.Choice("cpu")
