"""The background scrub (daemon/scrubber.py): it begins after its delay, hands its findings
over once, and a daemon stopped before it began skips it."""

from __future__ import annotations

import threading
import time

from sentinel_daemon.daemon.scrubber import Scrubber
from sentinel_daemon.log.scrub import Finding, ScrubReport
from tests.helpers import wait_for

DAMAGE = Finding("00000000000000000001.jsonl", 3, "duplicate", "a duplicate of seq 2", seq=2)


class CountingStore:
    """Stands in for the Store the scrubber reads (the scrub itself: tests/log)."""

    def __init__(self, findings: tuple[Finding, ...]) -> None:
        self.findings = findings
        self.scrubbed_at: list[float] = []
        self.done = threading.Event()

    def scrub(self) -> ScrubReport:
        self.scrubbed_at.append(time.monotonic())
        self.done.set()
        return ScrubReport(self.findings, records=10, last_seq=10, bytes=1000, seconds=0.0)


def _scrubber(store: CountingStore, delay_s: float) -> Scrubber:
    return Scrubber(store, delay_s=delay_s)  # type: ignore[arg-type]


def test_the_scrub_begins_after_its_delay_and_its_findings_are_handed_over_once() -> None:
    store = CountingStore((DAMAGE,))
    began = time.monotonic()
    scrubber = _scrubber(store, delay_s=0.3)
    assert scrubber.poll() is None  # not begun yet
    found = wait_for(scrubber.poll, timeout=10, what="the scrub's findings")
    assert store.scrubbed_at[0] - began >= 0.3
    assert found == [str(DAMAGE)] and "line 3" in found[0]
    assert scrubber.poll() is None  # once
    scrubber.join(1.0)
    assert len(store.scrubbed_at) == 1


def test_a_clean_log_hands_over_no_findings() -> None:
    scrubber = _scrubber(CountingStore(()), delay_s=0.0)
    assert wait_for(lambda: scrubber.poll() is not None or None, timeout=10) is True
    scrubber.join(1.0)


def test_a_daemon_stopped_before_the_scrub_began_skips_it() -> None:
    store = CountingStore((DAMAGE,))
    scrubber = _scrubber(store, delay_s=30.0)
    began = time.monotonic()
    scrubber.join(timeout=5.0)
    assert time.monotonic() - began < 5.0  # did not wait out the delay
    assert not store.done.is_set() and scrubber.poll() is None
