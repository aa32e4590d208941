"""`make demo` must keep working: run its script on a tiny data set."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson

from sentinel_daemon.log.segments import LogScan
from sentinel_daemon.ml.artifacts import load_model

REPO = Path(__file__).resolve().parents[2]


def test_the_demo_runs_a_job_end_to_end_and_promotes_a_verified_model(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "demo.py"),
            "--dir",
            str(tmp_path),
            "--rows",
            "4000",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    log = (tmp_path / "daemon.log").read_text() if (tmp_path / "daemon.log").exists() else ""
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:] + log[-3000:]
    assert "ok: " in result.stdout and "leaderboard" in result.stdout
    state = tmp_path / "state"
    types = [r.payload["type"] for r in LogScan(state / "events")]
    assert types.count("trial.saved") + types.count("trial.pruned") == 10  # 5 per model
    assert "job.completed" in types and "model.promoted" in types
    assert types[-1] == "daemon.stopped"
    (card_path,) = state.glob("jobs/*/best/model-card.json")
    card = orjson.loads(card_path.read_bytes())
    (model_path,) = [p for p in card_path.parent.iterdir() if p.name.startswith("model.")]
    loaded = load_model(model_path, card["sha256"])  # the promoted file passes its checksum
    assert loaded.model_kind == card["model"]
    assert 0.5 < card["test"]["roc_auc"] <= 1.0
