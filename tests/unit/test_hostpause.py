"""A full disk pauses dispatch and is not charged to a trial's attempts (daemon/hostpause.py,
answers.failed, the fold of trial.failed's ``charged``)."""

from __future__ import annotations

from pathlib import Path

from sentinel_daemon.core.events import TrialFailed, TrialStarted, decode, encode
from sentinel_daemon.core.ids import JobId, TrialNumber
from sentinel_daemon.core.state import State, TrialState, TrialStatus, apply
from sentinel_daemon.daemon.answers import MAX_UNCHARGED, failed
from sentinel_daemon.daemon.hostpause import (
    HOLD_S,
    RECENT_S,
    HostPause,
    free_bytes,
    host_condition,
)
from tests.unit.test_state import submitted

ENOSPC = "OSError: [Errno 28] No space left on device: 'jobs/j/trials/3/1-w0/model.ubj'"
JOB = JobId("j-00000000")


def _trial(attempt: int, uncharged: int = 0) -> TrialState:
    return TrialState(3, "xgboost", {}, attempt, uncharged=uncharged)  # type: ignore[arg-type]


def test_errors_of_a_full_disk_read_only_or_over_quota_are_the_hosts() -> None:
    assert host_condition(ENOSPC)
    assert host_condition("XGBoostError: ... No space left on device")
    assert host_condition("OSError: [Errno 122] Disk quota exceeded")
    assert host_condition("OSError: [Errno 30] Read-only file system: '/var/lib/sentinel'")
    assert not host_condition("ValueError: bad params")
    assert not host_condition("worker lost: signal 9")


def test_a_trial_the_host_failed_is_retried_without_using_an_attempt() -> None:
    event = failed(JOB, _trial(attempt=3), ENOSPC, max_attempts=3)
    assert (event.charged, event.retry) == (False, True)
    other = failed(JOB, _trial(attempt=3), "ValueError: x", max_attempts=3)
    assert (other.charged, other.retry) == (True, False)
    # Attempts the host failed do not count: attempt 3 after two of those is the first charged.
    assert failed(JOB, _trial(attempt=3, uncharged=2), "ValueError: x", 3).retry
    # A condition that never clears is charged in the end.
    last = failed(JOB, _trial(attempt=20, uncharged=MAX_UNCHARGED), ENOSPC, max_attempts=3)
    assert (last.charged, last.retry) == (True, False)


def test_the_fold_counts_uncharged_attempts_across_retries() -> None:
    state = apply(State(), submitted(JOB))
    for attempt in (1, 2, 3):
        apply(
            state,
            TrialStarted(
                job_id=JOB, trial=TrialNumber(0), model="xgboost", params={}, attempt=attempt
            ),
        )
        error = ENOSPC if attempt < 3 else "ValueError: x"
        trial = state.jobs[JOB].trials[0]
        apply(state, failed(JOB, trial, error, max_attempts=2))
    trial = state.jobs[JOB].trials[0]
    assert trial.uncharged == 2
    assert trial.status is TrialStatus.RETRYING  # one charged attempt of two


def test_a_v1_trial_failed_reads_as_charged() -> None:
    v1 = {k: v for k, v in encode(failed(JOB, _trial(1), "x", 3)).items() if k != "charged"}
    event = decode({**v1, "v": 1})
    assert isinstance(event, TrialFailed) and event.charged


def test_the_pause_holds_while_the_disk_is_low_and_a_while_after_a_host_failure(
    tmp_path: Path,
) -> None:
    free = {"bytes": 100 << 20}
    pause = HostPause(tmp_path, 16 << 20, measure=lambda _: free["bytes"])
    assert pause.sample(0.0) is None
    free["bytes"] = 1 << 20
    reason = pause.sample(1.0)
    assert reason is not None and "1 MiB free" in reason and "min_free_disk_bytes" in reason
    free["bytes"] = 100 << 20
    assert pause.sample(2.0) is None
    pause.observe([failed(JOB, _trial(1), ENOSPC, 3)], 3.0)
    assert pause.reason is not None and "No space left" in pause.reason
    assert pause.sample(3.0 + HOLD_S / 2) is not None  # held, though space is back
    assert pause.sample(3.0 + HOLD_S) is None
    pause.observe([failed(JOB, _trial(1), "ValueError: x", 3)], 10.0)
    assert pause.reason is None


def test_free_bytes_reads_the_file_system_and_none_for_a_missing_path(tmp_path: Path) -> None:
    assert (free_bytes(tmp_path) or 0) > 0
    assert free_bytes(tmp_path / "missing") is None


def test_a_worker_lost_while_the_disk_was_full_is_not_charged(tmp_path: Path) -> None:
    lost = failed(JOB, _trial(attempt=3), "worker lost: exit code 1", 3, host=True)
    assert (lost.charged, lost.retry) == (False, True)
    free = {"bytes": 1 << 20}
    pause = HostPause(tmp_path, 16 << 20, measure=lambda _: free["bytes"])
    assert not pause.recent(0.0)
    pause.sample(0.0)
    free["bytes"] = 100 << 20
    assert pause.sample(1.0) is None and pause.recent(1.0)  # space back, but just now
    assert not pause.recent(1.0 + RECENT_S)


def test_a_worker_lost_to_a_disk_that_filled_since_the_last_sample_is_the_hosts(
    tmp_path: Path,
) -> None:
    """The worker died of the full disk before the daemon's next sample: measured at once."""
    free = {"bytes": 100 << 20}
    pause = HostPause(tmp_path, 16 << 20, measure=lambda _: free["bytes"])
    assert pause.sample(0.0) is None
    free["bytes"] = 0  # filled between two samples; the worker dies of it
    assert not pause.recent(0.5)
    assert pause.lost_to_host(0.5)
    assert pause.reason is not None and "min_free_disk_bytes" in pause.reason  # paused too
    free["bytes"] = 100 << 20
    assert not pause.lost_to_host(1.0 + RECENT_S)  # an ordinary loss, long after
