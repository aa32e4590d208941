"""``sentinel wait``: block until a job ends, with a progress line on a terminal.

The job is named by its id, or by a name that one job alone has in the log
(:func:`~sentinel_daemon.tools.status.resolve_job`; several jobs of that name end the wait
at once). A job id that is not in the event log may still be on its way: its file waiting in
``inbox/`` or taken into ``claimed/`` (the job id is ``<name>-<first 8 hex digits of the
file's sha256>``, so a file is recognised by its hash). Only when the id is in none of
them for ``grace`` seconds in a row does the wait end as unknown; a file the daemon
refused (in ``rejected/``, with its reason beside it) ends it at once.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from sentinel_daemon.core.ids import check_job_id
from sentinel_daemon.core.state import JobStatus
from sentinel_daemon.layout import CLAIMED_DIR, INBOX_DIR, REASON_SUFFIX, REJECTED_DIR, is_job_name
from sentinel_daemon.log.store import read_state
from sentinel_daemon.printable import printable
from sentinel_daemon.tools.status import _stage_cell, _value, job_summary, resolve_job

#: How long an id found nowhere is waited for before ``wait`` gives up on it.
DEFAULT_GRACE_S = 10.0
#: Job files are small (``inbox.max_job_bytes``); anything larger is not hashed.
_MAX_FILE_BYTES = 1 << 20
BAR_MIN = 10
BAR_MAX = 20


class Outcome(StrEnum):
    ENDED = "ended"
    TIMED_OUT = "timed_out"
    UNKNOWN = "unknown"
    REJECTED = "rejected"


@dataclass(frozen=True)
class WaitResult:
    """How the wait ended; ``job`` is the last summary (``None`` while not in the log)."""

    outcome: Outcome
    job: dict[str, Any] | None
    #: Where the job's file was last seen, or why it was rejected.
    detail: str = ""


@dataclass(frozen=True)
class Pending:
    """Where a job not yet in the log stands: ``where`` is ``inbox``, ``claimed`` or
    ``rejected``; ``path`` its file; ``reason`` why it was rejected."""

    where: str
    path: Path
    reason: str = ""


def find_pending(state_dir: Path, job_id: str) -> Pending | None:
    """The file of ``job_id`` in ``inbox/``, ``claimed/`` or ``rejected/``, in that order.

    Looked at in the order a file moves. One recorded between the caller's read of the
    log and this look is in neither: the next poll finds it in the log, and the grace
    period keeps a single miss from ending the wait.
    """
    _, _, digest = job_id.rpartition("-")
    if len(digest) != 8:
        return None
    for where in (INBOX_DIR, CLAIMED_DIR, REJECTED_DIR):
        path = _file_with_digest(Path(state_dir) / where, digest)
        if path is not None:
            reason = _reason(path) if where == REJECTED_DIR else ""
            return Pending(where, path, reason)
    return None


def _file_with_digest(folder: Path, digest: str) -> Path | None:
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return None
    for entry in entries:
        if not is_job_name(entry.name):
            continue
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            if entry.stat(follow_symlinks=False).st_size > _MAX_FILE_BYTES:
                continue
            data = Path(entry.path).read_bytes()
        except OSError:  # moved on meanwhile
            continue
        if hashlib.sha256(data).hexdigest()[:8] == digest:
            return Path(entry.path)
    return None


def _reason(path: Path) -> str:
    try:
        return path.with_name(path.name + REASON_SUFFIX).read_text(errors="replace").strip()
    except OSError:
        return "no reason file beside it"


def wait_for_job(
    state_dir: Path,
    job_id: str,
    *,
    timeout: float | None,
    grace: float = DEFAULT_GRACE_S,
    poll_s: float = 0.2,
    on_poll: Callable[[dict[str, Any] | None, Pending | None], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> WaitResult:
    """Poll the state until ``job_id`` has ended, ``timeout`` s pass, or it proves unknown.

    ``job_id`` may also be a job's name (see the module doc; :class:`AmbiguousJob` when
    several jobs have it). Unknown: for ``grace`` s in a row it was neither in the log nor
    a file in ``inbox/`` or ``claimed/``. A file of it in ``rejected/`` ends the wait at
    once. ``on_poll`` sees every summary and where the file waits (for a progress line).
    """
    check_job_id(job_id)
    start = clock()
    deadline = None if timeout is None else start + timeout
    last_seen = start  # when the job (or its file) was last seen somewhere
    found: str | None = None  # the job's id, once the log has it
    while True:
        state = read_state(state_dir)
        if found is None:
            job = resolve_job(state, job_id, state_dir)
            found = None if job is None else job.job_id
        else:
            job = state.jobs.get(found)
        summary = None if job is None else job_summary(job)
        pending = None
        if job is None:
            pending = find_pending(state_dir, job_id)
            if pending is not None and pending.where == REJECTED_DIR:
                # Recorded since? (the daemon rejects a twin of a job it already has)
                job = read_state(state_dir).jobs.get(job_id)
                if job is None:
                    return WaitResult(Outcome.REJECTED, None, f"{pending.path}: {pending.reason}")
                summary, pending = job_summary(job), None
        now = clock()
        if job is not None or pending is not None:
            last_seen = now
        if on_poll is not None:
            on_poll(summary, pending)
        if job is not None and job.status is not JobStatus.RUNNING:
            return WaitResult(Outcome.ENDED, summary)
        where = "" if pending is None else str(pending.path)
        if deadline is not None and now >= deadline:
            return WaitResult(Outcome.TIMED_OUT, summary, where)
        if job is None and pending is None and now - last_seen >= grace:
            return WaitResult(Outcome.UNKNOWN, None)
        left = [poll_s]
        if deadline is not None:
            left.append(deadline - now)
        if job is None and pending is None:
            left.append(last_seen + grace - now)
        sleep(max(0.0, min(left)))


def progress_line(
    job_id: str, job: dict[str, Any] | None, width: int = 80, pending: Pending | None = None
) -> str:
    """The one-line progress bar ``sentinel wait`` redraws on a terminal, ``width`` at most.

    What does not fit is left out whole, least useful first (the bar shrinks, then goes,
    then the stage, the word "trials", the job id): a number is never cut.
    """
    if job is None:
        if pending is not None:
            waits = "waiting in the inbox" if pending.where == INBOX_DIR else "being read"
            words = [job_id, f"{waits} ({pending.path.name})"]
        else:
            words = [job_id, "not in the log yet (waiting for the daemon to accept it)"]
        return _fit([words, words[:1]], width)
    ended, total = job["trials_ended"], job["trials_total"]
    count = f"{ended}/{total or '?'}"
    best = f"best {_value(job['best_value'])}"
    head = [job_id, job["status"], _stage_cell(job)]
    tail = [f"{count} trials", best]
    layouts: list[list[str]] = []
    if total:
        fixed = len(" ".join(head + tail)) + 3  # the bar's brackets and a space
        cells = min(BAR_MAX, width - fixed)
        if cells >= BAR_MIN:
            filled = min(cells, cells * ended // total)
            layouts.append([*head, f"[{'#' * filled}{'.' * (cells - filled)}]", *tail])
    layouts += [
        head + tail,
        [job_id, job["status"], *tail],
        [job_id, job["status"], count, best],
        [job_id, count, best],
        [count, best],
        [count],
    ]
    return _fit(layouts, width)


def _fit(layouts: list[list[str]], width: int) -> str:
    """The first layout whose words fit ``width``; else the last one's whole words that do.

    Words are escaped first (a job's name and its file's name come from outside).
    """
    layouts = [[printable(w) for w in words] for words in layouts]
    for words in layouts:
        text = " ".join(words)
        if len(text) <= width:
            return text
    kept = ""
    for word in " ".join(layouts[-1]).split(" "):
        if len(kept) + len(word) + (1 if kept else 0) > width:
            break
        kept = f"{kept} {word}" if kept else word
    return kept


def terminal_width(fallback: int = 80) -> int:
    """Columns of the terminal the progress line goes to (stderr), ``COLUMNS`` first."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    try:
        return os.get_terminal_size(sys.stderr.fileno()).columns
    except (OSError, ValueError, AttributeError):
        return shutil.get_terminal_size((fallback, 24)).columns
