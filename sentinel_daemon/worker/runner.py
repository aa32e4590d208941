"""One trial: train a claimed command, save the model, answer through a channel.

:class:`TrialRunner` is what a local worker process (:mod:`sentinel_daemon.worker.loop`)
and a Dask task (:mod:`sentinel_daemon.daemon.dispatch.dask`) share: the prepared data
kept across trials, training with progress reports and pruning, saving the model
atomically, and the answer (``saved``, ``pruned`` or ``failed``).
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import structlog

from sentinel_daemon.errors import SentinelError
from sentinel_daemon.ml.artifacts import find_saved
from sentinel_daemon.ml.learners import gpu_device  # numpy only: XGBoost loads when it trains
from sentinel_daemon.queue.maildir import Outbox, Queue
from sentinel_daemon.queue.messages import (
    Failed,
    Progress,
    Pruned,
    Saved,
    TrialCommand,
    TrialData,
)
from sentinel_daemon.worker.faults import (
    FAULT_KINDS,
    FAULT_MEMORY_BYTES,
    FAULT_PARAM,
    SLOW_REPORT_S,
    InjectedFault,
    _faults_enabled,
)

if TYPE_CHECKING:
    from sentinel_daemon import ml

log = structlog.get_logger(__name__)


#: Stopped by SIGTERM/SIGINT or by the caller's stop event.
EXIT_OK = 0
#: The worker's own machinery failed (the queue folder vanished, say); not a trial failure.
EXIT_ERROR = 1
#: Bad command-line arguments (argparse's own code).
EXIT_USAGE = 2
#: The parent is gone: the daemon died and this process was re-parented.
EXIT_ORPHANED = 3
#: The ``crash`` test fault (see the module docstring).
EXIT_INJECTED_CRASH = 86
#: Training failed with a CUDA error: the process's GPU context is unusable.
EXIT_DEVICE_LOST = 4

_M = TypeVar("_M", Progress, Saved, Pruned, Failed)


class CommandRejected(SentinelError):
    """A command the worker refuses before training (an unknown parameter)."""

    def __init__(self, command_id: str, reason: str) -> None:
        self.command_id = command_id
        self.reason = reason
        super().__init__(f"command {command_id}: {reason}")


class TrialAbandoned(Exception):  # a control-flow signal; never escapes the runner
    """Raised from the report hook (or a channel) to leave a trial that must not be
    answered: the runner is stopping, or its channel to the daemon is gone."""


class Channel(Protocol):
    """Where a trial's messages go: :class:`Outbox` for a local worker, Dask for a remote one."""

    def send(self, kind: type[_M], command_id: str, **fields: Any) -> _M: ...

    def should_prune(self, command_id: str) -> bool: ...


class QueueChannel:
    """A local worker's channel: ``results/`` through its :class:`Outbox`, prune files."""

    def __init__(self, queue: Queue, worker_id: str) -> None:
        self.queue = queue
        self.worker_id = worker_id
        self.outbox = Outbox(queue, worker_id)

    def send(self, kind: type[_M], command_id: str, **fields: Any) -> _M:
        return self.outbox.send(kind, command_id, **fields)

    def should_prune(self, command_id: str) -> bool:
        return self.queue.should_prune(self.worker_id, command_id)


class TrialRunner:
    """Trains one command at a time and answers it through a :class:`Channel`.

    The part of a worker that the local queue worker (:class:`Worker`) and a Dask task
    (:mod:`sentinel_daemon.daemon.dispatch.dask`) share: the prepared data kept across trials,
    training with progress reports and pruning, saving, the answer, and the test faults.
    """

    def __init__(
        self,
        state_dir: Path,
        worker_id: str,
        *,
        gpu: int | None,
        threads: int | None = None,
        lightgbm_device: str = "cpu",
    ) -> None:
        self.state_dir = Path(state_dir)
        self.worker_id = worker_id
        self.gpu = gpu
        # ``cuda`` under CUDA_VISIBLE_DEVICES pinning (the supervisor's and the units'
        # way), else ``cuda:<gpu>``; XGBoost's probe finds out whether it is usable.
        self.device = gpu_device(gpu)
        self.threads = threads
        #: ``models.lightgbm.device``: how LightGBM uses this worker's GPU (cpu: it does not).
        self.lightgbm_device = lightgbm_device
        self.log = log.bind(worker=worker_id, gpu=gpu)
        self.stop = threading.Event()
        self.orphaned = False
        self.device_lost = False
        self.hung = False
        self.command_id: str | None = None
        self.trials_done = 0
        self.data_loads = 0
        self.data_reuses = 0
        # One data set only: a worker serves one job's trials at a time, and two prepared
        # IEEE-CIS sets could exhaust memory; interleaved jobs just prepare again (cached).
        self._data_key: TrialData | None = None
        self._prepared: ml.Prepared | None = None
        # XGBoost's matrices of that one data set, kept across trials (on the GPU for a
        # GPU worker): released with it (ml.devicedata).
        self._device_data: ml.DeviceData | None = None

    @property
    def matrix_builds(self) -> int:
        return 0 if self._device_data is None else self._device_data.builds

    @property
    def matrix_reuses(self) -> int:
        return 0 if self._device_data is None else self._device_data.reuses

    def stopping(self) -> bool:
        return self.orphaned or self.stop.is_set()

    def device_for(self, command: TrialCommand) -> str:
        """Where ``command`` trains: this worker's device, but the CPU for a command that
        needs a CPU worker (one a GPU worker took because no CPU worker runs)."""
        return "cpu" if command.device == "cpu" else self.device

    def answer(self, command: TrialCommand, channel: Channel) -> str | None:
        """Train ``command`` and send its answer; the outcome, or None if abandoned.

        Every failure of the trial is answered (``failed``); the caller decides what to do
        with the command. None means the runner is stopping and sent nothing.
        """
        cid = command.command_id
        started = time.monotonic()
        self.command_id = cid
        tlog = self.log.bind(command_id=cid, model=command.model)
        tlog.info("worker.trial_started")
        # (step, value) of every progress report, for the result (and so the event log).
        intermediate: list[tuple[int, float]] = []
        saved = find_saved(
            self.state_dir, command.artifact_dir, command.job_id, command.trial, command.attempt
        )
        if saved is not None:
            # Given again after its answer was lost (a daemon restart, a scheduler that went
            # away): the model of this very attempt is complete on disk. Never train it twice.
            tlog.info("worker.trial_found_saved", artifact=saved.artifact)
            channel.send(Saved, cid, **dataclasses.asdict(saved))
            self.command_id = None
            return "saved"
        try:
            outcome = self._train_and_save(command, channel, started, intermediate)
        except TrialAbandoned:
            tlog.info("worker.trial_abandoned", reason="stopping")
            return None
        except Exception as exc:  # any failure of the trial is the daemon's to judge
            # Imported here (like everything from ml) so that heartbeats start before the
            # seconds that importing XGBoost and LightGBM take.
            from sentinel_daemon import ml

            if isinstance(exc, ml.TrialPruned):
                channel.send(
                    Pruned,
                    cid,
                    step=exc.step,
                    value=_finite(exc.value),
                    intermediate=tuple(intermediate),
                )
                outcome = "pruned"
            else:
                tlog.warning("worker.trial_failed", error=f"{type(exc).__name__}: {exc}")
                channel.send(
                    Failed,
                    cid,
                    error=f"{type(exc).__name__}: {exc}",
                    traceback=traceback.format_exc(),
                )
                outcome = "failed"
                if _device_lost(exc):
                    # A CUDA context does not recover from this; every later trial would
                    # fail too. The process should end after answering (a fresh one starts).
                    tlog.error("worker.device_lost", error=str(exc)[:500])
                    self.device_lost = True
        finally:
            self.command_id = None
        self.trials_done += 1
        tlog.info("worker.trial_ended", outcome=outcome, duration_s=time.monotonic() - started)
        return outcome

    def _train_and_save(
        self,
        command: TrialCommand,
        channel: Channel,
        started: float,
        intermediate: list[tuple[int, float]],
    ) -> str:
        """Train and save ``command``'s model; ``intermediate`` collects its reports."""
        from sentinel_daemon import ml

        params: dict[str, Any] = dict(command.params)
        fault = self._take_fault(command, params)
        prepared = self._prepared_for(command.data)
        if self.stopping():
            raise TrialAbandoned
        cid = command.command_id
        first_report = True

        def report(step: int, value: float) -> bool:
            nonlocal first_report
            if self.stopping():
                raise TrialAbandoned
            if fault is not None:
                self._act_on_fault(fault, cid, first_report)
                if self.stopping():
                    raise TrialAbandoned
            first_report = False
            if _finite(value) is not None:  # a NaN score has no JSON form: nothing to report
                channel.send(Progress, cid, step=step, value=value)
                intermediate.append((step, value))
            return channel.should_prune(cid)

        result = ml.train_trial(
            command.model,
            params,
            prepared,
            device=self.device_for(command),
            n_threads=self.threads,
            report=report,
            report_every=command.report_every,
            lightgbm_device=self.lightgbm_device,
            data=self._device_data,
        )
        out_dir = self._resolve(command.artifact_dir) / f"{command.attempt}-{self.worker_id}"
        saved = ml.save_model(
            result,
            command.model,
            out_dir,
            {
                "job_id": command.job_id,
                "trial": command.trial,
                "attempt": command.attempt,
                "command_id": cid,
                "worker_id": self.worker_id,
                # The learning curve, for a daemon that finds this model on disk unreported.
                "intermediate": [list(pair) for pair in intermediate],
            },
        )
        channel.send(
            Saved,
            cid,
            artifact=saved.path.relative_to(self.state_dir).as_posix(),
            sha256=saved.sha256,
            metrics=result.metrics,
            value=result.metrics["roc_auc"],
            train_seconds=result.train_seconds,
            duration_s=time.monotonic() - started,
            intermediate=tuple(intermediate),
        )
        return "saved"

    def _prepared_for(self, data: TrialData) -> ml.Prepared:
        from sentinel_daemon import ml

        if self._prepared is not None and self._data_key == data:
            self.data_reuses += 1
            return self._prepared
        # Drop the old set (and its matrices) before building the new one: never two in
        # memory at once.
        if self._device_data is not None:
            self._device_data.release()
        self._prepared = self._data_key = None
        prepared = ml.prepare(
            self._resolve(data.transactions),
            self._resolve(data.identity) if data.identity is not None else None,
            self._resolve(data.cache_dir),
            test_fraction=data.test_fraction,
            valid_fraction=data.valid_fraction,
            data_roots=(
                None if data.data_roots is None else [self._resolve(r) for r in data.data_roots]
            ),
        )
        self.data_loads += 1
        self._prepared, self._data_key = prepared, data
        if self._device_data is None:
            self._device_data = ml.DeviceData(nthread=self.threads)
        self.log.info(
            "worker.data_prepared",
            data_hash=prepared.data_hash,
            from_cache=prepared.from_cache,
            nbytes=prepared.nbytes,
        )
        return prepared

    def _resolve(self, path: Path | str) -> Path:
        return self.state_dir / path  # an absolute ``path`` wins over the state dir

    # -- test faults -----------------------------------------------------------------------

    @staticmethod
    def _take_fault(command: TrialCommand, params: dict[str, Any]) -> str | None:
        """Remove ``_fault`` from ``params``; its kind when faults are enabled, else refuse."""
        if FAULT_PARAM not in params:
            return None
        fault = params.pop(FAULT_PARAM)
        if not _faults_enabled():
            raise CommandRejected(command.command_id, f"unknown parameter {FAULT_PARAM!r}")
        if fault not in FAULT_KINDS:
            raise CommandRejected(
                command.command_id, f"{FAULT_PARAM} must be one of {FAULT_KINDS}, not {fault!r}"
            )
        return str(fault)

    def _act_on_fault(self, fault: str, command_id: str, first_report: bool) -> None:
        if fault == "slow":
            time.sleep(SLOW_REPORT_S)
            return
        if not first_report:
            return
        self.log.warning("worker.injected_fault", fault=fault, command_id=command_id)
        if fault == "crash":
            os._exit(EXIT_INJECTED_CRASH)
        if fault == "raise":
            raise InjectedFault(command_id)
        if fault == "gpu-lost":
            # What a device lost mid-training (Xid 79) looks like from XGBoost's Python API.
            from xgboost.core import XGBoostError

            raise XGBoostError(
                "[00:00:00] /workspace/src/common/device_helpers.cuh:431: cudaErrorUnknown: "
                f"unknown error (injected: the GPU was lost during {command_id})"
            )
        if fault == "memory":
            hog = bytearray(FAULT_MEMORY_BYTES)
            hog[::4096] = b"\x01" * (FAULT_MEMORY_BYTES // 4096)  # touch every page
            while not self.stopping():
                time.sleep(0.05)
            del hog
            return  # stopping: the caller abandons the trial
        if fault == "hang":
            self.hung = True
            while not self.orphaned:
                time.sleep(0.2)
            # Orphaned while hung: the test that made it is gone; leave no process behind.
            os._exit(EXIT_ORPHANED)


def _device_lost(exc: BaseException) -> bool:
    """Whether a training error says the GPU (its CUDA context) is gone."""
    text = str(exc).lower()
    return "cudaerror" in text or "cuda error" in text or "device-side" in text


def _finite(value: float) -> float | None:
    """``value``, or None for NaN or infinity, which a message cannot carry."""
    return value if value == value and abs(value) != float("inf") else None
