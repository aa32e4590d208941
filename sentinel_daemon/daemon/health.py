"""``STATE/health.json``, the daemon's degraded state, its status line.

``sentinel status`` (and ``submit``) read ``health.json``: the daemon's pid and working
folder, the dispatch backend, and why the daemon is degraded, if it is. Degraded means no
new trial is dispatched: either a turn of the core loop failed to write (nothing of that
turn was acknowledged or acted on, so the loop tries a whole turn again every
:data:`DEGRADED_RETRY_S` until one passes), or dispatching is held back for another reason
(:mod:`~sentinel_daemon.daemon.blocking`: admission control, no Dask scheduler, no worker
offering the resource), listed under ``blocked``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import structlog

from sentinel_daemon.core.state import State
from sentinel_daemon.daemon.dispatch import Dispatcher
from sentinel_daemon.layout import HEALTH_FILE
from sentinel_daemon.sdnotify import Notifier

log = structlog.get_logger(__name__)

#: While writes fail (disk full), the loop tries a whole turn again this often.
DEGRADED_RETRY_S = 2.0
#: health.json's reserved size (see Health.write).
HEALTH_BYTES = 4096
#: How often STATUS= is sent to systemd.
STATUS_EVERY_S = 5.0
#: A reason's sentence in health.json at most (the file has HEALTH_BYTES).
DETAIL_CHARS = 600


class Health:
    """What ``health.json`` says, and whether (and why) the daemon is degraded."""

    def __init__(self, state_dir: Path, cwd: Path, notifier: Notifier) -> None:
        self.path = state_dir / HEALTH_FILE
        self.cwd = cwd
        self.notifier = notifier
        #: Why writes are failing (a full disk), or None while all is well.
        self.degraded: str | None = None
        #: Why dispatching is held back otherwise (reason -> sentence; see .blocking).
        self.blocked: dict[str, str] = {}
        #: Damage the scrub found in records the snapshot covers (.scrubber): the daemon
        #: runs, but says so.
        self.damage: list[str] = []
        #: When the loop tries a turn again while degraded (``time.monotonic()``).
        self.retry_at = 0.0
        self._next_status = 0.0
        self._dispatch_note: str | None = None

    def turned(self, now: float, dispatcher: Dispatcher, line: Callable[[], str]) -> None:
        """After a turn that passed: the status line for systemd every :data:`STATUS_EVERY_S`,
        and ``health.json`` again with the counts of a backend whose description changes."""
        if now < self._next_status:
            return
        self._next_status = now + STATUS_EVERY_S
        self.notifier.status(line())
        if self.degraded is None and dispatcher.describe_changes:
            self.write(dispatcher)  # the counts, for `sentinel status`

    def dispatch_noted(self, dispatcher: Dispatcher, line: Callable[[], str]) -> None:
        """Say at once when the backend's note changes (the Dask scheduler went away, or
        came back): in ``health.json`` and the status line."""
        note = dispatcher.status_note()
        if note != self._dispatch_note:
            self._dispatch_note = note
            if self.degraded is None:
                self.write(dispatcher)
            self.notifier.status(line())

    def degrade(self, exc: Exception, now: float, dispatcher: Dispatcher | None) -> None:
        """A write failed (a full disk, an I/O error): nothing was acknowledged or acted on.

        Every decision is derived again from the state on the next turn, so retrying the
        whole turn later is safe. Until one passes, nothing new is dispatched; running
        trials go on (their results wait in the queue). A failed fsync is not handled here:
        it is fatal (see sentinel_daemon/log/segments.py).
        """
        reason = str(exc)
        first = self.degraded is None
        self.degraded = reason
        self.retry_at = now + DEGRADED_RETRY_S
        if first:
            log.error(
                "daemon.degraded",
                reason=reason,
                retry_every_s=DEGRADED_RETRY_S,
                action="dispatching stopped until writes succeed again",
            )
        self.notifier.status(f"DEGRADED (writes failing, not dispatching): {reason}"[:200])
        self.write(dispatcher)

    def recovered(self, dispatcher: Dispatcher | None) -> None:
        """A whole turn passed again: ``health.json`` says ok."""
        log.warning("daemon.resumed", after=self.degraded)
        self.degraded = None
        self.write(dispatcher)

    def write(self, dispatcher: Dispatcher | None) -> None:
        """Write ``health.json``: ``ok``, or ``degraded`` with a reason (see the module doc).

        The file is created at start-up with :data:`HEALTH_BYTES` reserved and rewritten in
        place, so that it can still say "disk full" on a disk that is full (a new file, as an
        atomic replace would write, needs space). A reader may see a torn write; it then
        reads nothing, and the next rewrite fixes it. Best effort: errors are ignored.
        """
        blocked = {r: d[:DETAIL_CHARS] for r, d in self.blocked.items()}
        health: dict[str, Any] = {"status": "ok", "pid": os.getpid()}
        if self.degraded is not None:
            health |= {"status": "degraded", "reason": self.degraded}
        elif blocked:
            first = next(iter(blocked))
            why = f"dispatch blocked ({', '.join(blocked)}): {blocked[first]}"
            health |= {"status": "degraded", "reason": why[:DETAIL_CHARS]}
        elif self.damage:
            why = f"event log damaged ({len(self.damage)} findings): {self.damage[0]}"
            health |= {"status": "degraded", "reason": why[:DETAIL_CHARS]}
        health["blocked"] = blocked
        if self.damage:
            health["damage"] = [d[:200] for d in self.damage[:5]]
        # Relative data paths in job files resolve against it: `sentinel submit` checks.
        health["cwd"] = str(self.cwd)
        if dispatcher is not None:
            health["dispatch"] = dispatcher.describe()
        data = orjson.dumps(health)[: HEALTH_BYTES - 1]
        with contextlib.suppress(OSError):
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o640)
            try:
                os.posix_fallocate(fd, 0, HEALTH_BYTES)
                os.pwrite(fd, data.ljust(HEALTH_BYTES - 1) + b"\n", 0)
                os.fdatasync(fd)
            finally:
                os.close(fd)


def status_line(state: State, dispatcher: Dispatcher | None, stopping: bool) -> str:
    """One line for ``systemctl status``: jobs, trials in flight, the best value."""
    running = state.running_jobs()
    flight = sum(1 for j in running for t in j.trials.values() if not t.status.ended)
    best = [b.value for j in running if (b := j.best_saved()) is not None and b.value]
    text = f"{len(running)} jobs running, {flight} trials in flight"
    if best:
        text += f", best {max(best):.4f}"
    if dispatcher is not None and (note := dispatcher.status_note()):
        text += f"; {note}"
    if stopping:
        text = "stopping: " + text
    return text
