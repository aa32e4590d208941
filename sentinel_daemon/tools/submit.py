"""``sentinel submit``: validate a job file as the daemon would, then place it in the inbox.

Besides validating, it refuses a duplicate: a file whose content is already waiting in
``inbox/`` or ``claimed/``, or whose job id is already in the event log (the daemon would
reject it as "already submitted"). Two submitters racing with the same file take turns
under an ``flock`` on the inbox folder itself (no lock file to leave behind), so the second
one sees the first one's file and is told it is a duplicate. A file dropped by hand takes
no lock; the daemon still rejects a duplicate of it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sentinel_daemon.core.jobspec import JobSpecError, ParsedJob
from sentinel_daemon.errors import InboxError, LogError, OperatorError, StateDirMissing
from sentinel_daemon.fsutil import fsync_dir
from sentinel_daemon.jobfile import DEFAULT_MAX_BYTES, parse_job_file, read_job_bytes
from sentinel_daemon.layout import (
    CLAIMED_DIR,
    INBOX_DIR,
    JOB_SUFFIXES,
    MAX_JOB_NAME_BYTES,
    inbox_name_problem,
    is_job_name,
)
from sentinel_daemon.log.store import read_state
from sentinel_daemon.printable import printable
from sentinel_daemon.settings import Settings
from sentinel_daemon.tools.liveness import Liveness, daemon_liveness
from sentinel_daemon.tools.status import _health


class DuplicateJob(OperatorError):
    """The same job file is already waiting to be read, or its job was already submitted."""

    def __init__(self, path: Path, job_id: str, where: str) -> None:
        self.path = path
        self.job_id = job_id
        self.where = where
        super().__init__(
            f"{path}: duplicate: job {job_id} is already {where}; nothing was submitted. "
            f"To run it again, change the file (or its name: field)"
        )


def submit_file(
    src: Path,
    inbox_dir: Path,
    *,
    expected_sha256: str | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Path:
    """Place a copy of ``src`` in the inbox atomically and durably; return its path there.

    ``src`` is read once, like :func:`~sentinel_daemon.jobfile.parse_job_file` reads it
    (no links, FIFOs or devices; at most ``max_bytes``). Pass the sha256 that validation
    saw as ``expected_sha256``: if the file changed since, :class:`InboxError` is raised
    instead of submitting bytes other than the ones validated (the job id printed to the
    operator is derived from that hash).

    The bytes go to ``.<name>.<pid>.<random>.tmp`` (ignored by the inbox), are fsynced, and
    appear under ``<name>`` (or ``<stem>.<n><suffix>`` when taken) in one step. That step
    is ``os.link``, not ``os.rename``: a link fails when the name exists, so two submitters
    racing for the same name both succeed under different names; a rename would let the
    second silently replace the first. The inbox sees the link as a new file and reports
    it after its settle time. The caller validates the file first (``sentinel submit``).
    """
    src = Path(src)
    if not is_job_name(src.name):
        raise InboxError(
            f"{src}: the inbox takes files ending in {', '.join(JOB_SUFFIXES)} whose names "
            f"do not begin with '.'; rename the file"
        )
    if (problem := inbox_name_problem(src.name)) is not None:
        raise InboxError(
            f"{printable(src)}: the file name {problem}; the daemon would reject it: rename it"
        )
    data = read_job_bytes(src, max_bytes)
    if expected_sha256 is not None and hashlib.sha256(data).hexdigest() != expected_sha256:
        raise InboxError(f"{src} changed after it was validated; submit it again")
    inbox_dir = Path(inbox_dir)
    tmp = inbox_dir / f".{src.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        stem, suffix = os.path.splitext(src.name)
        n = 0
        while True:
            dest = inbox_dir / (src.name if n == 0 else f"{stem}.{n}{suffix}")
            try:
                os.link(tmp, dest, follow_symlinks=False)
                break
            except FileExistsError:
                n += 1
    except OSError as exc:
        if exc.filename is None:  # a write or fsync: name the folder that is full
            raise OSError(exc.errno, exc.strerror, str(inbox_dir)) from exc
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    fsync_dir(inbox_dir)
    return dest


def _ensure_dir(path: Path) -> None:
    """Create ``path`` if missing, and make its entry durable in its parent.

    Only ``path`` itself: a missing parent (the state directory) raises
    :class:`~sentinel_daemon.errors.StateDirMissing`, so that a mistyped ``--state-dir`` is
    an error, never a new state directory.
    """
    if path.is_dir():
        return
    if not path.parent.is_dir():
        raise StateDirMissing(path.parent, "the command's settings")
    path.mkdir(mode=0o750, exist_ok=True)
    fsync_dir(path.parent)


@dataclass(frozen=True)
class Submitted:
    job_id: str
    file: Path
    inbox_path: Path
    #: Whether a daemon holds the state directory: without one, the job waits in the inbox.
    daemon: Liveness
    #: Why the job may not start soon (no daemon, a degraded one), for the operator.
    warnings: tuple[str, ...] = ()


def submit(path: Path, settings: Settings, *, cwd: Path | None = None) -> Submitted:
    """Validate the job file at ``path`` and place it in the inbox; write nothing if invalid.

    Raises :class:`~sentinel_daemon.core.jobspec.JobSpecError` for a bad file,
    :class:`DuplicateJob` for a file already waiting or a job already submitted,
    :class:`~sentinel_daemon.errors.StateDirMissing` when the state directory does not
    exist, and :class:`~sentinel_daemon.errors.InboxError` if it changed while being
    submitted.
    """
    cwd = Path.cwd() if cwd is None else cwd
    state_dir = settings.state_dir
    max_bytes = settings.inbox.max_job_bytes
    if (problem := inbox_name_problem(Path(path).name)) is not None:
        raise JobSpecError(
            path,
            "-",
            f"the file name {problem}: the daemon would reject it. Job file names must be "
            f"UTF-8, at most {MAX_JOB_NAME_BYTES} bytes, without control characters; "
            f"rename it (or copy it to such a name) and submit that",
        )
    parsed = parse_job_file(
        path, data_roots=settings.resolved_data_roots(cwd), base_dir=cwd, max_bytes=max_bytes
    )
    _check_relative_data(path, parsed, cwd, state_dir)
    if not is_job_name(Path(path).name):
        raise JobSpecError(path, "-", "the inbox ignores names beginning with '.'; rename it")
    inbox_dir = state_dir / INBOX_DIR
    _ensure_dir(inbox_dir)
    with _inbox_locked(inbox_dir):
        _refuse_duplicate(Path(path), parsed, state_dir, max_bytes)
        dest = submit_file(path, inbox_dir, expected_sha256=parsed.sha256, max_bytes=max_bytes)
    daemon = daemon_liveness(state_dir)
    return Submitted(parsed.job_id, Path(path), dest, daemon, _warnings(state_dir, daemon))


@contextlib.contextmanager
def _inbox_locked(inbox_dir: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the inbox folder (the daemon takes none there)."""
    fd = os.open(inbox_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # the kernel drops it if this process dies
        yield
    finally:
        os.close(fd)


def _refuse_duplicate(path: Path, parsed: ParsedJob, state_dir: Path, max_bytes: int) -> None:
    """Raise :class:`DuplicateJob` if the file is waiting already or its job is in the log.

    The folders are looked at in the order a file moves (``inbox/``, ``claimed/``, then
    the log, where the daemon records it before removing it from ``claimed/``), so a file
    moving meanwhile is seen in one of them.
    """
    for folder in (INBOX_DIR, CLAIMED_DIR):
        found = same_content(state_dir / folder, parsed.sha256, max_bytes)
        if found is not None:
            where = "waiting in the inbox" if folder == INBOX_DIR else "claimed by the daemon"
            raise DuplicateJob(path, parsed.job_id, f"{where} as {found}")
    try:
        job = read_state(state_dir).jobs.get(parsed.job_id)
    except LogError:
        return  # a damaged log is for `sentinel log verify`; the daemon still refuses twins
    if job is not None:
        raise DuplicateJob(path, parsed.job_id, f"in the event log ({job.status})")


def same_content(folder: Path, sha256: str, max_bytes: int) -> Path | None:
    """A job file in ``folder`` whose bytes hash to ``sha256``, if there is one."""
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        return None
    for entry in entries:
        if not is_job_name(entry.name) or not entry.is_file(follow_symlinks=False):
            continue
        try:
            if entry.stat(follow_symlinks=False).st_size > max_bytes:
                continue
            data = Path(entry.path).read_bytes()
        except OSError:  # gone meanwhile (claimed), or unreadable: not ours to judge
            continue
        if hashlib.sha256(data).hexdigest() == sha256:
            return Path(entry.path)
    return None


def _warnings(state_dir: Path, daemon: Liveness) -> tuple[str, ...]:
    if not daemon.running:
        return (
            f"no daemon is running on {state_dir} ({daemon.how}): the job waits in the inbox "
            f"until one starts (`systemctl start sentinel` or `sentinel run`)",
        )
    health = _health(state_dir) or {}
    if health.get("status") == "degraded":
        return (
            f"the daemon (pid {daemon.pid}) is degraded: {health.get('reason', '?')}; it "
            f"dispatches no trial until that is fixed (`sentinel status`)",
        )
    return ()


def _check_relative_data(path: Path, parsed: ParsedJob, cwd: Path, state_dir: Path) -> None:
    """Refuse a relative data path that the daemon would resolve to another file.

    The daemon resolves relative paths against its own working folder (``health.json``
    says which, even after it stopped), not the submitter's: validating them here against
    ``cwd`` would accept a job that then fails, or reads another file of the same name.
    """
    health = _health(state_dir) or {}
    daemon_cwd = health.get("cwd")
    if not isinstance(daemon_cwd, str) or os.path.realpath(daemon_cwd) == os.path.realpath(cwd):
        return
    for name, value in parsed.data_as_written.items():
        if not os.path.isabs(value):
            raise JobSpecError(
                path,
                name,
                f"{value!r} is relative, and the daemon resolves it against its working folder "
                f"{daemon_cwd}, not {cwd}; write the absolute path",
            )
