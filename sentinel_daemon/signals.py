"""Signal numbers as operators read them: ``signal 9 (SIGKILL)`` in events and logs."""

from __future__ import annotations

import signal


def signal_name(signum: int) -> str:
    """The name of signal ``signum`` (``SIGKILL``), or ``unknown`` for a number without one."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return "unknown"
