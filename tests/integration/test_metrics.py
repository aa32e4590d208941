"""The daemon's Prometheus endpoint, scraped over real HTTP while a real job runs.

The counters the log can answer must equal the log (read with ``read_events``) after the
job, and again after a restart, when they are set from the replayed state.
"""

from __future__ import annotations

import signal
import socket
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sentinel_daemon.daemon.service import EXIT_OK
from tests.daemonkit import (
    DATASET_ROWS,
    SLOW_SPACE,
    DaemonProcess,
    check_invariants,
    copy_dataset,
    make_dataset,
    of_type,
    read_events,
    summary,
    write_job,
)
from tests.helpers import wait_for

Series = dict[tuple[str, tuple[tuple[str, str], ...]], float]

#: Every family the daemon serves (prometheus_client drops ``_total`` from counter names).
FAMILIES = {
    "sentinel_trials_ended": "counter",
    "sentinel_trial_duration_seconds": "histogram",
    "sentinel_job_best_value": "gauge",
    "sentinel_jobs": "gauge",
    "sentinel_eventlog_records": "counter",
    "sentinel_eventlog_batches": "counter",
    "sentinel_eventlog_written_bytes": "counter",
    "sentinel_eventlog_fsync_duration_seconds": "histogram",
    "sentinel_queue_pending_commands": "gauge",
    "sentinel_workers_alive": "gauge",
    "sentinel_workers": "gauge",
    "sentinel_worker_threads": "gauge",
    "sentinel_workers_lost": "counter",
    "sentinel_gpus": "gauge",
    "sentinel_gpu_memory_used_bytes": "gauge",
    "sentinel_gpu_memory_total_bytes": "gauge",
    "sentinel_gpu_utilisation_ratio": "gauge",
    "sentinel_host_memory_available_bytes": "gauge",
    "sentinel_cpu_seconds": "counter",
    "sentinel_resident_memory_bytes": "gauge",
    "sentinel_dispatch_blocked": "gauge",
    "sentinel_degraded": "gauge",
    "sentinel_build_info": "gauge",
    "sentinel_state_filesystem_avail_bytes": "gauge",
    "sentinel_state_filesystem_size_bytes": "gauge",
}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("metrics-data"), rows=DATASET_ROWS)


@pytest.fixture
def port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def daemon(tmp_path: Path, dataset: Path, port: int) -> Iterator[DaemonProcess]:
    copy_dataset(dataset, tmp_path / "data")
    made = DaemonProcess(
        tmp_path,
        settings={
            "SENTINEL_METRICS__PORT": port,
            "SENTINEL_RESOURCES__SAMPLE_EVERY_S": "0.2",
            "SENTINEL_TRIALS__REPORT_EVERY": "1",
        },
        # Trial 1 is slow (a scrape lands mid-job); trial 2's first attempt fails (a retry).
        faults={"1": "slow", "2@1": "raise"},
    )
    yield made
    was_running = made.running()
    killed = made.cleanup()
    print("\n".join(made.log_text().splitlines()[-150:]))
    print(summary(made.events()))
    if killed and not was_running:
        pytest.fail(f"processes outlived their daemon: {killed}")


def scrape(port: int) -> tuple[dict[str, str], Series]:
    """Family name -> type, and (sample name, labels) -> value, from one real scrape."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    types: dict[str, str] = {}
    series: Series = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for s in family.samples:
            series[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return types, series


def get(series: Series, name: str, **labels: str) -> float | None:
    return series.get((name, tuple(sorted(labels.items()))))


def trial_counts_in(events: list[dict[str, Any]]) -> Counter[tuple[str, str]]:
    """(model, outcome) -> trials that ended so, counted from the log."""
    counts: Counter[tuple[str, str]] = Counter()
    for e in of_type(events, "trial.saved", "trial.pruned", "trial.failed"):
        if e["type"] != "trial.failed" or not e["retry"]:
            counts[(e["model"], e["type"].removeprefix("trial."))] += 1
    return counts


def trial_counts_scraped(series: Series) -> Counter[tuple[str, str]]:
    counts: Counter[tuple[str, str]] = Counter()
    for (name, labels), value in series.items():
        if name == "sentinel_trials_ended_total" and value:
            d = dict(labels)
            counts[(d["model"], d["outcome"])] += int(value)
    return counts


def mismatches(port: int, state_dir: Path) -> list[str]:
    """What a scrape says differently from the event log (empty: they agree)."""
    _, series = scrape(port)
    events = read_events(state_dir)
    wrong = []
    if trial_counts_scraped(series) != trial_counts_in(events):
        wrong.append(f"trials {trial_counts_scraped(series)} != log {trial_counts_in(events)}")
    if get(series, "sentinel_eventlog_records_total") != len(events):
        wrong.append(f"records {get(series, 'sentinel_eventlog_records_total')} != {len(events)}")
    lost = len(of_type(events, "worker.lost"))
    if get(series, "sentinel_workers_lost_total") != lost:
        wrong.append(f"workers lost {get(series, 'sentinel_workers_lost_total')} != {lost}")
    ends = {"job.completed": "completed", "job.failed": "failed", "job.cancelled": "cancelled"}
    ended = {e["job_id"]: ends[e["type"]] for e in events if e["type"] in ends}
    states = Counter(ended.get(e["job_id"], "running") for e in of_type(events, "job.submitted"))
    for state in ("running", *ends.values()):
        if get(series, "sentinel_jobs", state=state) != states[state]:
            wrong.append(f"jobs {state}: {get(series, 'sentinel_jobs', state=state)}")
    return wrong


def test_metrics_follow_the_event_log_during_a_job_after_it_and_across_a_restart(
    daemon: DaemonProcess, port: int
) -> None:
    daemon.start()
    job_file = write_job(
        daemon.root / "jobs", "observed", models=("xgboost", "lightgbm"), n_trials=2,
        space=SLOW_SPACE,
    )  # fmt: skip
    job_id = daemon.submit(job_file)

    # During the job: trial 0 saved, the slow trial 1 in flight.
    daemon.wait_for_event(
        lambda e: e["type"] == "trial.saved" and e.get("trial") == 0, what="trial 0 saved"
    )

    def sampled() -> tuple[dict[str, str], Series] | None:
        types, series = scrape(port)
        return (types, series) if get(series, "sentinel_workers_alive") == 1 else None

    types, during = wait_for(sampled, timeout=30, what="a scrape with the worker sampled")
    events = daemon.events()
    assert not of_type(events, "job.completed"), "the job ended before the mid-job scrape"
    assert {k: types.get(k) for k in FAMILIES} == FAMILIES  # per-GPU ones without samples here
    assert all(name.startswith(("sentinel_", "process_")) for name in types), sorted(types)
    # `job` and `instance` are Prometheus's target labels: a job's id is `job_id`.
    labels = {name for _, pairs in during for name, _ in pairs}
    assert not labels & {"job", "instance"}, sorted(labels)
    assert get(during, "sentinel_jobs", state="running") == 1
    best = get(during, "sentinel_job_best_value", job_id=job_id)
    assert best in {e["value"] for e in of_type(events, "trial.saved")}
    assert (get(during, "sentinel_eventlog_records_total") or 0) <= len(events)
    assert trial_counts_scraped(during) <= trial_counts_in(events)  # the log only grows
    gpus = get(during, "sentinel_gpus")
    assert gpus is not None
    per_gpu = [k for k in during if k[0] == "sentinel_gpu_memory_total_bytes"]
    assert len(per_gpu) == gpus  # 0 without NVML or GPU: CPU workers, no crash
    assert (get(during, "sentinel_resident_memory_bytes", role="worker") or 0) > 50 << 20
    assert (get(during, "sentinel_resident_memory_bytes", role="daemon") or 0) > 20 << 20
    assert (get(during, "sentinel_cpu_seconds_total", role="daemon") or 0) > 0
    assert (get(during, "sentinel_host_memory_available_bytes") or 0) > 0
    for reason in ("admission", "no_scheduler", "no_capacity", "writes_failing", "disk_full"):
        assert get(during, "sentinel_dispatch_blocked", reason=reason) == 0, reason

    # After: the counters equal the log; the fsyncs, batches and bytes match each other.
    daemon.wait_for_job(job_id)
    events = check_invariants(daemon.state_dir)
    assert of_type(events, "trial.failed", retry=True)  # a retried attempt, not counted
    wait_for(lambda: not mismatches(port, daemon.state_dir), timeout=20, what="metrics = log")
    _, after = scrape(port)
    batches = get(after, "sentinel_eventlog_batches_total")
    assert batches is not None and 0 < batches <= len(events)
    assert get(after, "sentinel_eventlog_fsync_duration_seconds_count") == batches
    log_bytes = sum(p.stat().st_size for p in (daemon.state_dir / "events").glob("*.jsonl"))
    assert get(after, "sentinel_eventlog_written_bytes_total") == log_bytes
    assert get(after, "sentinel_trial_duration_seconds_count") == len(
        of_type(events, "trial.saved")
    )
    assert get(after, "sentinel_job_best_value", job_id=job_id) is None  # gone with its job
    assert get(after, "sentinel_jobs", state="completed") == 1

    # Stopped: the port is closed. Restarted: counters set from the replayed state.
    assert daemon.stop(signal.SIGTERM) == EXIT_OK
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass
    daemon.start()
    daemon.wait_for_event(
        lambda e: e["type"] == "daemon.started" and e["seq"] > len(events), what="the restart"
    )
    wait_for(lambda: not mismatches(port, daemon.state_dir), timeout=30, what="metrics = log")
    _, restarted = scrape(port)
    assert trial_counts_scraped(restarted) == trial_counts_in(events)

    # The histogram of saved trials is the log's, so the restart keeps it whole...
    def durations(series: Series) -> Series:
        return {k: v for k, v in series.items() if k[0].startswith("sentinel_trial_duration")}

    assert durations(restarted) == durations(after)

    # ... and so is the log's size; what the log does not hold counts from this start.
    def bytes_match() -> Series | None:
        _, series = scrape(port)
        on_disk = sum(p.stat().st_size for p in (daemon.state_dir / "events").glob("*.jsonl"))
        return series if get(series, "sentinel_eventlog_written_bytes_total") == on_disk else None

    restarted = wait_for(bytes_match, timeout=20, what="written bytes = the log's size")
    restarted_batches = get(restarted, "sentinel_eventlog_batches_total") or 0
    assert 0 < restarted_batches < (batches or 0)
    assert get(restarted, "sentinel_eventlog_fsync_duration_seconds_count") == restarted_batches
    assert daemon.stop() == EXIT_OK
