"""ops/: the alert rules and the dashboard name only series the daemon serves, and each
alert has a promtool case that fires it and one that keeps it quiet.

``make ops-check`` runs promtool itself (check rules, test rules, check metrics on a live
scrape); these tests keep the files honest where promtool is not installed.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from sentinel_daemon.daemon.metrics import DaemonMetrics

OPS = Path(__file__).resolve().parents[2] / "ops"
RULES = OPS / "prometheus" / "sentinel-rules.yml"
RULE_TESTS = OPS / "prometheus" / "sentinel-rules.test.yml"
DASHBOARD = OPS / "grafana" / "sentinel-dashboard.json"
SERIES = re.compile(r"\b((?:sentinel|process)_[a-z_]+)")
#: Prometheus's own series, which the rules may use too.
PROMETHEUS_SERIES = {"up"}


#: The sample names of a family, by its type (a labelled family may have no sample yet).
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}


def served(tmp_path: Path) -> set[str]:
    """Every sample name the daemon's registry serves (``_bucket``, ``_total``... included)."""
    names: set[str] = set()
    for family in DaemonMetrics(tmp_path).registry.collect():
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ("",)))
    return names


def alerts() -> list[dict[str, Any]]:
    rules = yaml.safe_load(RULES.read_text())
    return [rule for group in rules["groups"] for rule in group["rules"]]


def dashboard_exprs() -> list[str]:
    dash = orjson.loads(DASHBOARD.read_bytes())
    return [t["expr"] for panel in dash["panels"] for t in panel.get("targets", [])]


def test_the_rules_name_only_series_the_daemon_serves(tmp_path: Path) -> None:
    names = served(tmp_path)
    used = {name for rule in alerts() for name in SERIES.findall(rule["expr"])}
    assert used, "no series found in the rules"
    assert used <= names, sorted(used - names)


def test_the_dashboard_names_only_served_series_and_shows_every_sentinel_family(
    tmp_path: Path,
) -> None:
    names = served(tmp_path)
    used = {name for expr in dashboard_exprs() for name in SERIES.findall(expr)}
    assert used <= names, sorted(used - names)
    families = {
        f.name for f in DaemonMetrics(tmp_path).registry.collect() if f.name.startswith("sentinel_")
    }
    shown = {re.sub(r"_(bucket|total|sum|count)$", "", name) for name in used}
    assert families <= shown, f"not on the dashboard: {sorted(families - shown)}"


def test_no_rule_or_panel_selects_on_job_except_the_scrape_target_itself() -> None:
    exprs = [rule["expr"] for rule in alerts()] + dashboard_exprs()
    for expr in exprs:
        for selector in re.findall(r"(\w+)\{([^}]*)\}", expr):
            name, matchers = selector
            if re.search(r"\bjob\b", matchers):
                assert name in PROMETHEUS_SERIES, expr  # the daemon's own series have no job


@pytest.mark.parametrize("rule", alerts(), ids=lambda r: r["alert"])
def test_each_alert_has_a_case_that_fires_it_and_one_that_keeps_it_quiet(
    rule: dict[str, Any],
) -> None:
    cases = yaml.safe_load(RULE_TESTS.read_text())
    assert cases["rule_files"] == [RULES.name]
    outcomes: dict[str, set[bool]] = defaultdict(set)
    for case in cases["tests"]:
        for check in case.get("alert_rule_test", []):
            outcomes[check["alertname"]].add(bool(check.get("exp_alerts")))
    assert outcomes[rule["alert"]] == {True, False}
    assert rule["labels"]["severity"] in ("critical", "warning")
    assert {"summary", "description", "runbook"} <= set(rule["annotations"])
