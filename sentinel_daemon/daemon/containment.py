"""Faults contained where they arise (DESIGN.md, Rules): what one job owns, and what it does not.

Anything that goes wrong inside one job (building its actor from the recorded spec, a
stage's outcome, Optuna's ask/tell, an answer, the gate, promotion, writing ``best/``)
fails that job, with the error recorded in ``job.failed``; the daemon goes on with the
others. The :class:`~sentinel_daemon.daemon.committer.Committer` is the job boundary: it
runs each job's work through :func:`owned_by_job` and records the failure.

What no job owns escapes it (:func:`owned_by_job` is False): the event log (every
:class:`~sentinel_daemon.errors.LogError`: a failed append or fsync), the state directory's
file system (full, over quota, read-only, an I/O error: the core loop degrades and retries
the whole turn; a failed fsync stays fatal), the host (no memory, no process slots), and
anything that is not an ``Exception`` (a signal's ``KeyboardInterrupt``, ``SystemExit``).
"""

from __future__ import annotations

import errno

import structlog

from sentinel_daemon.core.events import JobFailed
from sentinel_daemon.core.ids import JobId
from sentinel_daemon.errors import LogError
from sentinel_daemon.printable import json_safe

log = structlog.get_logger(__name__)

#: Errors of the host or of the state directory's file system, never of one job.
HOST_ERRNOS = frozenset(
    {
        errno.ENOSPC,
        errno.EDQUOT,
        errno.EROFS,
        errno.EIO,
        errno.ENOMEM,
        errno.EMFILE,
        errno.ENFILE,
        errno.EAGAIN,
    }
)
#: ``job.failed``'s reason at most (the error's text is cut).
REASON_CHARS = 2000


def owned_by_job(exc: BaseException) -> bool:
    """Whether ``exc``, raised by one job's work, is that job's fault (see the module doc)."""
    if not isinstance(exc, Exception) or isinstance(exc, LogError | MemoryError):
        return False
    return not (isinstance(exc, OSError) and exc.errno in HOST_ERRNOS)


def job_failed(job_id: str, where: str, exc: BaseException) -> JobFailed:
    """``job.failed`` for ``exc`` raised while ``where`` (logged with its traceback)."""
    error = f"{type(exc).__name__}: {exc}"
    log.error(
        "job.contained",
        job_id=job_id,
        where=where,
        error=error,
        action="the job fails; the daemon and the other jobs go on",
        exc_info=exc,
    )
    reason = json_safe(f"{where} failed: {error}")[:REASON_CHARS]
    return JobFailed(job_id=JobId(job_id), reason=reason)


__all__ = ["HOST_ERRNOS", "job_failed", "owned_by_job"]
