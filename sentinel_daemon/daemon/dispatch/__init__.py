"""Where trials run: local worker processes, or a Dask cluster (``dispatch.backend``).

The core loop knows a backend only as a :class:`Dispatcher`: the local
:class:`~sentinel_daemon.daemon.dispatch.local.Supervisor` (worker processes on this host)
or the :class:`~sentinel_daemon.daemon.dispatch.dask.DaskDispatcher` (tasks on a Dask
cluster; the task itself in ``dask_task``, the scheduler link in ``dask_cluster``, the
shared-storage check in ``dask_paths``), made by :func:`open_dispatcher` from the settings.
Either takes commands out of ``STATE/queue/pending/`` and has answers posted into
``results/``; the loop polls it once a turn for what it saw, and asks it each turn why it
dispatches nothing (:meth:`Dispatcher.blocked`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import structlog

from sentinel_daemon.core.events import Event
from sentinel_daemon.core.ids import WorkerId
from sentinel_daemon.daemon.dispatch.plan import WorkerPlan, host_cores, plan_workers
from sentinel_daemon.queue.messages import TrialCommand
from sentinel_daemon.settings import Settings

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class PollResult:
    """What one :meth:`Dispatcher.poll` saw: events to append, and commands taken back.

    ``taken_back`` holds ``(worker_id, command)`` for every command a lost worker had
    claimed; those commands are now in ``queue/dead`` and the daemon decides what to do.
    """

    events: list[Event] = field(default_factory=list)
    taken_back: list[tuple[WorkerId, TrialCommand]] = field(default_factory=list)


class Dispatcher(Protocol):
    """What the core loop needs of a dispatch backend; no method may block for long."""

    @property
    def available(self) -> bool:
        """Whether trials can be dispatched now (a Dask scheduler may be out of reach)."""

    #: Whether :meth:`describe` changes while the daemon runs, so that ``health.json`` is
    #: rewritten with it every few seconds.
    describe_changes: bool

    def start(self, now: float | None = None) -> None:
        """Begin: start workers, or connect; what that yields comes from :meth:`poll`."""

    def poll(self, now: float) -> PollResult:
        """What happened since the last poll (``now`` is ``time.monotonic()``)."""

    def stop(self, grace_s: float) -> list[Event]:
        """Stop the workers (or leave the cluster), giving them ``grace_s``; the events."""

    def status_note(self) -> str | None:
        """Why dispatching is paused, for the status line; None while it is not."""

    def blocked(self) -> dict[str, str]:
        """Why this backend dispatches nothing now, by reason (``no_scheduler``,
        ``no_capacity``), each with a sentence for the log and ``health.json``."""

    def describe(self) -> dict[str, Any]:
        """The backend and its counts, for ``health.json`` and ``sentinel status``."""

    def workers_alive(self) -> int:
        """Workers running now (for the metrics)."""

    def workers_by_device(self) -> dict[str, tuple[int, int]]:
        """``device -> (workers running, their CPU threads)`` (``gpu``, ``cpu``; metrics)."""

    def gpus_in_use(self) -> set[int]:
        """GPUs of this host the workers use (for admission control)."""

    def worker_ids(self) -> list[WorkerId]:
        """Ids of the workers this dispatcher runs (their commands are its to take back)."""

    def worker_pids(self) -> dict[WorkerId, int]:
        """Pids of this host's worker processes (for resource sampling)."""

    def kill(self, worker_id: str, reason: str) -> bool:
        """End ``worker_id``'s trial: a local worker is killed, a Dask slot's task
        cancelled; either is reported lost for ``reason`` by a later :meth:`poll`, with
        its commands taken back. False when it is none of this dispatcher's, or holds none."""


def local_plan(settings: Settings, *, workers: int | None, gpus: list[int]) -> WorkerPlan:
    """The local workers this host runs under ``settings`` (none with the Dask backend).

    ``workers`` (``sentinel run --workers N``) wins over ``workers.count``; ``gpus`` are the
    GPUs for GPU workers (``workers.gpus``, or what NVML found).
    """
    count = workers if workers is not None else settings.workers.count
    if settings.dispatch.backend == "dask":
        count = 0
    return plan_workers(
        cores=host_cores(),
        gpus=gpus,
        per_gpu=settings.workers.per_gpu,
        cpu=settings.workers.cpu,
        count=count,
    )


def open_dispatcher(
    state_dir: Path,
    settings: Settings,
    *,
    plan: WorkerPlan,
    generation: int,
    worker_env: dict[str, str],
    requested: int | None = None,
) -> Dispatcher:
    """The backend ``dispatch.backend`` names; local workers as ``plan`` says.

    ``generation`` (the seq of this start's ``daemon.started``) goes into the local workers'
    ids, so that no id is ever reused. ``requested``: local workers asked for (logged when
    the Dask backend leaves them off).
    """
    # Imported here: both backends import this module (PollResult).
    from sentinel_daemon.daemon.dispatch.dask import DaskDispatcher
    from sentinel_daemon.daemon.dispatch.local import Supervisor

    dispatch = settings.dispatch
    if dispatch.backend == "dask":
        if requested:
            log.info(
                "daemon.local_workers_off",
                reason="dispatch.backend is dask: trials run on the Dask cluster",
                scheduler=dispatch.scheduler,
            )
        dask = DaskDispatcher(
            state_dir,
            dispatch,
            queue=settings.queue,
            heartbeat_s=settings.workers.heartbeat_s,
            heartbeat_timeout_s=settings.workers.heartbeat_timeout_s,
        )
        return dask
    if plan.oversubscribed:
        log.warning(
            "daemon.workers_oversubscribed",
            reason="more workers than cores: each still gets one thread",
            **plan.describe(),
        )
    return Supervisor(
        state_dir,
        count=len(plan.workers),
        gpus=[],
        plan=plan,
        heartbeat_timeout_s=settings.workers.heartbeat_timeout_s,
        heartbeat_s=settings.workers.heartbeat_s,
        restart_backoff_s=(
            settings.workers.restart_backoff_min_s,
            settings.workers.restart_backoff_max_s,
        ),
        generation=generation,
        worker_env=worker_env,
    )
