"""``sentinel submit``: validate a job file as the daemon would, then place it in the inbox."""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from sentinel_daemon.core.jobspec import (
    DEFAULT_MAX_BYTES,
    JobSpecError,
    ParsedJob,
    parse_job_file,
    read_job_bytes,
)
from sentinel_daemon.errors import InboxError
from sentinel_daemon.fsutil import fsync_dir
from sentinel_daemon.layout import INBOX_DIR, JOB_SUFFIXES, is_job_name
from sentinel_daemon.settings import Settings
from sentinel_daemon.tools.status import _health


def submit_file(
    src: Path,
    inbox_dir: Path,
    *,
    expected_sha256: str | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Path:
    """Place a copy of ``src`` in the inbox atomically and durably; return its path there.

    ``src`` is read once, like :func:`~sentinel_daemon.core.jobspec.parse_job_file` reads it
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
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    fsync_dir(inbox_dir)
    return dest


def _ensure_dir(path: Path) -> None:
    """Create ``path`` if missing, and make its entry durable in its parent."""
    if path.is_dir():
        return
    path.mkdir(mode=0o750, parents=True, exist_ok=True)
    fsync_dir(path.parent)


@dataclass(frozen=True)
class Submitted:
    job_id: str
    file: Path
    inbox_path: Path


def submit(path: Path, settings: Settings, *, cwd: Path | None = None) -> Submitted:
    """Validate the job file at ``path`` and place it in the inbox; write nothing if invalid.

    Raises :class:`~sentinel_daemon.core.jobspec.JobSpecError` for a bad file, and
    :class:`~sentinel_daemon.errors.InboxError` if it changed while being submitted.
    """
    cwd = Path.cwd() if cwd is None else cwd
    max_bytes = settings.inbox.max_job_bytes
    parsed = parse_job_file(
        path, data_roots=settings.resolved_data_roots(cwd), base_dir=cwd, max_bytes=max_bytes
    )
    _check_relative_data(path, parsed, cwd, settings.state_dir)
    if not is_job_name(Path(path).name):
        raise JobSpecError(path, "-", "the inbox ignores names beginning with '.'; rename it")
    inbox_dir = settings.state_dir / INBOX_DIR
    _ensure_dir(inbox_dir)
    dest = submit_file(path, inbox_dir, expected_sha256=parsed.sha256, max_bytes=max_bytes)
    return Submitted(parsed.job_id, Path(path), dest)


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
