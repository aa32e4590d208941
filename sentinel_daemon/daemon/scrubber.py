"""The scrub of the records start-up did not replay, right after start-up, in the background.

Start-up replays only the records after the snapshot; :meth:`Store.scrub
<sentinel_daemon.log.store.Store.scrub>` checks the others (checksums, seq continuity, stray
or empty segments: about 1 s a million records, ``bench/eventlog.py``). It only reads the
part of the log before the snapshot's position, which appends never touch, so it runs in a
thread while the loop serves, starting :data:`DELAY_S` after start-up: the first dispatch
(rebuilding the studies, the first ask) does not share the interpreter with it. A daemon
stopped before then skips it; the next start scrubs. Damage found there does not stop the
daemon (the state came from the snapshot), but it is said everywhere an operator looks: an
error-level ``log.damaged`` line naming segment and line, ``health.json`` degraded with the
findings under ``damage``, ``sentinel_degraded`` 1, and ``sentinel status``. ``sentinel log
repair`` mends what it can (a duplicate line, a stray empty segment) and says what to
restore otherwise.
"""

from __future__ import annotations

import threading

import structlog

from sentinel_daemon.log.scrub import ScrubReport
from sentinel_daemon.log.store import Store
from sentinel_daemon.printable import printable

log = structlog.get_logger(__name__)

#: Findings listed in health.json and the log line at most (the count says how many).
LISTED = 10
#: Seconds after start-up before the scrub begins (bench/daemon.py's restart row: a scrub
#: of 10,000 trials' records at once added about 30 ms to the first trial.started).
DELAY_S = 2.0


class Scrubber:
    """Scrubs ``store``'s covered records in a thread; :meth:`poll` hands the report over once."""

    def __init__(self, store: Store, delay_s: float = DELAY_S) -> None:
        self._store = store
        self._delay_s = delay_s
        self._cancel = threading.Event()
        self._report: ScrubReport | None = None
        self._error: Exception | None = None
        self._taken = False
        self._thread = threading.Thread(target=self._run, name="sentinel-scrub", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        if self._cancel.wait(self._delay_s):
            return  # stopped before it began
        try:
            self._report = self._store.scrub()
        except Exception as exc:  # an unreadable segment: said, never fatal here
            self._error = exc

    def poll(self) -> list[str] | None:
        """Once the scrub ended: its findings as sentences (logged), once; else None."""
        if self._taken or self._thread.is_alive():
            return None
        self._taken = True
        if self._error is not None:
            found = [f"the scrub could not read the log: {self._error}"]
        elif self._report is not None:
            found = [str(f) for f in self._report.findings]
        else:
            return None
        if found:
            log.error(
                "log.damaged",
                findings=[printable(f) for f in found[:LISTED]],
                count=len(found),
                action="the daemon runs on its snapshot; `sentinel log verify` lists the damage, "
                "`sentinel log repair` mends a duplicate or a stray segment and names what to "
                "restore otherwise",
            )
        return found

    def join(self, timeout: float) -> None:
        """Skip the scrub if it has not begun; else wait for it (it reads segments)."""
        self._cancel.set()
        self._thread.join(timeout)
