"""The daemon's metrics: counters set from a replayed state equal the log, then follow it."""

from __future__ import annotations

import platform
import socket
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sentinel_daemon import __version__
from sentinel_daemon.core.events import (
    Event,
    JobCompleted,
    JobSubmitted,
    TrialFailed,
    TrialPruned,
    TrialSaved,
    TrialStarted,
    WorkerLost,
    WorkerStarted,
)
from sentinel_daemon.core.ids import WorkerId
from sentinel_daemon.core.state import TRIAL_DURATION_BUCKETS, State, apply
from sentinel_daemon.daemon.metrics import DaemonMetrics
from sentinel_daemon.daemon.monitor import GpuReading, ProcessReading, Readings


def submitted(job: str) -> JobSubmitted:
    return JobSubmitted(job_id=job, name=job, spec={}, file=f"{job}.yaml", file_sha256="0" * 64)


def started(job: str, trial: int, model: str = "xgboost", attempt: int = 1) -> TrialStarted:
    return TrialStarted(job_id=job, trial=trial, model=model, params={}, attempt=attempt)


def saved(job: str, trial: int, value: float, model: str = "xgboost") -> TrialSaved:
    return TrialSaved(
        job_id=job,
        trial=trial,
        model=model,
        value=value,
        metrics={"roc_auc": value},
        artifact=f"jobs/{job}/{trial}",
        sha256="a" * 64,
        duration_s=3.0,
    )


def failed(job: str, trial: int, attempt: int, retry: bool, model: str = "xgboost") -> TrialFailed:
    return TrialFailed(
        job_id=job, trial=trial, model=model, error="boom", attempt=attempt, retry=retry
    )


#: Job "old" ends (its trials are folded into counts); job "new" is still running.
HISTORY: list[Event] = [
    WorkerStarted(worker=WorkerId("w0-1-1"), pid=10, gpu=None),
    submitted("old"),
    started("old", 0),
    saved("old", 0, 0.8),
    started("old", 1, "lightgbm"),
    failed("old", 1, 1, True, "lightgbm"),  # retried: not an ended trial
    started("old", 1, "lightgbm", attempt=2),
    failed("old", 1, 2, False, "lightgbm"),
    started("old", 2),
    TrialPruned(job_id="old", trial=2, model="xgboost", step=10, value=0.5),
    JobCompleted(job_id="old", best_trial=0, best_value=0.8, promoted=False),
    WorkerLost(worker=WorkerId("w0-1-1"), pid=10, gpu=None, reason="killed", signal=9),
    submitted("new"),
    started("new", 0),
    saved("new", 0, 0.7),
    started("new", 1),
    saved("new", 1, 0.9),
    started("new", 2),
]


def replay(events: list[Event]) -> State:
    state = State()
    for event in events:
        apply(state, event)
        state.last_seq += 1
    return state


def value(m: DaemonMetrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


def log_backed(m: DaemonMetrics) -> dict[str, float | None]:
    """Every series the log determines, by name and labels."""
    out: dict[str, float | None] = {}
    for family in m.registry.collect():
        if family.name in ("sentinel_trials_ended", "sentinel_jobs", "sentinel_job_best_value",
                           "sentinel_workers_lost", "sentinel_eventlog_records",
                           "sentinel_trial_duration_seconds"):  # fmt: skip
            for s in family.samples:
                if not s.name.endswith("_created"):
                    out[s.name + repr(sorted(s.labels.items()))] = s.value
    return out


def test_counters_set_from_a_replayed_state_count_the_whole_log() -> None:
    m = DaemonMetrics()
    m.initialise(replay(HISTORY))
    assert value(m, "sentinel_trials_ended_total", model="xgboost", outcome="saved") == 3
    assert value(m, "sentinel_trials_ended_total", model="xgboost", outcome="pruned") == 1
    assert value(m, "sentinel_trials_ended_total", model="lightgbm", outcome="failed") == 1
    assert value(m, "sentinel_trials_ended_total", model="lightgbm", outcome="saved") == 0
    assert value(m, "sentinel_eventlog_records_total") == len(HISTORY)
    assert value(m, "sentinel_workers_lost_total") == 1
    assert value(m, "sentinel_jobs", state="running") == 1
    assert value(m, "sentinel_jobs", state="completed") == 1
    assert value(m, "sentinel_jobs", state="failed") == 0
    assert value(m, "sentinel_job_best_value", job_id="new") == 0.9
    assert value(m, "sentinel_job_best_value", job_id="old") is None  # ended: no series


@pytest.mark.parametrize("cut", range(len(HISTORY) + 1))
def test_a_restart_at_any_point_then_the_rest_gives_the_same_series_as_the_whole_log(
    cut: int,
) -> None:
    whole = DaemonMetrics()
    whole.initialise(replay(HISTORY))
    restarted = DaemonMetrics()
    state = replay(HISTORY[:cut])
    restarted.initialise(state)
    for event in HISTORY[cut:]:
        apply(state, event)
        state.last_seq += 1
        restarted.appended(1, 100)
        restarted.observe([event], state)
    assert log_backed(restarted) == log_backed(whole)


def test_the_best_value_series_of_a_job_goes_when_the_job_ends() -> None:
    m = DaemonMetrics()
    state = replay([submitted("j"), started("j", 0)])
    m.initialise(state)
    for event in (saved("j", 0, 0.75), JobCompleted(job_id="j", best_trial=0, best_value=0.75,
                                                    promoted=False)):  # fmt: skip
        apply(state, event)
        m.observe([event], state)
        if isinstance(event, TrialSaved):
            assert value(m, "sentinel_job_best_value", job_id="j") == 0.75
            assert value(m, "sentinel_trial_duration_seconds_count") == 1
    assert value(m, "sentinel_job_best_value", job_id="j") is None
    assert value(m, "sentinel_jobs", state="completed") == 1


def test_log_appends_and_fsyncs_are_counted() -> None:
    m = DaemonMetrics()
    synced: list[int] = []
    m.timed_sync(synced.append)(7)
    m.appended(3, 512)
    assert synced == [7]
    assert value(m, "sentinel_eventlog_fsync_duration_seconds_count") == 1
    assert value(m, "sentinel_eventlog_records_total") == 3
    assert value(m, "sentinel_eventlog_batches_total") == 1
    assert value(m, "sentinel_eventlog_written_bytes_total") == 512


def test_cpu_seconds_only_grow_when_a_worker_ends_or_its_pid_is_reused() -> None:
    m = DaemonMetrics()

    def sample(*workers: ProcessReading) -> float:
        m.sampled(
            Readings(
                host_available_bytes=1 << 30,
                gpus=(GpuReading(0, 1 << 30, 4 << 30, 0.25),),
                workers={f"w{i}-1-1": w for i, w in enumerate(workers)},
                daemon=ProcessReading(100, {(1, 0.0): 2.0}),
            ),
            pending=4,
            workers_alive=len(workers),
        )
        return value(m, "sentinel_cpu_seconds_total", role="worker") or 0.0

    assert sample(ProcessReading(10, {(5, 1.0): 3.0}), ProcessReading(10, {(6, 1.0): 1.0})) == 4
    assert sample(ProcessReading(10, {(5, 1.0): 5.0})) == 6  # pid 6 ended: it keeps its 1 s
    assert sample(ProcessReading(10, {(5, 1.0): 5.0, (6, 9.0): 0.5})) == 6.5  # pid 6 reused
    assert value(m, "sentinel_resident_memory_bytes", role="worker") == 10
    assert value(m, "sentinel_cpu_seconds_total", role="daemon") == 2.0
    assert value(m, "sentinel_queue_pending_commands") == 4
    assert value(m, "sentinel_gpu_memory_total_bytes", gpu="0") == 4 << 30
    assert value(m, "sentinel_gpu_utilisation_ratio", gpu="0") == 0.25


def test_dispatch_blocked_is_one_series_per_reason_each_zero_until_it_holds() -> None:
    m = DaemonMetrics()
    reasons = ("admission", "no_scheduler", "no_capacity", "writes_failing", "disk_full")
    assert [value(m, "sentinel_dispatch_blocked", reason=r) for r in reasons] == [0, 0, 0, 0, 0]
    m.blocked(["no_capacity", "admission"])
    assert [value(m, "sentinel_dispatch_blocked", reason=r) for r in reasons] == [1, 0, 1, 0, 0]
    m.blocked(["no_scheduler"])
    assert [value(m, "sentinel_dispatch_blocked", reason=r) for r in reasons] == [0, 1, 0, 0, 0]
    m.blocked([])
    assert [value(m, "sentinel_dispatch_blocked", reason=r) for r in reasons] == [0, 0, 0, 0, 0]


def test_the_server_serves_the_registry_on_loopback_and_closes_its_port() -> None:
    m = DaemonMetrics()
    m.initialise(replay(HISTORY))
    port = m.serve("127.0.0.1", 0)
    try:
        assert port is not None and port == m.port
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        names = {f.name for f in text_string_to_metric_families(text)}
        assert {"sentinel_trials_ended", "sentinel_eventlog_fsync_duration_seconds"} <= names
        assert all(name.startswith(("sentinel_", "process_")) for name in names)
        # The port is taken: a second server fails, logged, not raised.
        assert DaemonMetrics().serve("127.0.0.1", port) is None
    finally:
        m.close()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass


def test_trial_durations_come_from_the_state_so_a_restart_keeps_the_whole_histogram() -> None:
    state = replay(HISTORY)  # three saved trials of 3.0 s, one in an ended job
    m = DaemonMetrics()
    m.initialise(state)
    assert value(m, "sentinel_trial_duration_seconds_count") == 3
    assert value(m, "sentinel_trial_duration_seconds_sum") == 9.0
    assert value(m, "sentinel_trial_duration_seconds_bucket", le="2.0") == 0
    assert value(m, "sentinel_trial_duration_seconds_bucket", le="5.0") == 3
    assert value(m, "sentinel_trial_duration_seconds_bucket", le="+Inf") == 3
    later = saved("new", 2, 0.95)
    apply(state, later)
    m.observe([later], state)
    assert value(m, "sentinel_trial_duration_seconds_count") == 4
    bounds = [float(b) for b in TRIAL_DURATION_BUCKETS]
    served = [
        float(s.labels["le"])
        for f in m.registry.collect()
        if f.name == "sentinel_trial_duration_seconds"
        for s in f.samples
        if s.name.endswith("_bucket") and s.labels["le"] != "+Inf"
    ]
    assert served == bounds


def test_no_series_has_a_job_or_instance_label_and_the_best_value_is_by_job_id() -> None:
    m = DaemonMetrics()
    m.initialise(replay(HISTORY))
    labels = {k for f in m.registry.collect() for s in f.samples for k in s.labels}
    assert not labels & {"job", "instance"}, labels
    assert value(m, "sentinel_job_best_value", job_id="new") == 0.9


def test_written_bytes_start_from_the_segments_on_disk_and_batches_from_zero(
    tmp_path: Path,
) -> None:
    events = tmp_path / "events"
    events.mkdir()
    (events / f"{1:020d}.jsonl").write_bytes(b"x" * 700)
    (events / f"{9:020d}.jsonl").write_bytes(b"y" * 300)
    (events / "notes.txt").write_bytes(b"not a segment")
    m = DaemonMetrics(tmp_path)
    m.initialise(replay(HISTORY))
    assert value(m, "sentinel_eventlog_written_bytes_total") == 1000
    # Batch boundaries and fsync times are not in the log: they count from this start.
    assert value(m, "sentinel_eventlog_batches_total") == 0
    assert value(m, "sentinel_eventlog_fsync_duration_seconds_count") == 0
    m.appended(2, 24)
    assert value(m, "sentinel_eventlog_written_bytes_total") == 1024
    assert value(m, "sentinel_eventlog_batches_total") == 1


def test_build_info_process_and_state_file_system_series_are_registered(tmp_path: Path) -> None:
    m = DaemonMetrics(tmp_path)
    info = {"version": __version__, "python": platform.python_version()}
    assert value(m, "sentinel_build_info", **info) == 1
    assert (value(m, "process_resident_memory_bytes") or 0) > 0
    assert (value(m, "process_start_time_seconds") or 0) > 0
    avail = value(m, "sentinel_state_filesystem_avail_bytes")
    size = value(m, "sentinel_state_filesystem_size_bytes")
    assert avail is not None and size is not None and 0 <= avail <= size
    assert value(m, "sentinel_degraded") == 0
    gone = DaemonMetrics(tmp_path / "not-yet")
    assert value(gone, "sentinel_state_filesystem_avail_bytes") is None  # no sample, no error


def test_workers_and_their_threads_are_counted_by_device_both_always_present() -> None:
    m = DaemonMetrics()
    readings = Readings(host_available_bytes=1 << 30, gpus=(), workers={}, daemon=None)
    m.sampled(readings, pending=0, workers_alive=0)
    assert [value(m, "sentinel_workers", device=d) for d in ("gpu", "cpu")] == [0, 0]
    m.sampled(readings, pending=0, workers_alive=3, by_device={"gpu": (2, 2), "cpu": (1, 14)})
    assert value(m, "sentinel_workers", device="gpu") == 2
    assert value(m, "sentinel_worker_threads", device="cpu") == 14
