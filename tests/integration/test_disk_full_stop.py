"""A daemon stopped while its state directory's disk is full exits 0, and starts again.

Found by the fuzzer (tests/faults/test_fuzzer.py): ``Store.close`` wrote a last snapshot
and let its ``ENOSPC`` escape, so SIGTERM on a full disk exited 1 ("No space left on
device") although every record was durable. The state directory is a real, small tmpfs.
"""

from __future__ import annotations

from pathlib import Path

from sentinel_daemon.tools.verify import verify
from tests.daemonkit import DaemonProcess
from tests.integration.test_disk_full import (
    fill,
    small_disk,  # noqa: F401  (a fixture, used by name)
)


def test_a_stop_on_a_full_disk_exits_0_and_the_next_start_replays_the_log(
    tmp_path: Path,
    small_disk: Path,  # noqa: F811
) -> None:
    daemon = DaemonProcess(tmp_path)
    try:
        daemon.start()
        daemon.wait_for_event(lambda e: e["type"] == "daemon.started", what="daemon.started")
        filler = fill(small_disk)
        assert daemon.stop() == 0, daemon.log_text()[-2000:]
        assert "snapshot not written at close" in daemon.log_text()
        filler.unlink()
        daemon.start()
        daemon.wait_for_event(
            lambda e: e["type"] == "daemon.started" and e["seq"] > 1, what="the second start"
        )
        assert daemon.stop() == 0
        assert verify(small_disk).ok
    finally:
        daemon.cleanup()
