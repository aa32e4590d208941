"""The daemon benchmark still runs end to end (``--quick``), so it cannot rot unnoticed.

It starts real daemons (``sentinel run``) and workers; the test also checks that none of
them outlives the benchmark.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.bench.benchrun import leftovers, run_quick

ROWS = (
    "pickup: rename into inbox -> job.submitted, 1 s after the previous pickup",
    "pickup, 1 s after the previous pickup, p90",
    "pickup: rename into inbox -> job.submitted, 0.2 s after the previous pickup",
    "pickup, 0.2 s after the previous pickup, p90",
    "overhead per ~1 s trial, 1 worker",
    "overhead as share of the trial's wall time",
    "trials/s near-empty, random, 1 worker vs Optuna+SQLite",
    "trials/s near-empty, random, 1 worker vs Optuna+journal",
    "trials/s near-empty, tpe, 1 worker vs Optuna+SQLite",
    "trials/s near-empty, tpe, 1 worker vs Optuna+journal",
    "restart, 200 trials: process start -> next trial.started",
)
NOTES = (
    "note: pickup 1 s after",
    "note: pickup 0.2 s after",
    "note: overhead: ",
    "note: trial rate, random: per round",
    "note: trial rate, tpe: per round",
    "note: trial rate: train_seconds of a near-empty trial",
    "note: restart: ",
)


@pytest.mark.slow  # about 28 s on two cores; `make test-slow`
def test_quick_daemon_benchmark_prints_every_row_and_cleans_up(tmp_path: Path) -> None:
    run = run_quick("daemon.py", tmp_path, timeout=240)
    out = run.stdout
    assert "command :" in out and "machine : nproc=" in out
    table = run.table()
    assert len(table) == len(ROWS), out
    for row in ROWS:
        assert sum(line.startswith(row) for line in table) == 1, f"row {row!r} missing:\n{out}"
    for note in NOTES:
        assert any(line.startswith(note) for line in out.splitlines()), f"{note!r} missing"
    assert "Optuna+SQLite" in out and "Optuna journal load+ask" in out
    assert "summary: " in out and " targets passed" in out
    assert list(tmp_path.iterdir()) == [], "the benchmark left its work folder behind"
    assert leftovers(run) == [], "daemon or worker processes outlived the benchmark"
