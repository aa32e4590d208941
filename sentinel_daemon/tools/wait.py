"""``sentinel wait``: block until a job ends, with a progress line on a terminal."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sentinel_daemon.core.ids import check_job_id
from sentinel_daemon.core.state import (
    JobStatus,
)
from sentinel_daemon.log.store import read_state
from sentinel_daemon.tools.status import _stage_cell, _value, job_summary


def progress_line(job_id: str, job: dict[str, Any] | None, width: int = 80) -> str:
    """The one-line progress bar ``sentinel wait`` redraws on a terminal."""
    if job is None:
        return f"{job_id}: not in the log yet (waiting for the daemon to accept it)"[:width]
    ended, total = job["trials_ended"], job["trials_total"]
    bar = ""
    if total:
        filled = min(20, 20 * ended // total)
        bar = f"[{'#' * filled}{'.' * (20 - filled)}] "
    stage = _stage_cell(job)
    text = (
        f"{job_id} {job['status']} {stage} {bar}{ended}/{total or '?'} trials "
        f"best {_value(job['best_value'])}"
    )
    return text[:width]


def wait_for_job(
    state_dir: Path,
    job_id: str,
    *,
    timeout: float | None,
    poll_s: float = 0.2,
    on_poll: Callable[[dict[str, Any] | None], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[bool, dict[str, Any] | None]:
    """Poll the state until ``job_id`` has ended or ``timeout`` s pass.

    Returns whether it ended, and its last summary (``None`` while not in the log: it may
    still be waiting in the inbox). ``on_poll`` sees every summary (for a progress bar).
    """
    check_job_id(job_id)
    deadline = None if timeout is None else clock() + timeout
    while True:
        job = read_state(state_dir).jobs.get(job_id)
        summary = None if job is None else job_summary(job)
        if on_poll is not None:
            on_poll(summary)
        if job is not None and job.status is not JobStatus.RUNNING:
            return True, summary
        if deadline is not None:
            left = deadline - clock()
            if left <= 0:
                return False, summary
            sleep(min(poll_s, left))
        else:
            sleep(poll_s)


def terminal_width() -> int:
    return shutil.get_terminal_size((80, 24)).columns
