"""The event-log benchmark still runs end to end (``--quick``), so it cannot rot unnoticed."""

from __future__ import annotations

from pathlib import Path

from tests.bench.benchrun import run_quick

ROWS = (
    "durable appends, 1 record/fsync (1",
    "group commit of 10 (1",
    "group commit of 100 (1",
    "durable appends, 1 record/fsync (4",
    "group commit of 10 (4",
    "group commit of 100 (4",
    "read, verify, parse",
    "+ events + fold*",
    "scrub 2,000 records: checksums, seq chain",
    "start-up with snapshot, 500 + 100 tail",
    "start-up with snapshot, 1,000 + 100 tail",
    "start-up with snapshot, 2,000 + 100 tail",
)


def test_quick_benchmark_prints_every_row_and_cleans_up(tmp_path: Path) -> None:
    run = run_quick("eventlog.py", tmp_path, timeout=120)
    out = run.stdout
    assert "command :" in out and "machine : nproc=" in out
    table = run.table()
    assert len(table) == len(ROWS), out
    for row in ROWS:
        assert sum(row in line for line in table) == 1, f"row {row!r} missing from:\n{out}"
    assert "summary: " in out and " targets passed" in out
    assert list(tmp_path.iterdir()) == [], "the benchmark left its work folder behind"
