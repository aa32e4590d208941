"""The project's exception tree.

Every error an operator may see derives from :class:`SentinelError` and carries its
facts as attributes, so callers branch on data, not on message text. Messages name the
file, the field and what to do next.
"""

from __future__ import annotations

from pathlib import Path


class SentinelError(Exception):
    """Root of every error raised on purpose by Sentinel."""


class ConfigError(SentinelError):
    """A setting is missing, mistyped or out of range."""

    def __init__(self, source: str, key: str, reason: str) -> None:
        self.source = source
        self.key = key
        self.reason = reason
        super().__init__(f"{source}: setting {key!r}: {reason}")


class StateDirLocked(SentinelError):
    """Another process already holds the state directory's lock."""

    def __init__(self, state_dir: Path, holder_pid: int | None) -> None:
        self.state_dir = state_dir
        self.holder_pid = holder_pid
        who = f"pid {holder_pid}" if holder_pid else "another process"
        super().__init__(
            f"{state_dir} is locked by {who}: only one daemon may write a state directory. "
            f"Stop that process (or point --state-dir elsewhere) and start again."
        )


class StateDirUnusable(SentinelError):
    """The state directory cannot be used (made, listed or written): the daemon stops."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(
            f"state directory {path} cannot be used: {reason}. It must be a folder the "
            f"daemon's user owns and can write, on a file system with space (`sentinel "
            f"doctor` checks both); fix it and start again"
        )


class LogError(SentinelError):
    """Base of event-log errors."""


class LogCorrupt(LogError):
    """A damaged record that is not the log's torn tail: start-up must stop."""

    def __init__(self, segment: Path, line: int, reason: str) -> None:
        self.segment = segment
        self.line = line
        self.reason = reason
        super().__init__(
            f"event log corrupt at {segment} line {line}: {reason}. "
            f"Records after it are intact, so this is not a torn write. "
            f"Inspect with `sentinel log verify`; `sentinel log repair --truncate-corrupt` "
            f"cuts the log at this record after a backup (the records after it are lost)."
        )


class LogGap(LogError):
    """Sequence numbers are not contiguous (a missing or reordered segment)."""

    def __init__(self, segment: Path, line: int, expected: int, found: int) -> None:
        self.segment = segment
        self.line = line
        self.expected = expected
        self.found = found
        super().__init__(
            f"event log gap at {segment} line {line}: expected seq {expected}, found {found}. "
            f"A segment is missing or out of order; restore it from backup. "
            f"`sentinel log verify` lists every segment and its seq range."
        )


class LogUnreadable(LogError):
    """Part of the log cannot be read as one: ``events/`` is not a folder, a segment is not
    a regular file (a folder, a link), or reading it fails (an I/O error)."""

    def __init__(self, path: Path, reason: str, remedy: str) -> None:
        self.path = path
        self.reason = reason
        self.remedy = remedy
        super().__init__(f"event log {path}: {reason}. {remedy}")


class LogFsyncFailed(LogError):
    """fsync failed: the page cache may have dropped our writes, so nothing is trusted."""

    def __init__(self, path: Path, errno_: int | None, reason: str) -> None:
        self.path = path
        self.errno = errno_
        super().__init__(
            f"fsync of {path} failed ({reason}): exiting so that a restart replays the log "
            f"from disk; no unsynced record was acknowledged."
        )


class EventDecodeError(LogError):
    """A record has a valid checksum but does not decode to a known event."""

    def __init__(self, seq: int, type_: str, reason: str) -> None:
        self.seq = seq
        self.type = type_
        self.reason = reason
        super().__init__(
            f"event seq {seq} of type {type_!r} cannot be decoded: {reason}. "
            f"Was it written by a newer Sentinel? Upgrade, or restore the older log."
        )


class InboxError(SentinelError):
    """Base of inbox errors."""


class OperatorError(SentinelError):
    """An operator command cannot do what was asked; the message says what to do instead."""


class StateDirMissing(OperatorError):
    """The state directory a command was pointed at does not exist (only ``run`` creates it)."""

    def __init__(self, state_dir: Path, source: str, *, not_a_dir: bool = False) -> None:
        self.state_dir = state_dir
        self.source = source
        what = "is not a directory" if not_a_dir else "no such state directory"
        super().__init__(
            f"{state_dir}: {what} (from {source}); check the path, or start the daemon on "
            f"it first (`sentinel run --state-dir {state_dir}` creates it)"
        )


class BadJobId(OperatorError):
    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(
            f"{job_id!r} is not a job id (letters, digits, '.', '_' and '-', up to 128, "
            f"starting with a letter or digit); `sentinel status` lists the jobs"
        )


class UnknownJob(OperatorError):
    def __init__(self, job_id: str, state_dir: Path) -> None:
        self.job_id = job_id
        self.state_dir = state_dir
        super().__init__(
            f"no job {job_id!r} in the event log of {state_dir}; check the id with "
            f"`sentinel status` (a job just submitted appears once the daemon has accepted it)"
        )


class AmbiguousJob(OperatorError):
    """A job name given where an id is expected, and several jobs have that name."""

    def __init__(self, name: str, job_ids: list[str], state_dir: Path) -> None:
        self.job_id = name
        self.job_ids = job_ids
        self.state_dir = state_dir
        listed = ", ".join(job_ids[:5]) + (
            f" and {len(job_ids) - 5} more" if len(job_ids) > 5 else ""
        )
        super().__init__(
            f"{len(job_ids)} jobs in the event log of {state_dir} are named {name!r} "
            f"({listed}); give the job id instead (`sentinel status` lists them)"
        )


class JobAlreadyEnded(OperatorError):
    def __init__(self, job_id: str, status: str, reason: str) -> None:
        self.job_id = job_id
        self.status = status
        self.reason = reason
        why = f" ({reason})" if reason else ""
        super().__init__(f"job {job_id} has already ended: {status}{why}; nothing to cancel")
