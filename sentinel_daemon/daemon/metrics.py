"""Prometheus metrics of the daemon: one registry of its own, served on loopback.

Only the daemon serves metrics (DESIGN.md, "Operations"); workers report through the queue
and the log. Names start with ``sentinel_``, use base units (seconds, bytes, ratios) and
end in ``_total`` on counters. No label carries a trial id, and none is called ``job`` or
``instance`` (Prometheus's own target labels: a scraped ``job`` label arrives renamed
``exported_job``). One gauge, ``sentinel_job_best_value``, has a ``job_id`` label for each
*running* job, removed when the job ends, so its cardinality is bounded by the work in
flight.

Counters and histograms that the log can answer equal the log, not this process's life:
:meth:`DaemonMetrics.initialise` sets them from the state replayed at start-up (and the
log's size on disk), then :meth:`DaemonMetrics.observe` and :meth:`DaemonMetrics.appended`
add every appended event. So after a restart ``sentinel_trials_ended_total``,
``sentinel_trial_duration_seconds`` (the state keeps the histogram: ``State.trial_durations``),
``sentinel_eventlog_records_total``, ``sentinel_eventlog_written_bytes_total`` and
``sentinel_workers_lost_total`` still count the whole log.

Three count since the daemon started, because the log cannot answer them:
``sentinel_eventlog_batches_total`` (batch boundaries are not events, and the fold sees
only events), ``sentinel_eventlog_fsync_duration_seconds`` (no fsync time is recorded) and
``sentinel_cpu_seconds_total`` (processes that are gone); nor can the process collector's
``process_*`` series. Their ``_created`` sample (or ``process_start_time_seconds``) says
when they started; ``rate()`` and ``increase()`` treat the drop at a restart as a reset.

Everything is written from the daemon's core thread; the HTTP thread only reads the
registry (prometheus_client's values are locked, and the collectors here read an immutable
tuple swapped in whole), never the daemon's state. The state directory's file system is
read at scrape time (``statvfs``), in the HTTP thread: a slow disk delays a scrape, never
the core loop. Sampled values (processes, GPUs, the queue) come from the monitor's readings,
refreshed by the core loop every ``resources.sample_every_s``.
"""

from __future__ import annotations

import math
import os
import platform
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from wsgiref.simple_server import WSGIServer

import structlog
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from sentinel_daemon import __version__
from sentinel_daemon.core.events import (
    Event,
    JobCancelled,
    JobCompleted,
    JobFailed,
    JobSubmitted,
    ModelKind,
    TrialFailed,
    TrialPruned,
    TrialSaved,
    WorkerLost,
)
from sentinel_daemon.core.state import (
    TRIAL_DURATION_BUCKETS,
    DurationTally,
    JobStatus,
    State,
    TrialStatus,
    WorkerStatus,
)
from sentinel_daemon.daemon.blocking import REASONS
from sentinel_daemon.daemon.monitor import ProcessKey, ProcessReading, Readings
from sentinel_daemon.layout import EVENTS_DIR
from sentinel_daemon.log.segfiles import list_segments
from sentinel_daemon.queue.routing import DEVICES

log = structlog.get_logger(__name__)

#: Trials last from seconds to hours (the state keeps the histogram: see core/state.py).
TRIAL_BUCKETS = TRIAL_DURATION_BUCKETS
#: fdatasync: tens of microseconds on a fast disk, seconds on a struggling one.
FSYNC_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0,
)  # fmt: skip
OUTCOMES = (TrialStatus.SAVED, TrialStatus.PRUNED, TrialStatus.FAILED)
ROLES = ("daemon", "worker")


class _CpuAccount:
    """Turns per-process CPU readings into increments of a monotonic counter.

    Each process (pid and start time, so a reused pid is a new process) contributes what it
    used since it was last seen; a process that ended keeps what it had counted.
    """

    def __init__(self) -> None:
        self._seen: dict[ProcessKey, float] = {}

    def delta(self, readings: Iterable[ProcessReading]) -> float:
        now: dict[ProcessKey, float] = {}
        for reading in readings:
            now.update(reading.cpu_seconds)
        total = sum(max(cpu - self._seen.get(key, 0.0), 0.0) for key, cpu in now.items())
        self._seen = now
        return total


class _TrialDurations(Collector):
    """``sentinel_trial_duration_seconds`` from the state's tally of the whole log.

    The core thread swaps in a copy of ``State.trial_durations`` after each saved trial;
    a scrape reads whichever copy is current (one attribute read: no lock needed).
    """

    NAME = "sentinel_trial_duration_seconds"
    HELP = "Wall time of saved trials, as their workers measured it (trial.saved duration_s)"

    def __init__(self) -> None:
        self._tally: tuple[tuple[int, ...], float] = ((0,) * (len(TRIAL_BUCKETS) + 1), 0.0)

    def set(self, tally: DurationTally) -> None:
        self._tally = (tuple(tally.counts), tally.sum_s)

    def collect(self) -> Iterator[Metric]:
        counts, total = self._tally
        buckets: list[tuple[str, float]] = []
        running = 0
        for bound, n in zip((*map(float, TRIAL_BUCKETS), float("inf")), counts, strict=True):
            running += n
            # Prometheus's text form of a bound, as prometheus_client's own histograms write it.
            buckets.append(("+Inf" if math.isinf(bound) else repr(bound), running))
        yield HistogramMetricFamily(self.NAME, self.HELP, buckets=buckets, sum_value=total)

    def describe(self) -> Iterator[Metric]:
        yield HistogramMetricFamily(self.NAME, self.HELP)


class _StateFilesystem(Collector):
    """Free and total bytes of the file system that holds the state directory (statvfs)."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir

    def _families(self) -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                "sentinel_state_filesystem_avail_bytes",
                "Bytes the daemon may still write on the state directory's file system "
                "(statvfs f_bavail; the log stops accepting writes at 0)",
            ),
            GaugeMetricFamily(
                "sentinel_state_filesystem_size_bytes",
                "Size of the state directory's file system in bytes (statvfs)",
            ),
        )

    def collect(self) -> Iterator[Metric]:
        try:
            st = os.statvfs(self.state_dir)
        except OSError:
            return  # not there yet, or unreadable: no sample rather than a wrong one
        avail, size = self._families()
        avail.add_metric([], st.f_bavail * st.f_frsize)
        size.add_metric([], st.f_blocks * st.f_frsize)
        yield avail
        yield size

    def describe(self) -> Iterator[Metric]:
        yield from self._families()


class DaemonMetrics:
    """The daemon's series (see the module doc); :attr:`registry` is its own.

    ``state_dir`` adds the state file system's gauges and lets :meth:`initialise` count
    the bytes already in the log; without it (unit tests) both are left out.
    """

    def __init__(self, state_dir: Path | None = None) -> None:
        self.state_dir = state_dir
        self.registry = r = CollectorRegistry()
        self.trials_ended = Counter(
            "sentinel_trials_ended_total",
            "Trials ended, by model and outcome (failed: no attempt left), in the whole log",
            ["model", "outcome"],
            registry=r,
        )
        self.trial_duration = _TrialDurations()
        r.register(self.trial_duration)
        self.job_best = Gauge(
            "sentinel_job_best_value",
            "Best validation value (ROC AUC) of each running job's saved trials",
            ["job_id"],
            registry=r,
        )
        self.jobs = Gauge("sentinel_jobs", "Jobs in the log, by state", ["state"], registry=r)
        self.log_records = Counter(
            "sentinel_eventlog_records_total",
            "Records in the event log (appended, and replayed at start-up)",
            registry=r,
        )
        self.log_batches = Counter(
            "sentinel_eventlog_batches_total",
            "Batches appended to the event log since the daemon started (one fsync each; "
            "the log does not record batch boundaries as events)",
            registry=r,
        )
        self.log_bytes = Counter(
            "sentinel_eventlog_written_bytes_total",
            "Bytes in the event log: its segments' size at start-up, plus every append since",
            registry=r,
        )
        self.fsync = Histogram(
            "sentinel_eventlog_fsync_duration_seconds",
            "Duration of the event log's fdatasync calls",
            buckets=FSYNC_BUCKETS,
            registry=r,
        )
        self.queue_pending = Gauge(
            "sentinel_queue_pending_commands",
            "Trial commands queued and not yet claimed by a worker",
            registry=r,
        )
        self.workers_alive = Gauge(
            "sentinel_workers_alive", "Local worker processes running", registry=r
        )
        self.workers_by_device = Gauge(
            "sentinel_workers",
            "Workers running, by the kind of trials they take (gpu: GPU workers, cpu: CPU "
            "workers); with Dask, trials in flight by the resource they asked",
            ["device"],
            registry=r,
        )
        self.worker_threads = Gauge(
            "sentinel_worker_threads",
            "CPU threads of the local workers running, by device; together at most the cores",
            ["device"],
            registry=r,
        )
        self.workers_lost = Counter(
            "sentinel_workers_lost_total",
            "Workers lost (worker.lost in the whole log); a lost local worker is restarted",
            registry=r,
        )
        self.gpus = Gauge(
            "sentinel_gpus", "GPUs the daemon uses (0: no NVML or no GPU, CPU workers)", registry=r
        )
        self.gpu_used = Gauge(
            "sentinel_gpu_memory_used_bytes", "GPU memory in use (NVML)", ["gpu"], registry=r
        )
        self.gpu_total = Gauge(
            "sentinel_gpu_memory_total_bytes", "GPU memory in all (NVML)", ["gpu"], registry=r
        )
        self.gpu_utilisation = Gauge(
            "sentinel_gpu_utilisation_ratio",
            "Fraction of the last sample period a kernel ran on the GPU (NVML)",
            ["gpu"],
            registry=r,
        )
        self.host_available = Gauge(
            "sentinel_host_memory_available_bytes",
            "Memory available on the host for new work (psutil)",
            registry=r,
        )
        self.cpu = Counter(
            "sentinel_cpu_seconds_total",
            "CPU time (user and system) of the daemon process, and of all its workers' "
            "process trees together, since the daemon started",
            ["role"],
            registry=r,
        )
        self.rss = Gauge(
            "sentinel_resident_memory_bytes",
            "Resident memory of the daemon process, and of all its workers' trees together",
            ["role"],
            registry=r,
        )
        self.dispatch_blocked = Gauge(
            "sentinel_dispatch_blocked",
            "1 while no new trial is dispatched for this reason, else 0: admission (host or "
            "GPU memory under resources.min_free_*), no_scheduler (the Dask scheduler cannot "
            "be reached), no_capacity (no Dask worker offers dispatch.resource), "
            "writes_failing (the event log cannot be written), disk_full (the state directory's "
            "file system under resources.min_free_disk_bytes); the log and health.json say more",
            ["reason"],
            registry=r,
        )
        self.degraded = Gauge(
            "sentinel_degraded",
            "1 while health.json says degraded: writes to the state directory failing, or "
            "dispatch blocked for any reason (sentinel_dispatch_blocked says which), else 0",
            registry=r,
        )
        self.build_info = Gauge(
            "sentinel_build_info",
            "Always 1; the labels say which Sentinel and Python the daemon runs",
            ["version", "python"],
            registry=r,
        )
        self.build_info.labels(__version__, platform.python_version()).set(1)
        ProcessCollector(registry=r)  # process_cpu_seconds_total, _resident_memory_bytes...
        if state_dir is not None:
            r.register(_StateFilesystem(state_dir))
        for model in ModelKind:
            for outcome in OUTCOMES:
                self.trials_ended.labels(str(model), str(outcome))
        for role in ROLES:
            self.cpu.labels(role)
            self.rss.labels(role)
        for reason in REASONS:
            self.dispatch_blocked.labels(reason).set(0)
        self._cpu = {role: _CpuAccount() for role in ROLES}
        self._best_jobs: set[str] = set()
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    # ---- from the log ------------------------------------------------------------------

    def initialise(self, state: State) -> None:
        """Set the log-backed counters and gauges from the state replayed at start-up.

        Call once, on a fresh object, before anything is appended.
        """
        self.log_records.inc(state.last_seq)  # seqs run 1, 2, 3...: the last is the count
        if self.state_dir is not None:
            self.log_bytes.inc(_log_size(self.state_dir / EVENTS_DIR))
        self.trial_duration.set(state.trial_durations)
        for job in state.jobs.values():
            for model, counts in job.trial_counts.items():  # an ended job's trials
                for status, n in counts.items():
                    if TrialStatus(status).ended:
                        self.trials_ended.labels(str(model), str(status)).inc(n)
            for trial in job.trials.values():  # a running job's
                if trial.status.ended:
                    self.trials_ended.labels(str(trial.model), str(trial.status)).inc()
        self.workers_lost.inc(state.workers_ended.get(WorkerStatus.LOST, 0))
        self._count_jobs(state)
        self._best(state, [j.job_id for j in state.running_jobs()])

    def observe(self, events: Iterable[Event], state: State) -> None:
        """Count ``events``, just appended; ``state`` already includes them."""
        touched: list[str] = []
        jobs_changed = saved = False
        for event in events:
            match event:
                case TrialSaved():
                    self.trials_ended.labels(str(event.model), "saved").inc()
                    saved = True
                    touched.append(event.job_id)
                case TrialPruned():
                    self.trials_ended.labels(str(event.model), "pruned").inc()
                case TrialFailed() if not event.retry:
                    self.trials_ended.labels(str(event.model), "failed").inc()
                case WorkerLost():
                    self.workers_lost.inc()
                case JobSubmitted() | JobCompleted() | JobFailed() | JobCancelled():
                    jobs_changed = True
                    touched.append(event.job_id)
                case _:
                    pass
        if saved:
            self.trial_duration.set(state.trial_durations)
        if jobs_changed:
            self._count_jobs(state)  # rare events: counting every job is cheap enough
        if touched:
            self._best(state, touched)

    def appended(self, records: int, nbytes: int) -> None:
        """One batch of ``records`` records, ``nbytes`` bytes, was appended to the log."""
        self.log_batches.inc()
        self.log_records.inc(records)
        self.log_bytes.inc(max(nbytes, 0))

    def timed_sync(self, sync: Callable[[int], None]) -> Callable[[int], None]:
        """``sync`` (the log's fdatasync), timed into the fsync histogram."""

        def timed(fd: int) -> None:
            t0 = time.perf_counter()
            try:
                sync(fd)
            finally:
                self.fsync.observe(time.perf_counter() - t0)

        return timed

    def _count_jobs(self, state: State) -> None:
        counts = dict.fromkeys(JobStatus, 0)
        for job in state.jobs.values():
            counts[job.status] += 1
        for status, n in counts.items():
            self.jobs.labels(str(status)).set(n)

    def _best(self, state: State, job_ids: Iterable[str]) -> None:
        for job_id in dict.fromkeys(job_ids):
            job = state.jobs.get(job_id)
            best = job.best_saved() if job is not None and job.status is JobStatus.RUNNING else None
            if best is not None and best.value is not None:
                self.job_best.labels(job_id).set(best.value)
                self._best_jobs.add(job_id)
            elif job_id in self._best_jobs and (job is None or job.status is not JobStatus.RUNNING):
                self.job_best.remove(job_id)
                self._best_jobs.discard(job_id)

    # ---- sampled -----------------------------------------------------------------------

    def blocked(self, reasons: Iterable[str]) -> None:
        """Dispatching is held back for ``reasons`` (of :data:`~.blocking.REASONS`) only."""
        now = set(reasons)
        for reason in REASONS:
            self.dispatch_blocked.labels(reason).set(1 if reason in now else 0)

    def sampled(
        self,
        readings: Readings,
        *,
        pending: int,
        workers_alive: int,
        by_device: Mapping[str, tuple[int, int]] | None = None,
    ) -> None:
        """Refresh the sampled series from one round of the monitor's readings.

        ``by_device``: ``device -> (workers, threads)`` (``Dispatcher.workers_by_device``).
        """
        self.queue_pending.set(pending)
        self.workers_alive.set(workers_alive)
        for device in DEVICES:
            workers, threads = (by_device or {}).get(device, (0, 0))
            self.workers_by_device.labels(device).set(workers)
            self.worker_threads.labels(device).set(threads)
        self.host_available.set(readings.host_available_bytes)
        for gpu in readings.gpus:
            label = str(gpu.index)
            self.gpu_used.labels(label).set(gpu.used_bytes)
            self.gpu_total.labels(label).set(gpu.total_bytes)
            if gpu.utilisation is not None:
                self.gpu_utilisation.labels(label).set(gpu.utilisation)
        by_role: Mapping[str, list[ProcessReading]] = {
            "daemon": [readings.daemon] if readings.daemon is not None else [],
            "worker": list(readings.workers.values()),
        }
        for role, trees in by_role.items():
            self.cpu.labels(role).inc(self._cpu[role].delta(trees))
            self.rss.labels(role).set(sum(t.rss_bytes for t in trees))

    # ---- serving -----------------------------------------------------------------------

    def serve(self, address: str, port: int) -> int | None:
        """Serve ``/metrics`` on ``address:port`` (0: a free port); the port, or None.

        A port that cannot be bound is logged, not fatal: training goes on unobserved
        rather than not at all (and Prometheus reports the target down).
        """
        try:
            server, thread = start_http_server(port, addr=address, registry=self.registry)
        except OSError as exc:
            log.error(
                "metrics.serve_failed",
                address=address,
                port=port,
                error=str(exc),
                fix="free the port or set metrics.port (SENTINEL_METRICS__PORT; 0 picks one)",
            )
            return None
        self._server, self._thread = server, thread
        bound = int(server.server_port)
        log.info(
            "metrics.serving", address=address, port=bound, url=f"http://{address}:{bound}/metrics"
        )
        return bound

    @property
    def port(self) -> int | None:
        return None if self._server is None else int(self._server.server_port)

    def close(self) -> None:
        """Stop serving (the listening socket is closed when this returns)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None


def _log_size(events_dir: Path) -> int:
    """Bytes in the log's segments: what every daemon before this one appended and kept."""
    total = 0
    for name in list_segments(events_dir):
        try:
            total += (events_dir / name).stat().st_size
        except FileNotFoundError:
            continue
    return total


__all__ = ["FSYNC_BUCKETS", "TRIAL_BUCKETS", "DaemonMetrics"]
