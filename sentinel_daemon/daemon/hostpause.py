"""Host-wide conditions that pause dispatch instead of being charged to a trial.

A full disk (or a quota, or a file system remounted read-only) under the state directory is
not a trial's fault: every trial would fail the same way until space returns. So:

- a trial attempt that failed with such an error (:func:`host_condition` reads the worker's
  error: ``[Errno 28]``, "No space left on device", ``EDQUOT``, ``EROFS``) is recorded as
  ``trial.failed`` with ``charged: false``: it is retried without using one of its
  ``trials.max_attempts`` (:func:`~sentinel_daemon.daemon.answers.failed`), at most
  :data:`~sentinel_daemon.daemon.answers.MAX_UNCHARGED` times, so that a condition this
  module cannot see (a full ``/tmp``) ends in the usual retries;
- :class:`HostPause` pauses dispatch (reason ``disk_full`` of
  :mod:`~sentinel_daemon.daemon.blocking`: the ``dispatch.blocked`` log line,
  ``health.json`` degraded, ``sentinel_dispatch_blocked{reason="disk_full"}``) while the
  state directory's file system has less than ``resources.min_free_disk_bytes`` free, and
  for at least :data:`HOLD_S` after such a failure, until a sample shows the space back.

Host memory under its floor is admission control's (reason ``admission``), the daemon's own
writes failing is ``writes_failing`` (:mod:`~sentinel_daemon.daemon.health`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path

import structlog

from sentinel_daemon.core.events import Event, TrialFailed

log = structlog.get_logger(__name__)

#: After a trial failed for the host, dispatch stays paused at least this long.
HOLD_S = 5.0
#: A worker lost this soon after the disk was found full is counted lost to the host.
RECENT_S = 30.0
#: The reason of :mod:`~sentinel_daemon.daemon.blocking` this module holds.
REASON = "disk_full"

_HOST_ERROR = re.compile(
    r"\[Errno (?:28|122|30)\]|No space left on device|Disk quota exceeded"
    r"|Read-only file system"
)


def host_condition(error: str) -> bool:
    """Whether a trial's error says the host's disk failed it (full, over quota, read-only)."""
    return _HOST_ERROR.search(error) is not None


def free_bytes(path: Path) -> int | None:
    """Bytes an unprivileged writer may still write on ``path``'s file system; None: unknown."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


class HostPause:
    """Whether the host pauses dispatch (see the module doc); :attr:`reason` says why."""

    def __init__(
        self,
        state_dir: Path,
        min_free_bytes: int,
        measure: Callable[[Path], int | None] = free_bytes,
    ) -> None:
        self.state_dir = state_dir
        self.min_free_bytes = min_free_bytes
        self._measure = measure
        #: Why dispatch is paused (a sentence), or None.
        self.reason: str | None = None
        self._hit: str | None = None  # the last trial error that said so
        self._hold_until = 0.0
        self._paused_at: float | None = None  # when a pause last held

    def observe(self, events: Iterable[Event], now: float) -> None:
        """Events just recorded: a trial attempt failed for the host pauses dispatch now."""
        for event in events:
            if isinstance(event, TrialFailed) and not event.charged:
                self._hit = event.error
                self._hold_until = now + HOLD_S
                self._paused_at = now
                self.reason = self._sentence(self._measure(self.state_dir))

    def sample(self, now: float) -> str | None:
        """Measure the state directory's free space; the reason to pause now, or None."""
        free = self._measure(self.state_dir)
        low = free is not None and free < self.min_free_bytes
        if low or now < self._hold_until:
            self.reason = self._sentence(free)
            self._paused_at = now
        else:
            self._hit = None
            self.reason = None
        return self.reason

    def recent(self, now: float) -> bool:
        """Whether the disk was full now or within :data:`RECENT_S` (a worker lost then most
        likely died of it: its attempt is not charged)."""
        return self._paused_at is not None and now - self._paused_at < RECENT_S

    def lost_to_host(self, now: float) -> bool:
        """Whether a worker lost now most likely died of the disk: it was full within
        :data:`RECENT_S`, or is full now (measured at once: a worker that dies of a full disk
        is often seen before the next sample, and must not be charged for it)."""
        return self.recent(now) or self.sample(now) is not None

    def _sentence(self, free: int | None) -> str:
        where = f"{self.state_dir}"
        if free is not None and free < self.min_free_bytes:
            text = (
                f"the file system of {where} has {free >> 20} MiB free, under "
                f"resources.min_free_disk_bytes ({self.min_free_bytes >> 20} MiB)"
            )
        else:
            text = f"a trial failed for lack of disk space under {where}"
        if self._hit:
            text += f"; last trial error: {self._hit[:200]}"
        return text + "; free space there, dispatch resumes by itself (no attempt is charged)"


__all__ = ["HOLD_S", "REASON", "RECENT_S", "HostPause", "free_bytes", "host_condition"]
