"""The state as the log holds it, read without the lock and without writing anything.

``sentinel status`` and ``sentinel wait`` read the state directory while a daemon owns it
(:meth:`~sentinel_daemon.store.Store.open` takes the daemon's exclusive lock, so they must
not use it). They start from the snapshot when it fits the log, as start-up does, and
replay the tail. A damaged last record is where the reading stops: a running daemon may be
in the middle of writing it, and only the daemon (or ``sentinel log repair``) cuts a log.
"""

from __future__ import annotations

from pathlib import Path

from sentinel_daemon.state import State
from sentinel_daemon.store import EVENTS_DIR, SNAPSHOT_NAME, recover, trusted_snapshot


def read_state(state_dir: Path) -> State:
    """Fold the log of ``state_dir`` (from its snapshot if usable) into a state; write nothing.

    A missing events folder gives an empty state. A torn last record is left out, not
    repaired. Corruption in the middle of the log raises
    :class:`~sentinel_daemon.errors.LogCorrupt` (or ``LogGap``) as at start-up.
    """
    events_dir = Path(state_dir) / EVENTS_DIR
    if not events_dir.is_dir():
        return State()
    snap, problem = trusted_snapshot(Path(state_dir) / SNAPSHOT_NAME)
    state, _scan, _replayed, _problem = recover(events_dir, snap, problem)
    return state
