"""The resource monitor: host and GPU memory, and the memory and CPU of each local worker.

The daemon's core loop calls :meth:`ResourceMonitor.sample` every
``resources.sample_every_s``; the readings feed three things:

- admission control (:class:`AdmissionGate`): no new trial, and no retry, is dispatched
  while the host's available memory, or the free memory of any GPU a worker uses, is under
  its floor (``resources.min_free_host_bytes``, ``resources.min_free_gpu_bytes``). Stage
  transitions go on; trials already queued are not withdrawn;
- the per-worker memory ceiling (:func:`over_ceiling`): a worker whose process tree (the
  worker and its children) holds more resident memory than
  ``resources.worker_memory_max_bytes`` is killed by the supervisor, and the reason
  (:func:`ceiling_reason`) names the figure and the ceiling;
- the sampled Prometheus series (:mod:`sentinel_daemon.daemon.metrics`).

psutil is always there; NVML (``pynvml``, from nvidia-ml-py) is used when it loads and
finds the GPUs the daemon discovered. No NVML, no driver, or a GPU that stops answering
means no GPU readings (and so no GPU floor), never an exception.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import psutil
import structlog

from sentinel_daemon.core.ids import WorkerId
from sentinel_daemon.daemon.dispatch import Dispatcher
from sentinel_daemon.settings import ResourceSettings

log = structlog.get_logger(__name__)

MIB = 1 << 20

#: A process as psutil can tell it apart from a later one that reuses its pid.
ProcessKey = tuple[int, float]  # (pid, create_time)


@dataclass(frozen=True, slots=True)
class GpuReading:
    """One GPU as NVML saw it; ``utilisation`` is a ratio (0-1), None when unreadable."""

    index: int
    used_bytes: int
    total_bytes: int
    utilisation: float | None = None

    @property
    def free_bytes(self) -> int:
        return max(self.total_bytes - self.used_bytes, 0)


@dataclass(frozen=True, slots=True)
class ProcessReading:
    """A process tree: resident memory summed over it, CPU seconds of each of its processes.

    CPU is kept per process so that a consumer can count what each one used since it last
    looked (a sum over live processes would shrink when one ends).
    """

    rss_bytes: int
    cpu_seconds: Mapping[ProcessKey, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Readings:
    """What one :meth:`ResourceMonitor.sample` saw."""

    host_available_bytes: int
    gpus: tuple[GpuReading, ...] = ()
    workers: Mapping[str, ProcessReading] = field(default_factory=dict)
    daemon: ProcessReading | None = None


class GpuSource(Protocol):
    """Where GPU readings come from (NVML in the daemon, a fake in tests)."""

    def read(self) -> tuple[GpuReading, ...]: ...

    def close(self) -> None: ...


# ---- decisions (pure) ---------------------------------------------------------------------


def mib(n: int) -> str:
    return f"{n / MIB:.1f} MiB"


def blocked_reason(
    readings: Readings, settings: ResourceSettings, gpus_in_use: Iterable[int]
) -> str | None:
    """Why a new trial must wait, or None when it may be dispatched.

    A GPU with no reading does not block: without NVML there is nothing to judge by.
    """
    floor = settings.min_free_host_bytes
    if readings.host_available_bytes < floor:
        return (
            f"host memory available {mib(readings.host_available_bytes)} is under "
            f"resources.min_free_host_bytes ({mib(floor)})"
        )
    by_index = {g.index: g for g in readings.gpus}
    floor = settings.min_free_gpu_bytes
    for index in sorted(set(gpus_in_use)):
        gpu = by_index.get(index)
        if gpu is not None and gpu.free_bytes < floor:
            return (
                f"GPU {index} has {mib(gpu.free_bytes)} free of {mib(gpu.total_bytes)}, under "
                f"resources.min_free_gpu_bytes ({mib(floor)})"
            )
    return None


def over_ceiling(readings: Readings, ceiling: int) -> dict[str, int]:
    """Worker id -> resident bytes, for each worker over ``ceiling`` (0: no ceiling)."""
    if ceiling <= 0:
        return {}
    return {w: r.rss_bytes for w, r in readings.workers.items() if r.rss_bytes > ceiling}


def ceiling_reason(rss_bytes: int, ceiling: int) -> str:
    """The reason a worker is killed for its memory: the figure and the ceiling."""
    return (
        f"over its memory ceiling: its processes held {mib(rss_bytes)} ({rss_bytes} bytes) "
        f"resident, over resources.worker_memory_max_bytes {mib(ceiling)} ({ceiling} bytes)"
    )


class AdmissionGate:
    """Whether new trials may be dispatched; logs once when blocking starts and ends."""

    def __init__(self, settings: ResourceSettings) -> None:
        self.settings = settings
        self.reason: str | None = None

    @property
    def admitting(self) -> bool:
        return self.reason is None

    def update(self, readings: Readings, gpus_in_use: Iterable[int]) -> bool:
        """Judge ``readings``; returns whether new trials may be dispatched."""
        reason = blocked_reason(readings, self.settings, gpus_in_use)
        if reason is not None and self.reason is None:
            log.warning("resources.dispatch_blocked", reason=reason)
        elif reason is None and self.reason is not None:
            log.info("resources.dispatch_resumed", was=self.reason)
        self.reason = reason
        return reason is None


# ---- sampling (I/O) -----------------------------------------------------------------------


def host_available_bytes() -> int:
    return int(psutil.virtual_memory().available)


def sample_tree(pid: int, *, children: bool = True) -> ProcessReading | None:
    """``pid`` and (with ``children``) its descendants; None when ``pid`` is gone."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)] if children else [root]
    except psutil.Error:
        return None
    rss = 0
    cpu: dict[ProcessKey, float] = {}
    for proc in procs:
        try:
            with proc.oneshot():
                rss += proc.memory_info().rss
                times = proc.cpu_times()
                cpu[(proc.pid, proc.create_time())] = times.user + times.system
        except psutil.Error:
            continue  # ended meanwhile (or a zombie): it holds no memory any more
    return ProcessReading(rss_bytes=rss, cpu_seconds=cpu)


class Nvml:
    """NVML, opened once, for the GPUs at ``indices``; every failure reads as no GPU."""

    def __init__(self, indices: Sequence[int]) -> None:
        self._nvml: Any = None
        self._handles: dict[int, Any] = {}
        self._failed: set[int] = set()
        if not indices:
            return
        try:
            import pynvml

            pynvml.nvmlInit()
        except Exception as exc:  # ImportError, NVMLError: no library, driver or device
            log.warning("resources.nvml_unavailable", reason=str(exc), gpus=list(indices))
            return
        self._nvml = pynvml
        for index in indices:
            try:
                self._handles[index] = pynvml.nvmlDeviceGetHandleByIndex(index)
            except pynvml.NVMLError as exc:
                log.warning("resources.gpu_unreadable", gpu=index, reason=str(exc))

    def read(self) -> tuple[GpuReading, ...]:
        if self._nvml is None:
            return ()
        nvml = self._nvml
        out = []
        for index, handle in self._handles.items():
            try:
                memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            except nvml.NVMLError as exc:
                if index not in self._failed:  # once per GPU: this runs every second
                    self._failed.add(index)
                    log.warning("resources.gpu_unreadable", gpu=index, reason=str(exc))
                continue
            utilisation: float | None = None
            with contextlib.suppress(nvml.NVMLError):  # some GPUs do not report it
                utilisation = nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100.0
            self._failed.discard(index)
            out.append(GpuReading(index, int(memory.used), int(memory.total), utilisation))
        return tuple(out)

    def close(self) -> None:
        if self._nvml is not None:
            with contextlib.suppress(self._nvml.NVMLError):
                self._nvml.nvmlShutdown()
            self._nvml = None
            self._handles = {}


class ResourceMonitor:
    """Samples host memory, GPUs and processes (see the module doc).

    ``gpus`` are the NVML indices the daemon uses; NVML is opened at the first sample.
    ``gpu_source`` and ``host_available`` replace NVML and psutil in tests.
    """

    def __init__(
        self,
        gpus: Sequence[int],
        *,
        gpu_source: GpuSource | None = None,
        host_available: Callable[[], int] = host_available_bytes,
        daemon_pid: int | None = None,
    ) -> None:
        self.gpus = list(gpus)
        self._gpu_source = gpu_source
        self._host_available = host_available
        self._daemon_pid = daemon_pid

    def sample(self, workers: Mapping[WorkerId, int]) -> Readings:
        """Read everything once; ``workers`` maps worker ids to their pids."""
        if self._gpu_source is None:
            self._gpu_source = Nvml(self.gpus)
        trees: dict[str, ProcessReading] = {}
        for worker, pid in workers.items():
            reading = sample_tree(pid)
            if reading is not None:
                trees[worker] = reading
        daemon = None
        if self._daemon_pid is not None:
            # The daemon alone: its descendants are the workers (and stage processes).
            daemon = sample_tree(self._daemon_pid, children=False)
        return Readings(
            host_available_bytes=self._host_available(),
            gpus=self._gpu_source.read(),
            workers=trees,
            daemon=daemon,
        )

    def close(self) -> None:
        if self._gpu_source is not None:
            self._gpu_source.close()
            self._gpu_source = None


__all__ = [
    "AdmissionGate",
    "GpuReading",
    "GpuSource",
    "Nvml",
    "ProcessReading",
    "Readings",
    "ResourceMonitor",
    "blocked_reason",
    "ceiling_reason",
    "over_ceiling",
    "sample_tree",
]


def sample_round(
    monitor: ResourceMonitor, admission: AdmissionGate, dispatcher: Dispatcher, ceiling: int
) -> Readings:
    """One round of the monitor: read, update admission, kill workers over ``ceiling``."""
    readings = monitor.sample(dispatcher.worker_pids())
    admission.update(readings, dispatcher.gpus_in_use())
    for worker, rss in over_ceiling(readings, ceiling).items():
        if dispatcher.kill(worker, ceiling_reason(rss, ceiling)):
            log.warning(
                "daemon.worker_over_memory_ceiling",
                worker=worker,
                rss_bytes=rss,
                ceiling_bytes=ceiling,
            )
    return readings
