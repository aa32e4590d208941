"""Requests to the daemon: the files operators (``sentinel cancel``) drop into ``STATE/control/``.

``cancel.<job>`` records ``job.cancelled`` for a running job (its trials are then withdrawn,
as for any job that ends early) and is removed; a request for no running job is logged and
removed. Crash tests only (``SENTINEL_TEST_FAULTS=1``): ``test-stall.<seconds>`` holds the
core loop still, as a stuck loop would be.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path

import structlog

from sentinel_daemon.core.events import Event, JobCancelled
from sentinel_daemon.core.state import JobStatus, State
from sentinel_daemon.layout import CANCEL_PREFIX
from sentinel_daemon.worker.faults import FAULTS_ENV

log = structlog.get_logger(__name__)

#: With SENTINEL_TEST_FAULTS=1, control/test-stall.<seconds> holds the loop still (tests).
STALL_PREFIX = "test-stall."
#: The longest a test stall may hold the loop.
MAX_STALL_S = 60.0


def handle_requests(folder: Path, state: State, commit: Callable[[list[Event]], object]) -> None:
    """Act on every request in ``folder``; each is removed once its event is recorded."""
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return
    for name in names:
        if name.startswith(STALL_PREFIX) and os.environ.get(FAULTS_ENV) == "1":
            _test_stall(folder / name)
        if not name.startswith(CANCEL_PREFIX):
            continue
        job_id = name[len(CANCEL_PREFIX) :]
        job = state.jobs.get(job_id)
        if job is not None and job.status is JobStatus.RUNNING:
            commit([JobCancelled(job_id=job.job_id, reason="cancelled by an operator")])
        else:
            log.warning("daemon.cancel_ignored", job=job_id, reason="no such running job")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(folder / name)


def _test_stall(path: Path) -> None:
    """Crash tests only: hold the core loop still, as a stuck loop would be."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
        seconds = float(path.name[len(STALL_PREFIX) :])
        log.warning("daemon.test_stall", seconds=seconds)
        time.sleep(min(seconds, MAX_STALL_S))
