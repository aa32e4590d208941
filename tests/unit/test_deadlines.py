"""The per-trial wall-clock ceiling (``trials.timeout_s``): which claimed trials are overdue."""

from __future__ import annotations

from sentinel_daemon.daemon.deadlines import TrialClock


def test_a_trial_is_overdue_from_when_a_worker_was_first_seen_holding_it() -> None:
    clock = TrialClock(timeout_s=10.0)
    assert clock.overdue({"j.0.1": None}, now=0.0) == []  # pending: no clock yet
    assert clock.overdue({"j.0.1": "w0", "j.1.1": None}, now=5.0) == []
    assert clock.overdue({"j.0.1": "w0", "j.1.1": "w1"}, now=12.0) == []  # 7 s and 0 s
    (late,) = clock.overdue({"j.0.1": "w0", "j.1.1": "w1"}, now=15.5)
    assert (late.worker, late.command_id, late.seconds) == ("w0", "j.0.1", 10.5)
    assert "past trials.timeout_s (10 s)" in late.reason(10.0) and "10.5 s" in late.reason(10.0)
    assert clock.overdue({"j.0.1": "w0"}, now=16.0)  # asked again while still held
    # Taken back and claimed by another worker: its clock starts again.
    assert clock.overdue({"j.0.1": "w2"}, now=17.0) == []
    assert TrialClock(timeout_s=None).overdue({"j.0.1": "w0"}, now=1e9) == []
