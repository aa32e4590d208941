"""The queue benchmark still runs end to end (``--quick``), so it cannot rot unnoticed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench" / "queuedir.py"

ROWS = (
    "bare maildir hand-off",
    "put alone",
    "bare round trip",
    "round trip put+claim+post+results+ack+finish",
    "progress post (Outbox.send Progress, no fsync)",
)


def test_quick_queue_benchmark_prints_every_row_and_cleans_up(tmp_path: Path) -> None:
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
    assert "MEASURED.md anchor 1,100-1,300/s" in out
    table = [line for line in out.splitlines() if line.endswith(("  PASS", "  FAIL", "  info"))]
    assert len(table) == len(ROWS), out
    for row in ROWS:
        assert sum(line.startswith(row) for line in table) == 1, f"row {row!r} missing:\n{out}"
    assert "note: round trip per command: put " in out
    assert "summary: " in out and " targets passed" in out
    assert list(tmp_path.iterdir()) == [], "the benchmark left its work folder behind"
