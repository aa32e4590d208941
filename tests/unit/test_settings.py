from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from sentinel_daemon.errors import ConfigError
from sentinel_daemon.settings import (
    Settings,
    defaults_as_yaml_data,
    exported,
    load_settings,
    settings_digest,
    settings_environment,
)

REPO = Path(__file__).resolve().parents[2]


def test_default_yaml_lists_every_setting_with_the_code_default() -> None:
    data = yaml.safe_load((REPO / "config" / "default.yaml").read_text())
    assert data == defaults_as_yaml_data()


def test_a_config_file_is_layered_over_the_defaults(tmp_path: Path) -> None:
    cfg = tmp_path / "s.yaml"
    cfg.write_text("eventlog:\n  snapshot_every: 500\n")
    settings = load_settings(cfg)
    assert settings.eventlog.snapshot_every == 500
    assert settings.eventlog.segment_bytes == 64 << 20  # untouched keys keep defaults


def test_environment_overrides_the_file_for_nested_and_top_level_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tmp_path / "s.yaml"
    cfg.write_text("eventlog:\n  snapshot_every: 500\nstate_dir: /from/file\n")
    monkeypatch.setenv("SENTINEL_EVENTLOG__SNAPSHOT_EVERY", "700")
    monkeypatch.setenv("SENTINEL_STATE_DIR", "/from/env")
    settings = load_settings(cfg)
    assert settings.eventlog.snapshot_every == 700
    assert settings.state_dir == Path("/from/env")


def test_a_bad_value_names_the_key_and_its_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tmp_path / "s.yaml"
    cfg.write_text("eventlog:\n  segment_bytes: tiny\n")
    with pytest.raises(ConfigError) as err:
        load_settings(cfg)
    assert err.value.key == "eventlog.segment_bytes" and str(cfg) in str(err.value)
    monkeypatch.setenv("SENTINEL_LOGGING__LEVEL", "loud")
    with pytest.raises(ConfigError) as err:
        load_settings(None)
    assert "SENTINEL_LOGGING__LEVEL" in str(err.value) and err.value.key == "logging.level"


def test_unknown_keys_are_rejected(tmp_path: Path) -> None:
    cfg = tmp_path / "s.yaml"
    cfg.write_text("eventlog:\n  segmnet_bytes: 1\n")
    with pytest.raises(ConfigError, match="segmnet_bytes"):
        load_settings(cfg)


def test_yaml_tags_that_build_objects_are_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "s.yaml"
    cfg.write_text("state_dir: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(cfg)


def test_a_file_that_is_not_a_mapping_is_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "s.yaml"
    cfg.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_settings(cfg)


#: A value other than the default for every setting: a test below fails when a setting is
#: added without one here, so that the next test also covers it.
EVERY_SETTING_CHANGED: dict[str, Any] = {
    "state_dir": "/srv/sentinel-state",
    "data_roots": ["/srv/data", "/mnt/more data"],
    "logging": {"level": "warning", "format": "console"},
    "eventlog": {"segment_bytes": 1 << 20, "snapshot_every": 500},
    "inbox": {"rescan_seconds": 2.5, "max_job_bytes": 4096, "settle_seconds": 0.25},
    "queue": {"poll_interval_s": 0.02, "tmp_stale_s": 30.0, "seq_block": 7},
    "workers": {
        "count": 3,
        "gpus": [0, 2],
        "per_gpu": 3,
        "cpu": 4,
        "heartbeat_s": 0.5,
        "heartbeat_timeout_s": 12.0,
        "restart_backoff_min_s": 0.2,
        "restart_backoff_max_s": 4.0,
    },
    "trials": {"max_attempts": 5, "report_every": 3, "timeout_s": 3600.0},
    "shutdown": {"grace_s": 7.0, "worker_grace_s": 3.0},
    "metrics": {"enabled": False, "address": "0.0.0.0", "port": 9999},
    "resources": {
        "min_free_host_bytes": 1 << 30,
        "min_free_gpu_bytes": 1 << 28,
        "min_free_disk_bytes": 1 << 26,
        "worker_memory_max_bytes": 1 << 33,
        "sample_every_s": 0.5,
    },
    "dispatch": {
        "backend": "dask",
        "scheduler": "tcp://10.0.0.5:8786",
        "resource": "TPU",
        "cpu_resource": "CORES",
        "slots": 9,
        "worker_state_dir": "/mnt/state",
        "connect_timeout_s": 3.0,
        "retry_s": 1.5,
    },
    "models": {"xgboost": {"device": "cpu"}, "lightgbm": {"device": "cuda"}},
}


def _leaves(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_leaves(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): data}


def test_the_changed_settings_change_every_setting() -> None:
    changed = _leaves(Settings(**EVERY_SETTING_CHANGED).model_dump(mode="json"))
    defaults = _leaves(defaults_as_yaml_data())
    assert changed.keys() == defaults.keys()
    same = sorted(k for k in defaults if changed[k] == defaults[k])
    assert not same, f"give these a non-default value in EVERY_SETTING_CHANGED: {same}"


def test_a_child_loading_settings_under_the_exported_environment_gets_every_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(**EVERY_SETTING_CHANGED)
    cfg = tmp_path / "s.yaml"
    cfg.write_text("queue:\n  seq_block: 3\n")  # the parent's file: folded in, not re-read
    inherited = {
        "PATH": "/usr/bin",
        "SENTINEL_CONFIG": str(cfg),
        "SENTINEL_QUEUE__SEQ_BLOCK": "11",
        "sentinel_logging__level": "debug",
        "SENTINEL_TEST_FAULTS": "1",
        "JOURNAL_STREAM": "8:1234",
    }
    env = settings_environment(settings, inherited)
    for name in [k for k in os.environ if k.upper().startswith("SENTINEL_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert load_settings(None) == settings
    assert settings_digest(load_settings(None)) == settings_digest(settings)
    assert {"PATH", "SENTINEL_TEST_FAULTS", "JOURNAL_STREAM"} <= env.keys()
    assert not {"SENTINEL_CONFIG", "SENTINEL_QUEUE__SEQ_BLOCK", "sentinel_logging__level"} & set(
        env
    )


def test_exported_settings_are_in_the_environment_only_while_inside(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = Settings(**EVERY_SETTING_CHANGED)
    monkeypatch.setenv("SENTINEL_QUEUE__SEQ_BLOCK", "11")
    monkeypatch.delenv("SENTINEL_QUEUE", raising=False)
    before = dict(os.environ)
    with exported(settings):
        assert "SENTINEL_QUEUE__SEQ_BLOCK" not in os.environ
        assert '"seq_block":7' in os.environ["SENTINEL_QUEUE"]
        assert load_settings(None) == settings
    assert dict(os.environ) == before


def test_leaving_exported_settings_keeps_what_others_set_meanwhile() -> None:
    environ = {"PATH": "/bin", "SENTINEL_QUEUE__SEQ_BLOCK": "11"}
    with exported(Settings(), environ):
        environ["OMP_NUM_THREADS"] = "2"  # a library, say, while the daemon ran
        environ["SENTINEL_LOGGING"] = '{"level":"debug"}'  # replaced by someone: theirs now
    assert environ == {
        "PATH": "/bin",
        "SENTINEL_QUEUE__SEQ_BLOCK": "11",
        "OMP_NUM_THREADS": "2",
        "SENTINEL_LOGGING": '{"level":"debug"}',
    }


def test_model_devices_and_worker_gpus_come_from_nested_environment_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SENTINEL_MODELS__LIGHTGBM__DEVICE", "opencl")
    monkeypatch.setenv("SENTINEL_WORKERS__GPUS", "[0]")
    settings = load_settings(None)
    assert settings.models.lightgbm.device == "opencl"
    assert settings.models.xgboost.device == "gpu"
    assert settings.workers.gpus == [0]


def test_an_unknown_model_device_is_refused_naming_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "s.yaml"
    cfg.write_text("models:\n  lightgbm:\n    device: gpu\n")
    with pytest.raises(ConfigError) as err:
        load_settings(cfg)
    assert err.value.key == "models.lightgbm.device"


def test_the_two_dask_resources_must_differ(tmp_path: Path) -> None:
    cfg = tmp_path / "s.yaml"
    cfg.write_text("dispatch:\n  cpu_resource: GPU\n")
    with pytest.raises(ConfigError, match="must differ"):
        load_settings(cfg)
