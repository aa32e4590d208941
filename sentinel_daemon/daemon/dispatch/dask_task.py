"""What runs inside a Dask worker for the ``dask`` backend: the trial task and its checks.

The daemon's :class:`~sentinel_daemon.daemon.dispatch.dask.DaskDispatcher` submits
:func:`run_trial_task` for each trial command and runs :func:`check_paths` on every worker
before a job's first trial. This module is imported in the Dask worker processes (Dask moves
the functions by reference), so it imports nothing of the daemon's side and nothing heavy at
import time: the trial code (:class:`~sentinel_daemon.worker.runner.TrialRunner`, the one
``sentinel worker`` runs) and ``distributed`` are imported when a task runs.

A task runs the trial with the prepared data kept in the worker process across trials, the
model saved under the shared state directory; its progress goes back as Dask structured
events (``Worker.log_event`` on :data:`TOPIC`) through :class:`DaskChannel`, a thread beats
on the same topic while it runs, and it asks whether to stop through a
``distributed.Event`` named :data:`PRUNE_PREFIX` + command id.
Every argument is a JSON string or plain text, and the answer a JSON-compatible dict.
"""

from __future__ import annotations

import os
import re
import socket
import threading
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from sentinel_daemon.queue.messages import Progress, TrialCommand

if TYPE_CHECKING:
    import distributed

    from sentinel_daemon.worker.runner import TrialRunner

log = structlog.get_logger(__name__)

#: The structured-events topic tasks send ``started``, ``progress`` and ``beat`` messages on.
TOPIC = "sentinel-trial"
PRUNE_PREFIX = "sentinel-prune-"

_runner_lock = threading.Lock()
_runners: dict[str, TrialRunner] = {}


def _runner_id() -> str:
    """This process's name in artifact folders: host and pid, as a worker id allows."""
    raw = f"{socket.gethostname()}-{os.getpid()}"
    return re.sub(r"[^A-Za-z0-9_-]", "-", raw)[-60:].lstrip("-_") or f"dask-{os.getpid()}"


def _runner(state_dir: str) -> TrialRunner:
    """The runner of this worker process for ``state_dir`` (its prepared data persists)."""
    from sentinel_daemon.ml.devices import discover_gpus
    from sentinel_daemon.worker.runner import TrialRunner

    runner = _runners.get(state_dir)
    if runner is None:
        # A GPU host runs one `dask worker --resources GPU=1` per GPU, with
        # CUDA_VISIBLE_DEVICES naming it: any GPU seen means "cuda" (the one visible).
        gpu = 0 if discover_gpus() else None
        threads = int(os.environ.get("SENTINEL_DASK_THREADS", "0")) or None
        runner = TrialRunner(
            Path(state_dir),
            _runner_id(),
            gpu=gpu,
            threads=threads,
            lightgbm_device=_lightgbm_device(),
        )
        _runners[state_dir] = runner
    return runner


def _lightgbm_device() -> str:
    """``models.lightgbm.device`` as this Dask worker's environment (and SENTINEL_CONFIG)
    sets it; the CPU, with a warning, when those settings do not load."""
    from sentinel_daemon.errors import ConfigError
    from sentinel_daemon.settings import CONFIG_ENV, load_settings

    config = os.environ.get(CONFIG_ENV)
    try:
        return load_settings(Path(config) if config else None).models.lightgbm.device
    except ConfigError as exc:
        log.warning("dask_task.settings_unreadable", error=str(exc), lightgbm_device="cpu")
        return "cpu"


class DaskChannel:
    """A task's :class:`~sentinel_daemon.worker.runner.Channel`: progress as structured events.

    Each message is validated here exactly as the local worker's :class:`Outbox` would
    (a NaN score fails in the task, as a trial failure); the daemon numbers and posts it.
    The final answer (saved, pruned, failed) is kept and returned as the task's result.
    """

    def __init__(self, worker: distributed.Worker, slot: str, execution: str) -> None:
        self.worker = worker
        self.slot = slot
        self.execution = execution
        self.final: dict[str, Any] | None = None
        self._prune: distributed.Event | None = None

    def send(self, kind: Any, command_id: str, **fields: Any) -> Any:
        message = kind.model_validate(
            {**fields, "worker_id": self.slot, "msg_seq": 1, "command_id": command_id}
        )
        payload = message.model_dump(mode="json", exclude={"worker_id", "msg_seq"})
        if kind is Progress:
            try:
                self.worker.log_event(TOPIC, {**payload, "execution": self.execution})
            except Exception as exc:
                raise self._gone(exc) from exc
        else:
            self.final = payload
        return message

    def should_prune(self, command_id: str) -> bool:
        import distributed

        try:
            if self._prune is None:
                self._prune = distributed.Event(PRUNE_PREFIX + command_id)
            return bool(self._prune.is_set())
        except Exception as exc:
            raise self._gone(exc) from exc

    def _gone(self, exc: Exception) -> Exception:
        """The scheduler cannot be reached: the daemon will not hear an answer, and the
        trial did not fail. Leave it (the daemon submits it again, same attempt)."""
        from sentinel_daemon.worker.runner import TrialAbandoned

        log.warning("dask.channel_lost", slot=self.slot, error=f"{type(exc).__name__}: {exc}")
        return TrialAbandoned(str(exc))


def run_trial_task(
    command_json: str, state_dir: str, slot: str, heartbeat_s: float = 1.0
) -> dict[str, Any]:
    """Run one trial command on this Dask worker; its answer (a message without numbers).

    ``state_dir`` is the daemon's state directory as this worker mounts it; the command's
    relative paths resolve against it. One trial at a time per process (the task asks for
    a GPU unit, and a lock makes sure of it); the prepared data stays for the next trial.
    While it runs, a thread sends a ``beat`` every ``heartbeat_s`` (:func:`_beat`).
    """
    import distributed

    worker = distributed.get_worker()
    command = TrialCommand.model_validate_json(command_json)
    execution = uuid.uuid4().hex
    worker.log_event(
        TOPIC,
        {
            "kind": "started",
            "command_id": command.command_id,
            "execution": execution,
            "worker": worker.address,
        },
    )
    done = threading.Event()
    beat = {"kind": "beat", "command_id": command.command_id, "execution": execution}
    beating = threading.Thread(
        target=_beat,
        args=(worker, {**beat, "worker": worker.address}, heartbeat_s, done),
        name=f"sentinel-beat-{command.command_id}",
        daemon=True,
    )
    beating.start()
    channel = DaskChannel(worker, slot, execution)
    try:
        with _runner_lock:
            _runner(state_dir).answer(command, channel)
    finally:
        done.set()
    if channel.final is None:  # the runner only abandons a trial when stopped: it is not
        raise RuntimeError(f"trial {command.command_id} ended without an answer")
    return channel.final


def _beat(
    worker: distributed.Worker, message: dict[str, Any], every_s: float, done: threading.Event
) -> None:
    """Send ``message`` on :data:`TOPIC` every ``every_s`` until ``done``.

    The daemon judges the trial by these (``workers.heartbeat_timeout_s``), as it judges a
    local worker by its heartbeat file: a worker process that is frozen (SIGSTOP, a hung
    driver call holding the GIL, a host that stopped) stops beating even while its TCP
    connection to the scheduler stays open. A thread of its own, so that a long step of the
    trial (preparing the data, a boosting round) beats all the same.
    """
    while not done.wait(every_s):
        try:
            worker.log_event(TOPIC, message)  # thread-safe: handed to the worker's loop
        except Exception as exc:  # the worker is closing: the daemon judges the silence
            log.debug("dask.beat_failed", error=f"{type(exc).__name__}: {exc}")
            return


def check_paths(marker: str, expected: str, reads: list[str], writes: list[str]) -> list[str]:
    """On a worker: what keeps it from serving the daemon's state directory and a job.

    ``marker`` must hold ``expected`` (the daemon wrote it: the worker sees the very same
    state directory, not an empty folder at that path); ``reads`` must be readable files;
    each of ``writes`` must be a folder it can create or write into (nothing is created).
    """
    try:
        with open(marker, encoding="utf-8") as fh:
            seen = fh.read().strip()
    except OSError as exc:
        seen = f"unreadable ({exc.strerror})"
    if seen != expected:
        return [
            f"does not see the daemon's state directory at {os.path.dirname(marker)} "
            f"({os.path.basename(marker)} is {seen[:40]!r}, not the daemon's)"
        ]
    problems: list[str] = []
    for path in reads:
        if not os.path.isfile(path) or not os.access(path, os.R_OK):
            problems.append(f"cannot read {path}")
    for folder in writes:
        existing = folder
        while not os.path.exists(existing) and os.path.dirname(existing) != existing:
            existing = os.path.dirname(existing)
        if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
            problems.append(f"cannot write into {folder} ({existing} is not a writable folder)")
    return problems


__all__ = [
    "PRUNE_PREFIX",
    "TOPIC",
    "DaskChannel",
    "check_paths",
    "run_trial_task",
]
