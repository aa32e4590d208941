"""The daemon's link to the Dask scheduler: connecting, reconnecting, measuring the cluster.

:class:`ClusterLink` holds the one ``distributed.Client`` of the
:class:`~sentinel_daemon.daemon.dispatch.dask.DaskDispatcher` and what it last saw of the
cluster. Everything that may wait on the scheduler (making a client, counting workers and
their resources, and whatever the dispatcher hands it with :meth:`ClusterLink.background`)
runs on one helper thread; :meth:`ClusterLink.client_now`, called by the core loop, never
waits. Messages the tasks send on :data:`~sentinel_daemon.daemon.dispatch.dask_task.TOPIC`
arrive on the client's own thread and are handed over as they are to ``on_message``.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import structlog

from sentinel_daemon.daemon.dispatch.dask_task import TOPIC

if TYPE_CHECKING:
    import distributed

    from sentinel_daemon.settings import DispatchSettings

log = structlog.get_logger(__name__)

#: How often the cluster's workers and resources are counted (on the helper thread).
MEASURE_EVERY_S = 1.0
CONNECTING = "connecting to the scheduler"

T = TypeVar("T")


class ClusterLink:
    """The connection to ``settings.scheduler`` and the cluster's counts (see the module doc).

    ``available`` is True while a client is connected; ``reason`` says why not otherwise.
    ``workers`` and ``units`` (of ``settings.resource``) are the last measurement, 0 while
    no client is connected.
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
        self.workers = 0
        self.units = 0.0
        self._ops = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="dask-ops")
        self._connecting: concurrent.futures.Future[distributed.Client] | None = None
        self._next_connect = 0.0
        self._next_measure = 0.0
        self._measuring: concurrent.futures.Future[None] | None = None
        self._closing = False

    def start(self, now: float) -> None:
        self._connect(now)

    def background(self, fn: Callable[..., T], *args: Any) -> concurrent.futures.Future[T]:
        """Run ``fn(*args)`` on the helper thread (it may wait on the scheduler)."""
        return self._ops.submit(fn, *args)

    def close(self, grace_s: float) -> None:
        """Leave the cluster; nothing waits on the helper thread any more."""
        self._closing = True
        if self.client is not None:
            with contextlib.suppress(Exception):
                self.client.close(timeout=max(grace_s, 1.0))
        self.client = None
        self._ops.shutdown(wait=False, cancel_futures=True)

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
        self.workers, self.units = 0, 0.0  # measured again once connected
        return True

    def _measure(self, client: distributed.Client) -> None:
        """On the helper thread: how many workers, and how many units they offer."""
        try:
            workers = client.scheduler_info(n_workers=-1).get("workers", {})
        except Exception as exc:  # the connection went: the next poll sees it
            log.debug("dispatch.measure_failed", error=str(exc))
            return
        self.units = sum(
            float(w.get("resources", {}).get(self.settings.resource, 0)) for w in workers.values()
        )
        self.workers = len(workers)


__all__ = ["CONNECTING", "MEASURE_EVERY_S", "ClusterLink"]
