"""Whether a daemon runs on a state directory, found out without disturbing it.

The daemon holds an ``flock`` on ``STATE/daemon.lock`` while it runs (and writes its pid
into the file, which stays after it stops). Trying that lock ourselves could make a daemon
starting at that very instant fail, so the holder is read from ``/proc/locks`` instead, as
``sentinel doctor`` does. Where ``/proc/locks`` cannot be read, the pid recorded in the
lock file is asked whether it is alive (a reused pid can fool that fallback).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

from sentinel_daemon.layout import LOCK_NAME
from sentinel_daemon.log.lock import read_holder
from sentinel_daemon.tools.checks import parse_flocks

PROC_LOCKS = Path("/proc/locks")


@dataclass(frozen=True)
class Liveness:
    """``running``: whether a daemon holds the lock; ``pid``: which one (or the last one)."""

    running: bool
    pid: int | None
    how: str


def _read_proc_locks() -> str | None:
    try:
        return PROC_LOCKS.read_text()
    except OSError:
        return None


def daemon_liveness(
    state_dir: Path,
    *,
    proc_locks: Callable[[], str | None] = _read_proc_locks,
    pid_alive: Callable[[int], bool] = psutil.pid_exists,
) -> Liveness:
    """Whether a daemon holds ``STATE/daemon.lock`` now."""
    path = Path(state_dir) / LOCK_NAME
    try:
        st = path.stat()
    except OSError:
        return Liveness(False, None, f"no {path}: no daemon has run on this state directory")
    recorded = read_holder(path)
    text = proc_locks()
    if text is None:
        alive = recorded is not None and pid_alive(recorded)
        return Liveness(alive, recorded, f"pid {recorded} recorded in {path} (/proc/locks unread)")
    device = (os.major(st.st_dev), os.minor(st.st_dev))
    holders = [
        lock.pid
        for lock in parse_flocks(text)
        if lock.inode == st.st_ino and (lock.device == device or lock.pid == recorded)
    ]
    if holders:
        pid = recorded if recorded in holders else holders[0]
        return Liveness(True, pid, f"pid {pid} holds {path}")
    return Liveness(False, recorded, f"nothing holds {path}")
