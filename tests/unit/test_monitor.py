"""Admission control and the memory ceiling, judged from injected readings (no NVML needed)."""

from __future__ import annotations

import os
from pathlib import Path

from structlog.testing import capture_logs

from sentinel_daemon.core.events import StageCompleted, StageStarted, TrialFailed, TrialStarted
from sentinel_daemon.core.ids import WorkerId
from sentinel_daemon.daemon.decisions import Tick
from sentinel_daemon.daemon.monitor import (
    MIB,
    AdmissionGate,
    GpuReading,
    Nvml,
    ProcessReading,
    Readings,
    ResourceMonitor,
    blocked_reason,
    ceiling_reason,
    over_ceiling,
)
from sentinel_daemon.settings import ResourceSettings
from tests.unit.test_jobs import JOB, Harness

FLOORS = ResourceSettings(min_free_host_bytes=512 * MIB, min_free_gpu_bytes=1024 * MIB)


def readings(host_mib: int = 4096, *gpus: GpuReading) -> Readings:
    return Readings(host_available_bytes=host_mib * MIB, gpus=gpus)


def gpu(index: int, free_mib: int, total_mib: int = 8192) -> GpuReading:
    return GpuReading(index, (total_mib - free_mib) * MIB, total_mib * MIB, 0.5)


def test_trials_are_admitted_when_host_and_used_gpus_have_memory_above_their_floors() -> None:
    assert blocked_reason(readings(4096, gpu(0, 2048), gpu(1, 4096)), FLOORS, [0, 1]) is None


def test_low_host_memory_blocks_and_names_the_figure_and_the_setting() -> None:
    reason = blocked_reason(readings(100), FLOORS, [])
    assert reason is not None
    assert "100.0 MiB" in reason and "resources.min_free_host_bytes" in reason


def test_a_full_gpu_blocks_only_when_a_worker_uses_it() -> None:
    full = readings(4096, gpu(0, 4096), gpu(1, 100))
    assert blocked_reason(full, FLOORS, [0]) is None
    reason = blocked_reason(full, FLOORS, [0, 1])
    assert reason is not None and "GPU 1" in reason and "min_free_gpu_bytes" in reason


def test_a_gpu_without_a_reading_does_not_block() -> None:
    assert blocked_reason(readings(4096), FLOORS, [0, 1]) is None


def test_zero_floors_never_block() -> None:
    none = ResourceSettings(min_free_host_bytes=0, min_free_gpu_bytes=0)
    assert blocked_reason(readings(0, gpu(0, 0)), none, [0]) is None


def test_the_gate_logs_once_when_blocking_starts_and_once_when_it_ends() -> None:
    gate = AdmissionGate(FLOORS)
    with capture_logs() as logs:
        assert gate.update(readings(100), []) is False
        assert gate.update(readings(90), []) is False
        assert not gate.admitting
        assert gate.update(readings(4096), []) is True
        assert gate.update(readings(4096), []) is True
    assert [e["event"] for e in logs] == [
        "resources.dispatch_blocked",
        "resources.dispatch_resumed",
    ]
    assert "min_free_host_bytes" in logs[0]["reason"]
    assert gate.admitting and gate.reason is None


def test_only_workers_over_the_ceiling_are_named_and_zero_means_no_ceiling() -> None:
    seen = Readings(
        host_available_bytes=0,
        workers={"w0-1-1": ProcessReading(300 * MIB), "w1-1-1": ProcessReading(700 * MIB)},
    )
    assert over_ceiling(seen, 500 * MIB) == {"w1-1-1": 700 * MIB}
    assert over_ceiling(seen, 0) == {}
    reason = ceiling_reason(700 * MIB, 500 * MIB)
    assert "700.0 MiB" in reason and "500.0 MiB" in reason and "ceiling" in reason
    assert "resources.worker_memory_max_bytes" in reason


class FakeGpus:
    def __init__(self, *gpus: GpuReading) -> None:
        self.gpus = gpus
        self.closed = False

    def read(self) -> tuple[GpuReading, ...]:
        return self.gpus

    def close(self) -> None:
        self.closed = True


def test_the_monitor_samples_worker_trees_the_daemon_and_the_injected_sources() -> None:
    gpus = FakeGpus(gpu(0, 1000))
    monitor = ResourceMonitor([0], gpu_source=gpus, host_available=lambda: 42, daemon_pid=1)
    me = WorkerId("w0-1-1")
    seen = monitor.sample({me: os.getpid(), WorkerId("w1-1-1"): 2**22 + 12345})  # no such pid
    assert seen.host_available_bytes == 42
    assert seen.gpus == gpus.gpus
    assert list(seen.workers) == [me]  # a process that is gone is left out
    assert seen.workers[me].rss_bytes > 10 * MIB
    assert any(pid == os.getpid() for pid, _ in seen.workers[me].cpu_seconds)
    assert seen.daemon is not None and seen.daemon.rss_bytes > 0
    monitor.close()
    assert gpus.closed


def test_nvml_without_a_driver_or_a_gpu_reads_as_no_gpu_and_never_raises() -> None:
    for indices in ([], [0]):
        nvml = Nvml(indices)
        try:
            # Here (no NVIDIA driver) nothing; on a GPU host, a reading per GPU found.
            assert all(isinstance(g, GpuReading) for g in nvml.read())
        finally:
            nvml.close()
        assert nvml.read() == ()


def test_a_blocked_job_starts_no_trial_and_no_retry_but_still_moves_between_stages(
    tmp_path: Path,
) -> None:
    h = Harness(tmp_path, max_attempts=2, n_trials=1, parallelism=2)
    assert h.decide(Tick(True, admit=False)) == [StageStarted(job_id=JOB, stage="prepare")]
    h.append(
        StageStarted(job_id=JOB, stage="prepare"),
        StageCompleted(job_id=JOB, stage="prepare", outputs={}),
        StageStarted(job_id=JOB, stage="search"),
    )
    assert h.decide(Tick(True, admit=False)) == []  # no new trial
    first = h.fill()
    assert [type(e) for e in first] == [TrialStarted, TrialStarted]
    failed = TrialFailed(job_id=JOB, trial=0, model="xgboost", error="x", attempt=1, retry=True)
    h.append(failed)
    h.actor.fold(failed)
    assert h.decide(Tick(True, admit=False)) == []  # no retry either
    (retry,) = h.step()  # admitted again: the retry starts
    assert isinstance(retry, TrialStarted) and retry.attempt == 2
    h.save(0, 0.8)
    h.save(1, 0.7)
    (done,) = h.decide(Tick(True, admit=False))  # the search still completes
    assert isinstance(done, StageCompleted) and done.stage == "search"
