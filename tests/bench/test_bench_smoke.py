"""The event-log benchmark still runs end to end (``--quick``), so it cannot rot unnoticed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench" / "eventlog.py"

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
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--dir", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = proc.stdout
    assert "command :" in out and "machine : nproc=" in out
    table = [line for line in out.splitlines() if line.endswith(("  PASS", "  FAIL", "  info"))]
    assert len(table) == len(ROWS), out
    for row in ROWS:
        assert sum(row in line for line in table) == 1, f"row {row!r} missing from:\n{out}"
    assert "summary: " in out and " targets passed" in out
    assert list(tmp_path.iterdir()) == [], "the benchmark left its work folder behind"
