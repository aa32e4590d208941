"""Job reports, written after a job ends by a child process, one at a time."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)


class ReportRunner:
    """Writes ended jobs' reports, one child process at a time (``sentinel report JOB``).

    A report reloads the test split and draws charts: seconds of work and memory that stay
    out of the daemon's loop. Not recorded in the log: a report can always be written again,
    and one missing at start-up is queued again.
    """

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.waiting: list[str] = []
        self.proc: subprocess.Popen[bytes] | None = None
        self.job: str | None = None

    def add(self, job_id: str) -> None:
        if job_id not in self.waiting and job_id != self.job:
            self.waiting.append(job_id)

    def poll(self) -> None:
        if self.proc is not None:
            code = self.proc.poll()
            if code is None:
                return
            if code != 0:
                log.warning("daemon.report_failed", job=self.job, exit_code=code)
            else:
                log.info("daemon.report_written", job=self.job)
            self.proc = self.job = None
        if self.waiting:
            self.job = self.waiting.pop(0)
            # Nice: a report must never slow the trials down on a small host.
            argv = ["nice", "-n", "10"] if shutil.which("nice") else []
            argv += [sys.executable, "-m", "sentinel_daemon.cli", "report", self.job]
            argv += ["--state-dir", str(self.state_dir), "--force"]
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True
            )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = self.job = None
