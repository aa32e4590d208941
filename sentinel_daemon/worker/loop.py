"""The worker process (``sentinel worker``): claims trial commands, trains, saves, reports.

One worker is one OS process with one GPU (``CUDA_VISIBLE_DEVICES`` is set by whoever
starts it, so the worker always asks for ``cuda``) or none (CPU).

What the daemon tells it (:meth:`~sentinel_daemon.daemon.dispatch.local.Supervisor`), on
its command line, which :func:`build_parser` reads and the
:class:`~sentinel_daemon.worker.runner.TrialRunner` keeps:

- ``--gpu N``: a GPU worker on GPU ``N`` (NVML's index; ``CUDA_VISIBLE_DEVICES=N`` in its
  environment, so CUDA calls it ``cuda:0``): ``runner.gpu``; absent, a CPU worker;
- ``--threads T``: the CPU threads its training may use (``nthread``/``num_threads``;
  ``OMP_NUM_THREADS=T`` in its environment too): ``runner.threads``; absent, all cores.

A GPU worker claims GPU trials (the queue's ``pending-gpu/`` lane) and a CPU worker CPU
trials (``pending-cpu/``), both also the shared ``pending/``
(:mod:`sentinel_daemon.queue.routing`). A GPU worker on a host where no CUDA device is
visible (NVML finds none) says so once, in its ``worker.started`` log line
(``cuda: false`` and a ``note``), and its trials train on the CPU (XGBoost falls back by
itself and notes it in the trial's result).

Its loop:

1. claim the oldest command from ``STATE/queue/`` (a short ``claim_wait``, so that signals
   and the parent check are seen within a second);
2. prepare the data, or reuse the :class:`~sentinel_daemon.ml.Prepared` kept in memory from
   the previous trial when the command names the same data (files, cache folder, fractions);
3. train, posting ``progress`` at each report and asking the queue whether the daemon wants
   the trial pruned;
4. save the model under ``STATE/<artifact_dir>/<attempt>-<worker_id>/`` (a folder per attempt
   and worker, so two processes never write the same file), post ``saved``, and finish the
   command. ``pruned`` and ``failed`` (any exception, a data error included) also finish it;
   the daemon decides about retries.

Relative paths in a command (``artifact_dir``, and the data files and cache folder) are
relative to the state directory; absolute ones are used as they are.

Settings (log level and format, the queue's poll interval and number blocks, the heartbeat)
come from :func:`~sentinel_daemon.settings.load_settings`, as the daemon's do: a worker
the daemon starts inherits the daemon's effective settings through its environment
(:func:`~sentinel_daemon.settings.exported`); one that systemd runs reads the same file and
variables as the daemon's unit. ``worker.started`` logs their digest, which equals the one
in the daemon's ``daemon.ready`` when both run with the same settings.

Stopping. Signal handlers only set a flag. SIGTERM or SIGINT: stop claiming, abandon the
trial in progress at its next report without posting anything (the trial did not fail; its
command stays claimed and the daemon takes it back), exit :data:`EXIT_OK`. A second signal
meets the default disposition and ends the process at once. When ``parent_pid`` is given
and the process is re-parented (the daemon died), the heartbeat thread sets the stop flag
and the worker exits :data:`EXIT_ORPHANED` the same way.

Heartbeat: a daemon thread replaces ``workers/<id>/heartbeat.json`` every ``heartbeat_s``
with ``pid``, ``command_id`` (or None), ``trials_done``, ``data_loads`` (times the data was
prepared) and ``data_reuses`` (trials that used the data kept in memory).

Fault injection, for the daemon's crash tests only. When the environment variable
``SENTINEL_TEST_FAULTS`` is ``1`` the parameter ``_fault`` of a command is taken out of the
training parameters and acted on at the trial's first report:

- ``"crash"``: the process ends at once with :data:`EXIT_INJECTED_CRASH` (``os._exit``: no
  message, no clean-up, the command stays claimed);
- ``"hang"``: heartbeats stop and the main thread blocks, ignoring SIGTERM, until it is
  killed (or its parent dies, so a test that fails leaves no orphan behind);
- ``"raise"``: training raises :class:`InjectedFault`, which is posted as ``failed``;
- ``"slow"``: every report waits :data:`SLOW_REPORT_S`, so a test can act mid-trial;
- ``"memory"``: allocates and touches :data:`FAULT_MEMORY_BYTES` and holds them, still
  heartbeating, until the worker is stopped or killed (the memory ceiling's test).
- ``"gpu-lost"``: training raises what XGBoost raises when its CUDA device falls off the
  bus (an ``xgboost.core.XGBoostError`` carrying ``cudaErrorUnknown``), posted as ``failed``.

Without the variable a ``_fault`` parameter is an unknown parameter: the command is
answered with ``failed`` and the worker carries on.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import structlog

from sentinel_daemon.errors import ConfigError
from sentinel_daemon.fsutil import restrict_umask
from sentinel_daemon.layout import QUEUE_DIR
from sentinel_daemon.logs import configure_logging
from sentinel_daemon.queue.maildir import ClaimedCommand, Queue
from sentinel_daemon.queue.routing import Device
from sentinel_daemon.settings import (
    CONFIG_ENV,
    QueueSettings,
    Settings,
    load_settings,
    settings_digest,
)
from sentinel_daemon.worker.runner import (
    EXIT_DEVICE_LOST,
    EXIT_ERROR,
    EXIT_OK,
    EXIT_ORPHANED,
    QueueChannel,
    TrialRunner,
)

log = structlog.get_logger(__name__)


#: How long one claim_wait lasts before the loop looks at its flags again.
CLAIM_WAIT_S = 0.5
#: Bad settings or arguments: restarting will not help (the unit's RestartPreventExitStatus).
EXIT_USAGE = 2


class Worker(TrialRunner):
    """The state of one worker process; :func:`run_worker` is the way to run it."""

    def __init__(
        self,
        state_dir: Path,
        worker_id: str,
        *,
        gpu: int | None,
        heartbeat_s: float,
        parent_pid: int | None,
        stop: threading.Event | None,
        threads: int | None = None,
        queue: QueueSettings | None = None,
        settings_id: str | None = None,
        lightgbm_device: str = "cpu",
    ) -> None:
        if heartbeat_s <= 0:
            raise ValueError(f"heartbeat_s must be positive, not {heartbeat_s}")
        super().__init__(
            state_dir, worker_id, gpu=gpu, threads=threads, lightgbm_device=lightgbm_device
        )
        self.heartbeat_s = heartbeat_s
        self.parent_pid = parent_pid
        if stop is not None:
            self.stop = stop
        self.queue = Queue(self.state_dir / QUEUE_DIR, queue)
        #: The queue lane it serves besides ``pending/``: its kind.
        self.lane: Device = "cpu" if gpu is None else "gpu"
        #: :func:`~sentinel_daemon.settings.settings_digest` of the settings it runs with.
        self.settings_id = settings_id
        self.channel = QueueChannel(self.queue, worker_id)
        # Set by signal handlers: a plain attribute, since setting a threading.Event from a
        # handler can deadlock on the lock the interrupted main thread may hold.
        self.signalled: int | None = None
        self._beats_done = threading.Event()
        self._heart: threading.Thread | None = None

    # -- flags -----------------------------------------------------------------------------

    def stopping(self) -> bool:
        return self.signalled is not None or self.orphaned or self.stop.is_set()

    def parent_gone(self) -> bool:
        return self.parent_pid is not None and os.getppid() != self.parent_pid

    def exit_code(self) -> int:
        if self.device_lost:
            return EXIT_DEVICE_LOST
        return EXIT_ORPHANED if self.orphaned else EXIT_OK

    # -- heartbeat -------------------------------------------------------------------------

    def beat(self) -> None:
        self.queue.beat(
            self.worker_id,
            {
                "command_id": self.command_id,
                "trials_done": self.trials_done,
                "data_loads": self.data_loads,
                "data_reuses": self.data_reuses,
                # XGBoost's matrices (ml.devicedata): built once per data set and shape.
                "matrix_builds": self.matrix_builds,
                "matrix_reuses": self.matrix_reuses,
                "gpu": self.gpu,
                "lane": self.lane,
                "threads": self.threads,
            },
        )

    def _heartbeat_loop(self) -> None:
        while not self._beats_done.wait(self.heartbeat_s):
            if self.parent_gone():
                self.orphaned = True
                self.stop.set()
                return
            if self.hung:
                continue
            try:
                self.beat()
            except OSError as exc:
                # A missed beat is the supervisor's to judge; the thread must not die of it.
                self.log.warning("worker.heartbeat_failed", error=str(exc))

    def start_heartbeat(self) -> None:
        self.beat()
        self._heart = threading.Thread(
            target=self._heartbeat_loop, name=f"heartbeat-{self.worker_id}", daemon=True
        )
        self._heart.start()

    def stop_heartbeat(self) -> None:
        self._beats_done.set()
        if self._heart is not None:
            self._heart.join()

    # -- the loop --------------------------------------------------------------------------

    def run(self) -> int:
        if self.parent_gone():
            self.orphaned = True
            self.log.warning("worker.orphaned", parent_pid=self.parent_pid, ppid=os.getppid())
            return EXIT_ORPHANED
        self.log.info(
            "worker.started",
            pid=os.getpid(),
            device=self.device,
            lane=self.lane,
            threads=self.threads,
            settings=self.settings_id,
            **self._cuda_note(),
        )
        self.start_heartbeat()
        try:
            while not self.stopping() and not self.device_lost:
                if self.parent_gone():
                    self.orphaned = True
                    break
                claimed = self.queue.claim_wait(
                    self.worker_id, CLAIM_WAIT_S, self.stopping, lane=self.lane
                )
                if claimed is not None:
                    self.run_trial(claimed)
        finally:
            self.stop_heartbeat()
        self.log.info(
            "worker.stopped",
            reason="orphaned" if self.orphaned else "stop requested",
            signal=self.signalled,
            trials_done=self.trials_done,
        )
        return self.exit_code()

    def _cuda_note(self) -> dict[str, Any]:
        """For a GPU worker: whether a CUDA device is visible, and a note when none is."""
        if self.gpu is None:
            return {}
        from sentinel_daemon.ml.devices import discover_gpus

        if discover_gpus():
            return {"cuda": True}
        return {
            "cuda": False,
            "note": f"no CUDA device visible for GPU {self.gpu} (no NVIDIA driver or GPU): "
            "its trials train on the CPU",
        }

    def run_trial(self, claimed: ClaimedCommand) -> None:
        """Train one claimed command and answer it; abandon it silently when stopping."""
        if self.answer(claimed.command, self.channel) is not None:
            self.queue.finish(self.worker_id, claimed.command.command_id)


def run_worker(
    state_dir: Path,
    worker_id: str,
    *,
    gpu: int | None,
    heartbeat_s: float,
    parent_pid: int | None,
    stop: threading.Event | None = None,
    threads: int | None = None,
    settings: Settings | None = None,
) -> int:
    """Serve trial commands from ``state_dir/queue`` until stopped; return the exit code.

    Signal handlers are installed (and restored afterwards) only when called from the main
    thread; elsewhere, set ``stop`` to end the loop. ``threads`` caps the training
    libraries' CPU threads (None: all cores). ``settings`` gives the queue's tunables
    (None: their defaults).
    """
    worker = Worker(
        state_dir,
        worker_id,
        gpu=gpu,
        heartbeat_s=heartbeat_s,
        parent_pid=parent_pid,
        stop=stop,
        threads=threads,
        queue=None if settings is None else settings.queue,
        settings_id=None if settings is None else settings_digest(settings),
        lightgbm_device="cpu" if settings is None else settings.models.lightgbm.device,
    )
    previous: dict[signal.Signals, Any] = {}

    def on_signal(signum: int, frame: FrameType | None) -> None:
        worker.signalled = signum
        # A second signal ends the process at once, as the supervisor's SIGKILL would.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, on_signal)
    try:
        return worker.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sentinel worker",
        description="One Sentinel worker process (started by the daemon, or by "
        "sentinel-worker@.service). Settings (log level and format, queue tunables, "
        "heartbeat) are loaded as the daemon loads them: --config, then SENTINEL_* variables.",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="the daemon's state directory (default: the state_dir setting, SENTINEL_STATE_DIR)",
    )
    parser.add_argument("--id", required=True, dest="worker_id", help="unique worker id")
    parser.add_argument(
        "--gpu",
        type=int,
        default=None,
        help="a GPU worker on this GPU index (CUDA_VISIBLE_DEVICES is set by the caller); "
        "it takes GPU trials. Absent: a CPU worker, taking CPU trials",
    )
    parser.add_argument(
        "--heartbeat-s",
        type=float,
        default=None,
        help="heartbeat interval (default: the workers.heartbeat_s setting)",
    )
    parser.add_argument(
        "--parent-pid", type=int, default=None, help="exit when no longer this pid's child"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="CPU threads for training (default: all)"
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=os.environ.get(CONFIG_ENV) or None,
        help=f"settings file layered over the defaults (env {CONFIG_ENV})",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m sentinel_daemon.worker --id W [--state-dir S] [--gpu N] ...``."""
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"sentinel worker: {exc}", file=sys.stderr)
        return EXIT_USAGE
    configure_logging(settings.logging.level, settings.logging.format)
    restrict_umask()  # models, heartbeats and folders: the group reads, nobody else
    try:
        return run_worker(
            args.state_dir or settings.state_dir,
            args.worker_id,
            gpu=args.gpu,
            heartbeat_s=args.heartbeat_s or settings.workers.heartbeat_s,
            parent_pid=args.parent_pid,
            threads=args.threads,
            settings=settings,
        )
    except Exception:
        log.exception("worker.crashed", worker=args.worker_id)
        return EXIT_ERROR
