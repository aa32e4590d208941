"""The daemon's link to the Dask scheduler: connecting, reconnecting, measuring the cluster.

:class:`ClusterLink` holds the one ``distributed.Client`` of the
:class:`~sentinel_daemon.daemon.dispatch.dask.DaskDispatcher` and what it last saw of the
cluster (:class:`ClusterView`: each worker's resources, and which worker each task is
processing on). Everything that may wait on the scheduler (making a client, measuring, and
whatever the dispatcher hands it with :meth:`ClusterLink.background`) runs on one helper
thread; retiring a worker runs on another, so that a retirement the scheduler is slow to
finish holds nothing else up. :meth:`ClusterLink.client_now`, called by the core loop,
never waits. Messages the tasks send on
:data:`~sentinel_daemon.daemon.dispatch.dask_task.TOPIC` arrive on the client's own thread
and are handed over as they are to ``on_message``.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import math
import os
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import structlog

from sentinel_daemon.daemon.dispatch.dask_task import PRUNE_PREFIX, TOPIC

if TYPE_CHECKING:
    import distributed

    from sentinel_daemon.settings import DispatchSettings

log = structlog.get_logger(__name__)

#: How often the cluster's workers and resources are counted (on the helper thread).
MEASURE_EVERY_S = 1.0
CONNECTING = "connecting to the scheduler"

T = TypeVar("T")


@dataclass(frozen=True)
class ClusterView:
    """One measurement: each worker's resources (address -> name -> units), and the
    worker each processing task is on (task key -> address)."""

    resources: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    processing: Mapping[str, str] = field(default_factory=dict)

    def units(self, resource: str, exclude: Collection[str] = ()) -> int:
        """Trials asking one unit of ``resource`` that the workers (but ``exclude``) can
        run at once: whole units per worker (a worker with 0.5 runs none)."""
        return sum(
            math.floor(res.get(resource, 0.0))
            for address, res in self.resources.items()
            if address not in exclude
        )

    def offering(self, resource: str, exclude: Collection[str] = ()) -> list[str]:
        """Addresses of the workers (but ``exclude``) with a whole unit of ``resource``."""
        return sorted(
            a
            for a, res in self.resources.items()
            if a not in exclude and res.get(resource, 0.0) >= 1
        )


#: Workers named in a no-capacity warning at most (it goes into health.json too).
NAMED_WORKERS = 5


def no_capacity(resource: str, view: ClusterView, retired: Collection[str] = ()) -> str | None:
    """Why the cluster in ``view`` can run no trial that asks one unit of ``resource``
    (naming the resource and the workers it has), or None when it can run one.

    ``retired``: workers the dispatcher took out for falling silent (they do not count).
    """
    if view.units(resource, retired) > 0:
        return None
    seen = []
    for address in sorted(view.resources)[:NAMED_WORKERS]:
        offers = ", ".join(f"{k}={v:g}" for k, v in sorted(view.resources[address].items()))
        note = "retired: it fell silent" if address in retired else (offers or "no resources")
        seen.append(f"{address} ({note})")
    more = len(view.resources) - len(seen)
    workers = "; ".join(seen) + (f" and {more} more" if more > 0 else "") or "no worker"
    return (
        f"no Dask worker offers a whole unit of {resource} (dispatch.resource), which each "
        f"trial asks for; the scheduler has {len(view.resources)} worker(s): {workers}. "
        f"Start workers with `--resources {resource}=1` (docs/dask.md); trials wait queued"
    )


class ClusterLink:
    """The connection to ``settings.scheduler`` and the cluster's counts (see the module doc).

    ``available`` is True while a client is connected; ``reason`` says why not otherwise.
    ``view`` is the last measurement since the client connected, None before the first.
    """

    def __init__(
        self, settings: DispatchSettings, on_message: Callable[[dict[str, Any]], None]
    ) -> None:
        if settings.scheduler is None:
            raise ValueError("dispatch.scheduler is required with dispatch.backend: dask")
        self.settings = settings
        self.scheduler = settings.scheduler
        self.on_message = on_message
        self.client: distributed.Client | None = None
        self.available = False
        self.reason: str | None = CONNECTING
        self.view: ClusterView | None = None
        self._ops = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="dask-ops")
        self._connecting: concurrent.futures.Future[distributed.Client] | None = None
        self._next_connect = 0.0
        self._next_measure = 0.0
        self._measuring: concurrent.futures.Future[None] | None = None
        self._retiring = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="dask-retire")
        self._closing = False

    @property
    def workers(self) -> int:
        """Workers in the cluster as last measured (0 while not connected)."""
        return 0 if self.view is None else len(self.view.resources)

    def start(self, now: float) -> None:
        self._connect(now)

    def background(self, fn: Callable[..., T], *args: Any) -> concurrent.futures.Future[T]:
        """Run ``fn(*args)`` on the helper thread (it may wait on the scheduler)."""
        return self._ops.submit(fn, *args)

    def prune(self, command_id: str, stop: bool) -> None:
        """Set (``stop``) or clear the task's prune Event, in the background: the task
        checks it at each report and stops (:data:`~.dask_task.PRUNE_PREFIX`)."""

        def signal() -> None:
            import distributed

            client = self.client
            if client is not None:
                with contextlib.suppress(Exception):  # gone: the task sees no scheduler either
                    event = distributed.Event(PRUNE_PREFIX + command_id, client=client)
                    if stop:
                        event.set()
                    else:
                        event.clear()

        self._ops.submit(signal)

    def close(self, grace_s: float) -> None:
        """Leave the cluster; nothing waits on the helper thread any more."""
        self._closing = True
        if self.client is not None:
            with contextlib.suppress(Exception):
                self.client.close(timeout=max(grace_s, 1.0))
        self.client = None
        self._ops.shutdown(wait=False, cancel_futures=True)
        self._retiring.shutdown(wait=False, cancel_futures=True)

    def retire(self, address: str, why: str) -> None:
        """Have the scheduler take ``address`` out of the cluster, in the background.

        It gets no new task and is removed at once (``remove``), without waiting for it:
        a frozen worker would never answer. Told to close (``close_workers``), a worker
        that comes back to life closes, and its nanny (or systemd) starts a fresh one.
        """
        client = self.client
        if client is None or self._closing:
            return
        log.warning("dispatch.worker_retired", worker=address, reason=why)

        def retire() -> None:
            try:
                client.retire_workers(workers=[address], close_workers=True, remove=True)
            except Exception as exc:  # gone already, or the connection went
                log.info("dispatch.retire_failed", worker=address, error=str(exc)[:300])

        self._retiring.submit(retire)

    def client_now(self, now: float) -> tuple[distributed.Client | None, bool]:
        """The connected client (None while there is none), and whether the connection is
        lost this time (the futures of the tasks submitted through it are gone)."""
        lost = False
        if self._connecting is not None and self._connecting.done():
            connecting, self._connecting = self._connecting, None
            try:
                self.client = connecting.result()
            except Exception as exc:  # OSError, TimeoutError, ...: the scheduler is away
                lost = self._unavailable(f"unreachable ({type(exc).__name__}: {exc})"[:300])
        client = self.client
        if client is not None and client.status != "running":
            # "connecting": the client tries to reconnect by itself (its futures are gone);
            # closed: it gave up, and a new one is made below.
            lost = self._unavailable(f"connection lost (client {client.status})")
            if client.status in ("closed", "closing", "failed"):
                with contextlib.suppress(Exception):
                    client.close(timeout=1)
                self.client = None
            client = None
        if client is None:
            if self.client is None and now >= self._next_connect:
                self._connect(now)
            return None, lost
        if not self.available:
            self.available, self.reason = True, None
            log.info("dispatch.scheduler_connected", scheduler=self.scheduler)
        if now >= self._next_measure and (self._measuring is None or self._measuring.done()):
            self._next_measure = now + MEASURE_EVERY_S
            self._measuring = self._ops.submit(self._measure, client)
        return client, lost

    # -- internals ---------------------------------------------------------------------------

    def _connect(self, now: float) -> None:
        if self._connecting is None and not self._closing:
            self._connecting = self._ops.submit(self._new_client)
            self._next_connect = now + self.settings.retry_s

    def _new_client(self) -> distributed.Client:
        import distributed

        client = distributed.Client(
            self.scheduler,
            timeout=self.settings.connect_timeout_s,
            set_as_default=False,
            name=f"sentinel-daemon-{os.getpid()}",
        )
        client.subscribe_topic(TOPIC, self._on_event)
        return client

    def _on_event(self, event: tuple[float, Any]) -> None:
        # Called on the client's event-loop thread: only hand the message over.
        if isinstance(event, tuple | list) and len(event) == 2 and isinstance(event[1], dict):
            self.on_message(event[1])

    def _unavailable(self, reason: str) -> bool:
        """No client: dispatching pauses; always True (what the slots held is gone)."""
        if self.available or self.reason != reason:
            log.warning(
                "dispatch.scheduler_unavailable",
                scheduler=self.scheduler,
                reason=reason,
                action="dispatching paused; commands held go back to the queue",
            )
        self.available, self.reason = False, reason
        self.view = None  # measured again once connected
        return True

    def _measure(self, client: distributed.Client) -> None:
        """On the helper thread: the workers and their resources, and what they process."""
        try:
            workers = client.scheduler_info(n_workers=-1).get("workers", {})
            processing = client.processing()
        except Exception as exc:  # the connection went: the next poll sees it
            log.debug("dispatch.measure_failed", error=str(exc))
            return
        resources = {
            str(address): {str(k): float(v) for k, v in (w.get("resources") or {}).items()}
            for address, w in workers.items()
        }
        on = {str(key): str(address) for address, keys in processing.items() for key in keys}
        if client is self.client and self.available:  # not one that was lost meanwhile
            self.view = ClusterView(resources, on)  # one assignment: the loop reads it whole


__all__ = ["CONNECTING", "MEASURE_EVERY_S", "ClusterLink", "ClusterView", "no_capacity"]
