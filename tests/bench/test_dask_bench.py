"""The local-vs-dask benchmark still runs end to end (``--quick``), so it cannot rot unnoticed.

It starts real daemons, local workers and a Dask ``LocalCluster``; the test also checks
that none of their processes outlives the benchmark (each carries a tag in its
environment, inherited from the benchmark).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.bench.benchrun import leftovers, run_quick

pytest.importorskip("distributed")

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


@pytest.mark.slow  # about 17 s on two cores; `make test-slow`
def test_quick_dask_benchmark_prints_every_row_and_cleans_up(tmp_path: Path) -> None:
    run = run_quick("dask.py", tmp_path, timeout=120)
    out = run.stdout
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
    assert leftovers(run) == [], "daemon, worker or cluster processes outlived the benchmark"
