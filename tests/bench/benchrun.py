"""Run a benchmark's ``--quick`` mode as a smoke test, and find what it left running.

Each run carries a fresh tag in its environment (not ``SENTINEL_*``: the benchmarks strip
those for the daemons they start); every process the benchmark started inherits it, so
:func:`leftovers` finds any daemon, worker or cluster process that outlived it.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[2]
TAG = "BENCH_SMOKE_TAG"


@dataclass(frozen=True)
class QuickRun:
    """One finished ``--quick`` run: its output, and the tag its processes carry."""

    stdout: str
    tag: str

    @property
    def lines(self) -> list[str]:
        return self.stdout.splitlines()

    def table(self) -> list[str]:
        """The rows that end in a verdict (``PASS``, ``FAIL`` or ``info``)."""
        return [line for line in self.lines if line.endswith(("  PASS", "  FAIL", "  info"))]


def run_quick(script: str, work: Path, timeout: float) -> QuickRun:
    """Run ``bench/<script> --quick --dir work``; fail the test on a non-zero exit."""
    tag = uuid.uuid4().hex
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / script), "--quick", "--dir", str(work)],
        cwd=REPO,
        env={**os.environ, TAG: tag},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return QuickRun(proc.stdout, tag)


def leftovers(run: QuickRun) -> list[str]:
    """Processes still running that the benchmark started (they carry its tag)."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        with contextlib.suppress(psutil.Error):
            if proc.environ().get(TAG) == run.tag:
                found.append(f"{proc.info['pid']}: {' '.join(proc.info['cmdline'] or [])}")
    return found
