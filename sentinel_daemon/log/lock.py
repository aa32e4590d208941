"""The state directory's single-writer lock (``STATE/daemon.lock``, an ``flock``).

The kernel drops an ``flock`` when its holder dies, kill -9 included, so a stale lock
file never blocks a restart. The holder's pid is written into the file so that a second
daemon can say who holds it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from sentinel_daemon.errors import StateDirLocked
from sentinel_daemon.layout import LOCK_NAME


class StateLock:
    """An exclusive, non-blocking lock on a state directory, held until :meth:`release`."""

    def __init__(self, state_dir: Path, fd: int) -> None:
        self.state_dir = state_dir
        self._fd = fd

    @classmethod
    def acquire(cls, state_dir: Path) -> StateLock:
        state_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
        path = state_dir / LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = read_holder(path)
            os.close(fd)
            raise StateDirLocked(state_dir, holder) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(state_dir, fd)

    def release(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = -1


def read_holder(path: Path) -> int | None:
    """The pid recorded in a lock file, or ``None`` when it holds none."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
