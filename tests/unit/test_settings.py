from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sentinel_daemon.errors import ConfigError
from sentinel_daemon.settings import defaults_as_yaml_data, load_settings

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
