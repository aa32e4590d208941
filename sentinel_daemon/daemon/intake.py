"""Intake of job files: from the inbox to ``job.submitted`` or ``job.rejected``.

The :class:`~sentinel_daemon.daemon.inbox.Inbox` thread watches ``STATE/inbox/`` and hands
each settled job file to the core loop, which *takes* it (:meth:`Intake.take`: the file moves
into ``claimed/``) and *considers* it (:meth:`Intake.consider`): a valid file becomes
``job.submitted`` and then moves into its job folder (``jobs/<job>/job.yaml``); anything else
becomes ``job.rejected`` and moves to ``rejected/`` with the reason beside it. Each move
follows its event, so a crash leaves the file in ``claimed/``, where start-up (and the
first turn after a failed write) considers it again (:meth:`Intake.reconsider_claimed`): a
file recorded under this very name but never moved in is moved in, not submitted twice.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from functools import partial
from pathlib import Path

import structlog

from sentinel_daemon.core.events import JobRejected, JobSubmitted
from sentinel_daemon.core.jobspec import JobSpecError
from sentinel_daemon.daemon.committer import Committer
from sentinel_daemon.daemon.inbox import Inbox, InboxFileGone
from sentinel_daemon.fsutil import fsync_dir
from sentinel_daemon.jobfile import parse_job_file
from sentinel_daemon.layout import (
    CLAIMED_DIR,
    INBOX_DIR,
    MAX_JOB_NAME_BYTES,
    REJECTED_DIR,
    inbox_name_problem,
    is_job_name,
    job_dir,
    safe_name,
)
from sentinel_daemon.printable import json_safe, printable
from sentinel_daemon.settings import Settings

log = structlog.get_logger(__name__)


class Intake:
    """Takes job files from the inbox and records each (see the module doc); a new job
    gets its actor at once."""

    def __init__(self, state_dir: Path, settings: Settings, cwd: Path, core: Committer) -> None:
        self.state_dir = state_dir
        self.settings = settings
        self.cwd = cwd
        self.core = core
        self.inbox: Inbox | None = None

    def open(self, on_file: Callable[[Path], None]) -> None:
        """Create the inbox (not started) and drop claimed twins of inbox files."""
        self.inbox = Inbox(
            self.state_dir / INBOX_DIR,
            self.state_dir / CLAIMED_DIR,
            self.state_dir / REJECTED_DIR,
            rescan_interval=self.settings.inbox.rescan_seconds,
            settle=self.settings.inbox.settle_seconds,
            on_file=on_file,
        )
        self.inbox.drop_claimed_twins()

    def start(self) -> None:
        """Start watching the inbox (after start-up has looked at ``claimed/``)."""
        assert self.inbox is not None
        self.inbox.start()

    def stop(self) -> None:
        if self.inbox is not None:
            self.inbox.stop()
            self.inbox = None

    def take(self, path: Path) -> None:
        """Claim the inbox file ``path`` (gone already: nothing to do), then consider it.

        A file whose name the inbox refuses (:func:`~sentinel_daemon.layout.inbox_name_problem`)
        is rejected straight from the inbox, under a safe name: it is never claimed, since
        ``claimed/`` could not hold what is added to a name too long.
        """
        assert self.inbox is not None
        try:
            if not self._refused_name(path):
                self.consider(self.inbox.claim(path))
        except InboxFileGone:
            return

    def _refused_name(self, path: Path) -> bool:
        """Reject ``path`` if the inbox refuses its name; whether it did."""
        problem = inbox_name_problem(path.name)
        if problem is None:
            return False
        shown = printable(path.name)
        rel = f"{path.parent.name}/{shown}"
        kept = safe_name(path.name)
        self._reject(
            path,
            rel,
            f"{shown}: the file name {problem}; kept as rejected/{kept}. Job file names must "
            f"be UTF-8, at most {MAX_JOB_NAME_BYTES} bytes, without control characters: "
            f"rename the file and submit it again",
            name=kept,
        )
        return True

    def reconsider_claimed(self) -> None:
        """Record every job file left in ``claimed/`` (claimed, then a crash or failed write)."""
        for claimed in sorted((self.state_dir / CLAIMED_DIR).iterdir()):
            if is_job_name(claimed.name):
                with contextlib.suppress(InboxFileGone):
                    self.consider(claimed)

    def consider(self, claimed: Path) -> None:
        """Turn a claimed job file into ``job.submitted`` or ``job.rejected``, then move it.

        Whatever goes wrong with the file itself (its name, its bytes, reading it) rejects
        it; only writing the log or the state directory raises.
        """
        if self._refused_name(claimed):  # claimed by an older version
            return
        rel = claimed.relative_to(self.state_dir).as_posix()
        try:
            parsed = parse_job_file(
                claimed,
                data_roots=self.settings.resolved_data_roots(self.cwd),
                base_dir=self.cwd,
                max_bytes=self.settings.inbox.max_job_bytes,
            )
        except JobSpecError as exc:
            self._reject(claimed, rel, str(exc))
            return
        except Exception as exc:  # a file no check foresaw must not stop the daemon
            log.exception("intake.unexpected", file=rel)
            self._reject(claimed, rel, f"{rel}: cannot be read as a job file: {exc!r}")
            return
        job = self.core.state.jobs.get(parsed.job_id)
        folder = job_dir(self.state_dir, parsed.job_id)
        if job is None:
            self.core.commit(
                [
                    JobSubmitted(
                        job_id=parsed.job_id,
                        name=parsed.spec.name,
                        spec=parsed.raw,
                        file=rel,
                        file_sha256=parsed.sha256,
                    )
                ]
            )
            self.core.guard(parsed.job_id, "starting it", partial(self.core.actor, parsed.job_id))
        elif job.file != rel or any(folder.glob("job.*")):
            # Only a file recorded under this very name and never moved in is a leftover of
            # a crash; anything else is the same job sent again.
            self._reject(
                claimed,
                rel,
                f"{claimed.name}: job {parsed.job_id} was already submitted with the same name "
                f"and content ({job.status}); change the file (or its name) to run it again",
                parsed.sha256,
            )
            return
        # Recorded (now, or before a crash): the file moves in with its job.
        folder.mkdir(parents=True, exist_ok=True)
        fsync_dir(folder.parent)
        os.rename(claimed, folder / f"job{claimed.suffix.lower()}")
        fsync_dir(folder)
        fsync_dir(claimed.parent)

    def _reject(
        self,
        path: Path,
        rel: str,
        reason: str,
        sha256: str | None = None,
        *,
        name: str | None = None,
    ) -> None:
        assert self.inbox is not None
        reason = json_safe(reason)
        self.core.commit([JobRejected(file=json_safe(rel), reason=reason, file_sha256=sha256)])
        self.inbox.reject(path, reason, name=name)
