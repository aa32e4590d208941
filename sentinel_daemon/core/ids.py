"""Identifiers of the domain: jobs, trials and workers, and the form a job id must have."""

from __future__ import annotations

import re
from typing import NewType

from sentinel_daemon.errors import BadJobId

JobId = NewType("JobId", str)
TrialNumber = NewType("TrialNumber", int)
WorkerId = NewType("WorkerId", str)

#: Job ids name folders and may hold dots; a command id (``<job>.<trial>.<attempt>``) is
#: split from the right (see :func:`sentinel_daemon.queue.messages.split_command_id`).
JOB_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
_JOB_ID = re.compile(JOB_ID_PATTERN)


def check_job_id(job_id: str) -> str:
    """``job_id`` if it is a valid job id (so safe in a file name); else :class:`BadJobId`."""
    if not _JOB_ID.fullmatch(job_id):
        raise BadJobId(job_id)
    return job_id
