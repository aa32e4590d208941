"""The XGBoost matrices benchmark still runs end to end (``--quick``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
WAYS = (
    "per trial (DMatrix pair)",
    "kept, valid QuantileDMatrix (ref=)",
    "kept, valid DMatrix",
    "ml.train_trial, per trial",
    "ml.train_trial, DeviceData",
)


def test_quick_matrices_benchmark_prints_every_way() -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "matrices.py"), "--quick"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = proc.stdout.splitlines()
    for way in WAYS:
        row = next((line for line in lines if line.startswith(way)), None)
        assert row is not None and row.endswith("x"), proc.stdout
    assert "built its matrices 1 time(s), reused 1" in proc.stdout
