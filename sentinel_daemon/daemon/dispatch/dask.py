"""The ``dask`` dispatch backend: trials on a Dask distributed cluster (``dispatch.backend``).

The daemon stays what it is with local workers: the single writer of the log and the owner
of every study. Only the last hop of a trial command changes. The job actor still puts
commands into ``STATE/queue/pending/`` and reads answers from ``STATE/queue/results/``;
:class:`DaskDispatcher` stands where the local
:class:`~sentinel_daemon.daemon.dispatch.local.Supervisor` stands, and is to the queue what
a set of local workers would be:

- it claims a pending command into one of its *slots* (``queue/workers/dask-<n>/``; one
  command each, as many slots as the cluster's workers offer whole units of
  ``dispatch.resource`` and ``dispatch.cpu_resource``, at most ``dispatch.slots``) and
  submits it to the scheduler as a task that asks for one unit of a resource, under the
  key ``sentinel-<command_id>``;
- it routes as the local workers do (:mod:`sentinel_daemon.queue.routing`): the daemon's
  queue keeps GPU and CPU commands in their lanes, and while the cluster offers units of
  both resources, a GPU trial asks ``dispatch.resource`` (``GPU``) and a CPU trial
  ``dispatch.cpu_resource`` (``CPU``), each kind claimed only while the cluster has a free
  unit of its own (so XGBoost trials waiting for a GPU never hold back LightGBM trials);
  while it offers only one of them, every trial asks that one;
- a Dask worker runs :func:`~sentinel_daemon.daemon.dispatch.dask_task.run_trial_task`
  (the worker's side, in :mod:`~sentinel_daemon.daemon.dispatch.dask_task`): the trial code
  of ``sentinel worker``, progress and heartbeats sent back with ``Worker.log_event``,
  pruning asked through a ``distributed.Event``;
- the dispatcher posts every answer into ``results/`` under the slot's id (through an
  :class:`~sentinel_daemon.queue.maildir.Outbox`, fsynced), where the daemon ingests it exactly as
  a local worker's; prune requests the actor writes into the slot's folder become the
  task's Event.

Failures map onto what the daemon already handles. A Dask worker that dies under a task
(``KilledWorker``, with the scheduler's ``allowed-failures`` at 0 as the docs advise; or,
with a higher setting, a second execution of the same task seen starting) is reported as
``worker.lost`` for the slot, with the commands taken back, so the trial is retried under
``trials.max_attempts``. So is a task that falls silent: one that a worker is processing
but that sent nothing (no ``started``, progress or ``beat``) for
``workers.heartbeat_timeout_s``, as a frozen worker's would (its TCP connection to the
scheduler may stay open for minutes); its task is cancelled and its worker retired from the
scheduler and left out of dispatching until it has gone. :meth:`DaskDispatcher.kill` (the
daemon's ``trials.timeout_s``) ends a task the same way, without retiring its worker.

A scheduler that cannot be reached pauses dispatching (``available`` is False; the reason
is in :meth:`DaskDispatcher.blocked` for the daemon's health, metrics and log); the
commands held in slots go back to ``pending/`` once each, with the same attempt (the trial
did not fail), and are submitted again once it returns. A cluster whose workers offer no
unit of the resource keeps the trials in ``pending/`` and says so (:meth:`blocked`). A
restarted daemon takes back the commands its predecessor's slots held, with the same
attempt, like any dead worker's. A resubmitted command never trains a finished trial twice:
a task first looks for a complete model of its attempt on disk
(:func:`sentinel_daemon.ml.artifacts.find_saved`) and answers with it; and the same key on the
same Dask worker joins the execution still running there.

Before the first command of a job is submitted, every Dask worker is asked to check that
it can read the job's data and write its cache and model folders
(:mod:`~sentinel_daemon.daemon.dispatch.dask_paths`); a job whose data some worker cannot
reach fails with the worker and the path named. The connection and the cluster's counts
are :mod:`~sentinel_daemon.daemon.dispatch.dask_cluster`'s.

Every argument of a task is a JSON string, plain text or a number (Dask moves the function
by reference; no pickled objects of ours), and answers are dicts that the daemon validates.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from pydantic import ValidationError

from sentinel_daemon.core.events import Event, JobFailed, WorkerLost, WorkerStarted
from sentinel_daemon.core.ids import JobId, WorkerId
from sentinel_daemon.daemon.dispatch import PollResult
from sentinel_daemon.daemon.dispatch.dask_cluster import (
    CONNECTING,
    ClusterLink,
    ClusterView,
    no_capacity,
)
from sentinel_daemon.daemon.dispatch.dask_paths import PathChecks
from sentinel_daemon.daemon.dispatch.dask_task import run_trial_task
from sentinel_daemon.layout import QUEUE_DIR
from sentinel_daemon.queue.maildir import Outbox, Queue
from sentinel_daemon.queue.messages import MESSAGE_ADAPTER, TrialCommand
from sentinel_daemon.queue.routing import DEVICES, Device

if TYPE_CHECKING:
    import distributed

    from sentinel_daemon.settings import DispatchSettings, QueueSettings

log = structlog.get_logger(__name__)

KEY_PREFIX = "sentinel-"
SLOT_PREFIX = "dask-"


@dataclass
class _Task:
    """A command held by a slot: waiting for its job's path check, or submitted."""

    slot: WorkerId
    command: TrialCommand
    #: The worker resource its task asks one unit of (``dispatch.resource`` or ``cpu_resource``).
    resource: str = "GPU"
    future: distributed.Future[Any] | None = None
    executions: list[str] = field(default_factory=list)
    prune_sent: bool = False
    #: When its first execution was last heard from (``time.monotonic()``), or first seen
    #: processing on a worker before it said anything; None before either.
    heard_at: float | None = None
    #: The address of the Dask worker running it, once known.
    worker: str | None = None


class DaskDispatcher:
    """Dispatches ``state_dir``'s queued commands to a Dask scheduler (see the module doc).

    The daemon drives it as it drives the local supervisor: :meth:`start`, :meth:`poll`
    each turn, :meth:`stop`. What may wait on the scheduler (connecting, counting workers,
    path checks, prune events, retiring a worker) runs on helper threads; the core loop
    only submits (which does not wait) and fetches a finished task's answer (one round trip
    to the worker, bounded by 5 s). ``worker_state_dir`` overrides
    ``settings.worker_state_dir``; tasks beat every ``heartbeat_s`` and are lost after
    ``heartbeat_timeout_s`` of silence (``workers.*``); ``queue`` holds the queue's settings
    (the daemon's ``queue`` section).
    """

    def __init__(
        self,
        state_dir: Path,
        settings: DispatchSettings,
        *,
        worker_state_dir: Path | None = None,
        queue: QueueSettings | None = None,
        heartbeat_s: float = 1.0,
        heartbeat_timeout_s: float = 30.0,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.settings = settings
        self.heartbeat_s = heartbeat_s
        self.heartbeat_timeout_s = heartbeat_timeout_s
        # Filled by the client's thread (a deque's append and popleft are atomic).
        self._inbound: deque[dict[str, Any]] = deque()
        self.link = ClusterLink(settings, self._inbound.append)
        self.scheduler = self.link.scheduler
        self.worker_state_dir = str(worker_state_dir or settings.worker_state_dir or state_dir)
        # Its outboxes' seq_block; both lanes, as the daemon's queue with this backend.
        self.queue = Queue(self.state_dir / QUEUE_DIR, queue, lanes=frozenset(DEVICES))
        self.paths = PathChecks(self.state_dir, self.worker_state_dir, self.link, settings.retry_s)
        self._tasks: dict[str, _Task] = {}  # command id -> task
        self._outboxes: dict[str, Outbox] = {}
        self._announced: set[str] = set()  # slots whose worker.started is recorded
        self._slot_count = 0
        self._retired: set[str] = set()  # worker addresses left out (they fell silent)
        self._kills: dict[str, str] = {}  # slot -> why its task is to be ended (kill)
        self._capacity_note: tuple[ClusterView | None, frozenset[str], str | None] = (
            None,
            frozenset(),
            None,
        )

    #: :meth:`describe` carries the cluster's counts, which change while the daemon runs.
    describe_changes = True

    # -- the Dispatcher interface -----------------------------------------------------------

    @property
    def available(self) -> bool:
        return self.link.available

    @property
    def capacity(self) -> int:
        """Trials the cluster can run at once: its whole units of ``dispatch.resource`` and
        ``dispatch.cpu_resource`` (but the retired workers'), at most ``dispatch.slots``;
        0 until measured."""
        units = sum(self.units().values())
        return units if self.settings.slots is None else min(units, self.settings.slots)

    def units(self) -> dict[str, int]:
        """The cluster's whole units of each of the two resources (retired workers left
        out); empty until measured or while the scheduler is out of reach."""
        view = self.link.view
        if not self.link.available or view is None:
            return {}
        names = (self.settings.resource, self.settings.cpu_resource)
        return {name: view.units(name, self._retired) for name in names}

    def routes(self) -> dict[Device, str]:
        """The resource a trial of each kind asks: its own while the cluster offers both,
        else the one it offers (every trial asks that); empty while it offers neither."""
        units = self.units()
        gpu, cpu = self.settings.resource, self.settings.cpu_resource
        if units.get(gpu, 0) > 0 and units.get(cpu, 0) > 0:
            return {"gpu": gpu, "cpu": cpu}
        for name in (gpu, cpu):
            if units.get(name, 0) > 0:
                return {"gpu": name, "cpu": name}
        return {}

    def workers_by_device(self) -> dict[str, tuple[int, int]]:
        """Trials in flight by the kind of resource they asked (no local threads)."""
        kinds = {self.settings.resource: "gpu", self.settings.cpu_resource: "cpu"}
        counts = {"gpu": (0, 0), "cpu": (0, 0)}
        for task in self._tasks.values():
            if task.future is not None:
                kind = kinds.get(task.resource, "gpu")
                counts[kind] = (counts[kind][0] + 1, 0)
        return counts

    def start(self, now: float | None = None) -> None:
        self.link.start(time.monotonic() if now is None else now)

    def worker_ids(self) -> list[WorkerId]:
        """Every slot id: they hold commands but are no processes with heartbeats."""
        return [self._slot_id(i) for i in range(self._slot_count)]

    def workers_alive(self) -> int:
        return self.link.workers

    def worker_pids(self) -> dict[WorkerId, int]:
        return {}  # nothing runs on this host: resources are the Dask workers' hosts'

    def gpus_in_use(self) -> set[int]:
        return set()

    def kill(self, worker_id: str, reason: str) -> bool:
        """End the task of slot ``worker_id`` at the next :meth:`poll`: ``worker.lost`` for
        the slot with ``reason``, its command taken back. False when the slot holds none."""
        if not any(t.slot == worker_id for t in self._tasks.values()):
            return False
        self._kills[worker_id] = reason
        return True

    def blocked(self) -> dict[str, str]:
        """``no_scheduler`` while it cannot be reached (not while first connecting), or
        ``no_capacity`` while its workers offer no unit of ``dispatch.resource``."""
        link = self.link
        if not link.available:
            if link.reason == CONNECTING:
                return {}
            return {"no_scheduler": f"dask scheduler {self.scheduler}: {link.reason}"}
        view = link.view
        if view is None:
            return {}
        # Asked every turn; the view changes once a second at most.
        seen, retired, reason = self._capacity_note
        if seen is not view or retired != self._retired:
            reason = None
            if view.units(self.settings.cpu_resource, self._retired) == 0:
                reason = no_capacity(self.settings.resource, view, self._retired)
            self._capacity_note = (view, frozenset(self._retired), reason)
        return {} if reason is None else {"no_capacity": reason}

    def status_note(self) -> str | None:
        if not self.link.available:
            return f"dask scheduler {self.scheduler}: {self.link.reason}; dispatching paused"
        if "no_capacity" in self.blocked():
            return f"dask cluster: no worker offers {self.settings.resource}; trials wait"
        return None

    def describe(self) -> dict[str, Any]:
        """For ``health.json`` and ``sentinel status``."""
        view = self.link.view
        return {
            "backend": "dask",
            "scheduler": self.scheduler,
            "connected": self.link.available,
            "reason": None if self.link.available else self.link.reason,
            "workers": self.link.workers,
            "resource": self.settings.resource,
            "offering": 0 if view is None else len(view.offering(self.settings.resource)),
            "cpu_resource": self.settings.cpu_resource,
            "offering_cpu": 0 if view is None else len(view.offering(self.settings.cpu_resource)),
            "units": self.units(),
            "retired": sorted(self._retired)[:5],
            "slots": self.capacity,
            "running": sum(1 for t in self._tasks.values() if t.future is not None),
        }

    def poll(self, now: float) -> PollResult:
        result = PollResult()
        client, lost = self.link.client_now(now)
        if lost:
            # What the slots held was cancelled with the connection. The trials did not
            # fail: back to pending with the same attempt, submitted again when it returns.
            for task in list(self._tasks.values()):
                if task.future is not None:
                    self._requeue(task)
        for task in [t for t in self._tasks.values() if t.slot in self._kills]:
            self._lost(task, self._kills[task.slot], result)
        self._kills.clear()
        if client is None:
            return result
        self._drain_inbound(result, now)
        # A future cancelled by the client means its connection just went, before its
        # status says so: dispatch nothing into it (each trial goes back to pending once).
        cancelled = [self._follow(task, result) for task in list(self._tasks.values())]
        self._judge_silence(result, now)
        self._forget_retired()
        for job_id, reason in self.paths.failed(now):
            result.events.append(JobFailed(job_id=JobId(job_id), reason=reason))
            for task in [t for t in self._tasks.values() if t.command.job_id == job_id]:
                if task.future is None:
                    self._release(task)
        if not any(cancelled):
            self._dispatch(client, result, now)
        return result

    def stop(self, grace_s: float) -> list[Event]:
        """Leave the cluster: tasks still running are abandoned (their commands stay held,
        and the next daemon takes them back with the same attempt)."""
        self.link.close(grace_s)
        return []

    # -- following tasks ---------------------------------------------------------------------

    def _drain_inbound(self, result: PollResult, now: float) -> None:
        while self._inbound:
            message = self._inbound.popleft()
            # The scheduler adds the sender's address to each message, as "worker".
            sender = message.get("worker")
            self._retired.discard(str(sender))  # it speaks again: it is alive
            task = self._tasks.get(str(message.get("command_id")))
            if task is None or task.future is None:
                continue  # a late message of a command no longer held
            execution = str(message.get("execution"))
            if message.get("kind") == "started":
                if execution not in task.executions:
                    task.executions.append(execution)
                if len(task.executions) > 1:
                    # The scheduler ran it again: the worker running it before was lost.
                    self._lost(
                        task,
                        "the Dask worker running it was lost (the scheduler "
                        f"started it again on {sender})",
                        result,
                    )
                    continue
            if task.executions[:1] != [execution]:
                continue  # a second execution, being stopped
            task.heard_at, task.worker = now, str(sender) if sender else task.worker
            if message.get("kind") == "progress":
                self._post(
                    task,
                    {
                        "kind": "progress",
                        "step": message.get("step"),
                        "value": message.get("value"),
                    },
                )

    def _judge_silence(self, result: PollResult, now: float) -> None:
        """Lose each task that a worker processes and that sent nothing for the timeout."""
        view = self.link.view
        timeout = self.heartbeat_timeout_s
        for task in list(self._tasks.values()):
            if task.future is None or task.future.done():
                continue
            if task.heard_at is None:
                on = None if view is None else view.processing.get(self._key(task))
                if on is not None:  # taken by a worker; it has this long to say so
                    task.heard_at, task.worker = now, on
                continue  # queued at the scheduler: no worker's silence to judge
            silent = now - task.heard_at
            if silent < timeout:
                continue
            worker = task.worker or "?"
            self._lost(
                task,
                f"the Dask worker {worker} running it sent nothing for {silent:.1f} s "
                f"(workers.heartbeat_timeout_s {timeout:g}): frozen, or cut off; it was "
                f"retired from the scheduler",
                result,
            )
            if task.worker is not None:
                self._retired.add(task.worker)
                self.link.retire(task.worker, f"silent for {silent:.1f} s mid-trial")

    def _forget_retired(self) -> None:
        """A retired worker that left the cluster is forgotten (an address may be reused)."""
        view = self.link.view
        if view is not None:
            self._retired &= set(view.resources)

    def _follow(self, task: _Task, result: PollResult) -> bool:
        """Act on ``task``'s prune request and finished future; True when the future was
        cancelled by the client (the connection went: the trial goes back to pending)."""
        cid = task.command.command_id
        if self.queue.should_prune(task.slot, cid):
            if task.future is None:  # still waiting for its check: nothing runs yet
                self._release(task)
                return False
            if not task.prune_sent:
                task.prune_sent = True
                self.link.prune(cid, True)
        future = task.future
        if future is None or not future.done():
            return False
        status = future.status
        if status == "finished":
            try:
                answer = future.result(timeout=5)
            except Exception as exc:  # the result could not be fetched: treat as lost
                self._lost(task, f"its result could not be fetched ({type(exc).__name__})", result)
                return False
            self._answer(task, answer)
        elif status == "cancelled":
            self._requeue(task)
            return True
        else:
            error = future.exception(timeout=5)
            name = type(error).__name__
            if name == "KilledWorker":
                self._lost(task, f"the Dask worker running it died ({error})"[:300], result)
            else:  # the task itself raised outside the trial code (an import error, say)
                self._post(task, {"kind": "failed", "error": f"dask task: {name}: {error}"})
                self._release(task)
        return False

    def _answer(self, task: _Task, answer: Any) -> None:
        if not isinstance(answer, dict) or answer.get("kind") not in ("saved", "pruned", "failed"):
            answer = {"kind": "failed", "error": f"not a trial's answer: {str(answer)[:200]}"}
        if not self._post(task, answer):
            answer = {"kind": "failed", "error": "the Dask task's answer is malformed"}
            self._post(task, answer)
        log.info(
            "dispatch.trial_answered",
            command_id=task.command.command_id,
            slot=task.slot,
            kind=answer["kind"],
        )
        self._release(task)

    def _post(self, task: _Task, fields: dict[str, Any]) -> bool:
        """Number ``fields`` (a task's message) as the slot's next and post it durably."""
        cid = task.command.command_id
        try:
            message = MESSAGE_ADAPTER.validate_python(
                {
                    **{k: v for k, v in fields.items() if k != "execution"},
                    "worker_id": task.slot,
                    "msg_seq": self._outbox(task.slot).next_seq(),
                    "command_id": cid,
                }
            )
        except ValidationError as exc:
            log.warning("dispatch.bad_message", command_id=cid, error=str(exc)[:500])
            return False
        self.queue.post(task.slot, message)
        return True

    def _release(self, task: _Task) -> None:
        """The slot's command is answered (or dropped): free the slot."""
        cid = task.command.command_id
        self.queue.finish(task.slot, cid)
        self._tasks.pop(cid, None)
        if task.prune_sent:
            self.link.prune(cid, False)

    def _requeue(self, task: _Task) -> None:
        cid = task.command.command_id
        for command in self.queue.take_back(task.slot):
            self.queue.put(command)
        self._tasks.pop(cid, None)
        log.info("dispatch.requeued", command_id=cid, slot=task.slot)

    def _lost(self, task: _Task, reason: str, result: PollResult) -> None:
        cid = task.command.command_id
        if task.future is not None:
            self.link.prune(cid, True)  # a rerun still going stops at a report
            with contextlib.suppress(Exception):
                task.future.cancel()
        self._tasks.pop(cid, None)
        result.events.append(WorkerLost(worker=task.slot, pid=0, gpu=None, reason=reason))
        result.taken_back.extend((task.slot, c) for c in self.queue.take_back(task.slot))
        self._announced.discard(task.slot)
        log.warning("dispatch.trial_lost", command_id=cid, slot=task.slot, reason=reason)

    # -- dispatching -------------------------------------------------------------------------

    def _dispatch(self, client: distributed.Client, result: PollResult, now: float) -> None:
        routes = self.routes()
        units = self.units()
        if len(set(routes.values())) == 2:
            # Both resources: each kind from its own lane, while a unit of its own is free.
            for device, resource in routes.items():
                while len(self._tasks) < self.capacity and (
                    sum(1 for t in self._tasks.values() if t.resource == resource) < units[resource]
                ):
                    if not self._claim(result, resource, lane=device):
                        break
        elif routes:
            resource = next(iter(routes.values()))
            while len(self._tasks) < self.capacity:
                if not self._claim(result, resource, lane=None):
                    break
        for task in list(self._tasks.values()):
            if task.future is not None:
                continue
            if self.paths.passed(task.command.job_id):
                self._submit(client, task)
            else:
                self.paths.ask(client, task.command, now)

    def _claim(self, result: PollResult, resource: str, lane: Device | None) -> bool:
        """Claim the oldest command of ``lane`` (None: of every lane) into a free slot, to
        ask ``resource``; False when there is none."""
        slot = self._free_slot()
        if lane is None:
            claimed = self.queue.claim(slot, every_lane=True)
        else:
            claimed = self.queue.claim(slot, lane)
        if claimed is None:
            return False
        if slot not in self._announced:
            result.events.append(WorkerStarted(worker=slot, pid=0, gpu=None))
            self._announced.add(slot)
        self._tasks[claimed.command.command_id] = _Task(slot, claimed.command, resource)
        return True

    def _submit(self, client: distributed.Client, task: _Task) -> None:
        # Retired workers are left out by name; without any, the scheduler picks freely.
        view = self.link.view
        only = (
            view.offering(task.resource, self._retired)
            if self._retired and view is not None
            else None
        )
        task.future = client.submit(
            run_trial_task,
            task.command.model_dump_json(),
            self.worker_state_dir,
            task.slot,
            self.heartbeat_s,
            key=self._key(task),
            resources={task.resource: 1},
            workers=only,
            allow_other_workers=False,
            pure=False,
            retries=0,
        )

    @staticmethod
    def _key(task: _Task) -> str:
        return KEY_PREFIX + task.command.command_id

    # -- slots -------------------------------------------------------------------------------

    @staticmethod
    def _slot_id(index: int) -> WorkerId:
        return WorkerId(f"{SLOT_PREFIX}{index}")

    def _free_slot(self) -> WorkerId:
        busy = {t.slot for t in self._tasks.values()}
        index = 0
        while self._slot_id(index) in busy:
            index += 1
        self._slot_count = max(self._slot_count, index + 1)
        return self._slot_id(index)

    def _outbox(self, slot: WorkerId) -> Outbox:
        outbox = self._outboxes.get(slot)
        if outbox is None:
            outbox = self._outboxes[slot] = Outbox(self.queue, slot)
        return outbox


__all__ = ["DaskDispatcher"]
