"""The daemon's waits end on time even when a signal interrupts them.

On Python 3.11 ``queue.SimpleQueue.get(timeout=...)`` blocks forever when a signal
interrupts the wait and its deadline has passed by the time it resumes: CI saw the daemon
ignore SIGTERM for 90 s that way, parked in the core loop's wait for job files. Each test
here gets a real wait of the daemon interrupted by a signal whose handler outlasts the
timeout; the wait must raise ``Empty``. A thread puts an item after a few seconds, so that
a regression fails the test instead of hanging it.
"""

from __future__ import annotations

import queue
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from sentinel_daemon.daemon.inbox import Inbox
from tests.daemonkit import in_process_daemon

TIMEOUT_S = 0.1
HANDLER_S = 0.3  # longer than the timeout: the wait resumes past its deadline
RESCUE_S = 5.0


def _interrupted_wait(waits: Any, rescue_item: object) -> tuple[str, float]:
    """Run ``waits.get(timeout=TIMEOUT_S)`` with SIGALRM landing in it; what came of it."""
    rescue = threading.Timer(RESCUE_S, waits.put, args=(rescue_item,))
    previous = signal.signal(signal.SIGALRM, lambda *_: time.sleep(HANDLER_S))
    rescue.start()
    started = time.monotonic()
    try:
        signal.setitimer(signal.ITIMER_REAL, TIMEOUT_S / 2)
        try:
            waits.get(timeout=TIMEOUT_S)
            outcome = "an item (the wait outlived its timeout until the rescue put one)"
        except queue.Empty:
            outcome = "empty"
        return outcome, time.monotonic() - started
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        rescue.cancel()
        rescue.join()


def test_the_core_loops_wait_for_job_files_ends_when_a_signal_interrupts_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    daemon = in_process_daemon(tmp_path, monkeypatch)
    outcome, took = _interrupted_wait(daemon.files, tmp_path / "rescue.yaml")
    assert outcome == "empty" and took < RESCUE_S, (outcome, took)


def test_the_inbox_threads_wait_ends_when_a_signal_interrupts_it(tmp_path: Path) -> None:
    dirs = [tmp_path / name for name in ("inbox", "claimed", "rejected")]
    for folder in dirs:
        folder.mkdir()
    inbox = Inbox(*dirs, rescan_interval=5.0, on_file=lambda _: None)
    outcome, took = _interrupted_wait(inbox._queue, None)
    assert outcome == "empty" and took < RESCUE_S, (outcome, took)
