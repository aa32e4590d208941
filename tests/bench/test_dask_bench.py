"""The local-vs-dask benchmark still runs end to end (``--quick``), so it cannot rot unnoticed.

It starts real daemons, local workers and a Dask ``LocalCluster``; the test also checks
that none of their processes outlives the benchmark (each carries a tag in its
environment, inherited from the benchmark).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
from pathlib import Path

import psutil
import pytest

pytest.importorskip("distributed")

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench" / "dask.py"
TAG = "BENCH_DASK_SMOKE_TAG"  # not SENTINEL_*: the benchmark strips those for daemons

ROWS = (
    "trials/s over the search stage",
    "overhead per trial, median",
    "overhead per trial, p90",
    "first-trial latency, job.submitted -> trial.saved",
    "train+score per trial, median (reference)",
)
NOTES = (
    "note: job: ",
    "note: local: trials/s per round",
    "note: local: first trial: ",
    "note: dask: trials/s per round",
    "note: dask: first trial: ",
)


def _leftovers(tag: str) -> list[str]:
    """Processes still running with ``tag`` in their environment."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        with contextlib.suppress(psutil.Error):
            if proc.environ().get(TAG) == tag:
                found.append(f"{proc.info['pid']}: {' '.join(proc.info['cmdline'] or [])}")
    return found


def test_quick_dask_benchmark_prints_every_row_and_cleans_up(tmp_path: Path) -> None:
    tag = uuid.uuid4().hex
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--dir", str(tmp_path)],
        cwd=REPO,
        env={**os.environ, TAG: tag},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = proc.stdout
    assert "command :" in out and "machine : nproc=" in out
    assert "distributed " in out and "xgboost " in out
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("what "))
    assert lines[header].split() == ["what", "local", "dask", "dask/local", "better"]
    table = lines[header + 2 : header + 2 + len(ROWS)]
    for row, line in zip(ROWS, table, strict=True):
        assert line.startswith(row), f"row {row!r} missing:\n{out}"
        assert line.split()[-2].endswith("x"), f"no ratio in {line!r}"
    for note in NOTES:
        assert any(line.startswith(note) for line in lines), f"{note!r} missing:\n{out}"
    assert "worker.trial_started" not in out, "the Dask workers' log lines reached stdout"
    assert "summary: " in out and "wall time" in out
    assert list(tmp_path.iterdir()) == [], "the benchmark left its work folder behind"
    assert _leftovers(tag) == [], "daemon, worker or cluster processes outlived the benchmark"
