"""``sentinel cancel``: ask the daemon to cancel a running job (``control/cancel.<job>``)."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

import orjson

from sentinel_daemon.core.ids import check_job_id
from sentinel_daemon.core.state import (
    JobStatus,
    State,
)
from sentinel_daemon.errors import JobAlreadyEnded
from sentinel_daemon.fsutil import atomic_write_bytes
from sentinel_daemon.layout import CONTROL_DIR
from sentinel_daemon.log.records import format_ts
from sentinel_daemon.tools.status import find_job
from sentinel_daemon.tools.submit import _ensure_dir


def cancel_request_path(state_dir: Path, job_id: str) -> Path:
    """Where ``sentinel cancel`` asks the daemon to cancel ``job_id``."""
    return Path(state_dir) / CONTROL_DIR / f"cancel.{check_job_id(job_id)}"


def request_cancel(
    state_dir: Path, job_id: str, state: State, *, now: datetime, pid: int | None = None
) -> Path:
    """Ask the daemon to cancel ``job_id`` (running, per ``state``); return the request file."""
    job = find_job(state, job_id, state_dir)
    if job.status is not JobStatus.RUNNING:
        raise JobAlreadyEnded(job.job_id, job.status, job.reason)
    path = cancel_request_path(state_dir, job_id)
    _ensure_dir(path.parent)
    body = {
        "job_id": job_id,
        "requested_at": format_ts(now),
        "pid": os.getpid() if pid is None else pid,
    }
    atomic_write_bytes(path, orjson.dumps(body) + b"\n")
    return path
