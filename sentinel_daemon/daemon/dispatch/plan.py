"""The local workers' plan: how many GPU and CPU workers, and the threads of each (pure).

A GPU worker trains on its GPU and needs a CPU thread only to feed it: it gets
:data:`GPU_WORKER_THREADS`. CPU workers share the cores left. All workers together never
take more threads than the cores, except where the operator asked for more workers than
there are cores (each worker has at least one thread; :attr:`WorkerPlan.oversubscribed`
says so, and the daemon logs it).

``workers.count`` (``sentinel run --workers N``) keeps its meaning of "N local workers in
all": GPU workers first, up to ``per_gpu`` a GPU, the rest CPU workers; with no GPU, N CPU
workers sharing the cores (as before GPU and CPU workers ran side by side). Without it:

- ``per_gpu`` workers on each GPU, fewer where the cores would not leave one for the CPU
  workers (never fewer than one a GPU);
- ``cpu`` CPU workers; null: one per :data:`CPU_WORKER_THREADS` cores left, at least one
  (on a 2-core host without GPU: one worker with both cores, as before), none only when
  the GPU workers took every core; 0: none.

The cores are those this process may run on (:func:`host_cores`: its CPU affinity, which
systemd's ``CPUAffinity=`` and ``taskset`` narrow), not every core of the host.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from sentinel_daemon.queue.routing import Device, lanes_in_use

#: Threads of a GPU worker: the training runs on the device; one thread feeds it.
GPU_WORKER_THREADS = 1
#: Cores per automatic CPU worker: two threads each train a LightGBM trial well, and more
#: workers serve a job's ``parallelism`` better than fewer, wider ones.
CPU_WORKER_THREADS = 2


@dataclass(frozen=True)
class WorkerSpec:
    """One local worker's place: its GPU (None: a CPU worker) and its threads."""

    gpu: int | None
    threads: int

    @property
    def device(self) -> Device:
        return "cpu" if self.gpu is None else "gpu"


@dataclass(frozen=True)
class WorkerPlan:
    """The local workers, GPU workers first, and the cores they were planned for."""

    workers: tuple[WorkerSpec, ...]
    cores: int

    @property
    def threads(self) -> int:
        return sum(w.threads for w in self.workers)

    @property
    def oversubscribed(self) -> bool:
        return self.threads > self.cores

    def count(self, device: Device) -> int:
        return sum(1 for w in self.workers if w.device == device)

    @property
    def lanes(self) -> frozenset[Device]:
        """The queue lanes these workers make (both kinds: one each; else none)."""
        return lanes_in_use({w.device for w in self.workers})

    def describe(self) -> dict[str, object]:
        """For the log and ``health.json``: counts and threads by kind."""
        return {
            "gpu_workers": self.count("gpu"),
            "cpu_workers": self.count("cpu"),
            "threads": self.threads,
            "cores": self.cores,
            "lanes": sorted(self.lanes),
        }


def host_cores() -> int:
    """The cores this process may run on (its affinity), at least one."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def plan_workers(
    *,
    cores: int,
    gpus: list[int],
    per_gpu: int,
    cpu: int | None,
    count: int | None,
) -> WorkerPlan:
    """The plan for ``cores`` cores and ``gpus`` (see the module doc)."""
    cores = max(1, cores)
    if count is not None:
        n_gpu = min(count, len(gpus) * per_gpu)
        n_cpu = count - n_gpu
    else:
        reserve = 1 if cpu is None else cpu  # threads the CPU workers need at the least
        n_gpu = len(gpus) * per_gpu
        while n_gpu > len(gpus) and n_gpu * GPU_WORKER_THREADS + reserve > cores:
            n_gpu -= 1
        left = cores - n_gpu * GPU_WORKER_THREADS
        # Automatic: at least one, unless the GPU workers took every core.
        auto = max(1, left // CPU_WORKER_THREADS) if left > 0 else 0
        n_cpu = cpu if cpu is not None else auto
    # Round robin over the GPUs, so that dropping workers from the end keeps them even.
    gpu_specs = [WorkerSpec(gpus[i % len(gpus)], GPU_WORKER_THREADS) for i in range(n_gpu)]
    left = cores - n_gpu * GPU_WORKER_THREADS
    threads = max(1, left // n_cpu) if n_cpu else 0
    cpu_specs = [WorkerSpec(None, threads) for _ in range(n_cpu)]
    return WorkerPlan(tuple(gpu_specs + cpu_specs), cores)


__all__ = [
    "CPU_WORKER_THREADS",
    "GPU_WORKER_THREADS",
    "WorkerPlan",
    "WorkerSpec",
    "host_cores",
    "plan_workers",
]
