"""The ``sentinel-dispatch`` group of ``ops/prometheus/sentinel-rules.yml``: one rule per
reason the daemon blocks dispatching for, on series the daemon serves; ``promtool test
rules`` runs their tests where it is installed (``make ops-check`` installs it)."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml

from sentinel_daemon.daemon.blocking import REASONS
from sentinel_daemon.daemon.metrics import DaemonMetrics
from tests.conftest import REPO

RULES = REPO / "ops" / "prometheus" / "sentinel-rules.yml"
TESTS = REPO / "ops" / "prometheus" / "sentinel-rules.test.yml"


def rules() -> list[dict[str, object]]:
    doc = yaml.safe_load(RULES.read_text())
    return [r for g in doc["groups"] if g["name"] == "sentinel-dispatch" for r in g["rules"]]


def test_every_blocking_reason_has_one_alert_on_a_series_the_daemon_serves() -> None:
    served = {family.name for family in DaemonMetrics().registry.collect()}
    reasons = []
    for rule in rules():
        expr = str(rule["expr"])
        names = set(re.findall(r"\b(sentinel_[a-z_]+)", expr))
        assert names and names <= served, (rule["alert"], names - served)
        reasons += re.findall(r'reason="([a-z_]+)"', expr)
        assert {"summary", "description", "runbook"} <= set(rule["annotations"])  # type: ignore[arg-type]
    assert sorted(reasons) == sorted(REASONS)


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_the_rules_pass_their_promtool_tests() -> None:
    run = subprocess.run(
        ["promtool", "test", "rules", TESTS.name],
        cwd=TESTS.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stdout + run.stderr
