"""The queue benchmark still runs end to end (``--quick``), so it cannot rot unnoticed."""

from __future__ import annotations

from pathlib import Path

from tests.bench.benchrun import run_quick

ROWS = (
    "bare maildir hand-off",
    "put alone",
    "bare round trip",
    "round trip put+claim+post+results+ack+finish",
    "progress post (Outbox.send Progress, no fsync)",
)


def test_quick_queue_benchmark_prints_every_row_and_cleans_up(tmp_path: Path) -> None:
    run = run_quick("queuedir.py", tmp_path, timeout=120)
    out = run.stdout
    assert "command :" in out and "machine : nproc=" in out
    assert "MEASURED.md anchor 1,100-1,300/s" in out
    table = run.table()
    assert len(table) == len(ROWS), out
    for row in ROWS:
        assert sum(line.startswith(row) for line in table) == 1, f"row {row!r} missing:\n{out}"
    assert "note: round trip per command: put " in out
    assert "summary: " in out and " targets passed" in out
    assert list(tmp_path.iterdir()) == [], "the benchmark left its work folder behind"
