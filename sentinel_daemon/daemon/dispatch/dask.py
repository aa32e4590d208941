"""The ``dask`` dispatch backend: trials on a Dask distributed cluster (``dispatch.backend``).

The daemon stays what it is with local workers: the single writer of the log and the owner
of every study. Only the last hop of a trial command changes. The job actor still puts
commands into ``STATE/queue/pending/`` and reads answers from ``STATE/queue/results/``;
:class:`DaskDispatcher` stands where the local
:class:`~sentinel_daemon.daemon.dispatch.local.Supervisor` stands, and is to the queue what
a set of local workers would be:

- it claims a pending command into one of its *slots* (``queue/workers/dask-<n>/``; one
  command each, as many slots as the cluster offers ``dispatch.resource`` units, or
  ``dispatch.slots``) and submits it to the scheduler as a task that asks for one unit of
  that resource, under the key ``sentinel-<command_id>``;
- a Dask worker runs :func:`~sentinel_daemon.daemon.dispatch.dask_task.run_trial_task`
  (the worker's side, in :mod:`~sentinel_daemon.daemon.dispatch.dask_task`): the trial code
  of ``sentinel worker``, progress sent back with ``Worker.log_event`` and pruning asked
  through a ``distributed.Event``;
- the dispatcher posts every answer into ``results/`` under the slot's id (through an
  :class:`~sentinel_daemon.queue.maildir.Outbox`, fsynced), where the daemon ingests it exactly as
  a local worker's; prune requests the actor writes into the slot's folder become the
  task's Event.

Failures map onto what the daemon already handles. A Dask worker that dies under a task
(``KilledWorker``, with the scheduler's ``allowed-failures`` at 0 as the docs advise; or,
with a higher setting, a second execution of the same task seen starting) is reported as
``worker.lost`` for the slot, with the commands taken back, so the trial is retried under
``trials.max_attempts``. A scheduler that cannot be reached pauses dispatching (``available``
is False, ``sentinel status`` and the log say why); the commands held in slots go back to
``pending/`` with the same attempt (the trial did not fail) and are submitted again once
it returns. A restarted daemon takes back the commands its predecessor's slots held, with
the same attempt, like any dead worker's. A resubmitted command never trains a finished
trial twice: a task first looks for a complete model of its attempt on disk
(:func:`sentinel_daemon.ml.artifacts.find_saved`) and answers with it; and the same key on the
same Dask worker joins the execution still running there.

Before the first command of a job is submitted, every Dask worker is asked to check that
it can read the job's data and write its cache and model folders; a job whose data some
worker cannot reach fails with the worker and the path named.

Dask moves the function by reference and its arguments through its own protocol; every
argument Sentinel passes is a JSON string or plain text (no pickled objects of ours), and
answers come back as JSON-compatible dicts that the daemon validates.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from pydantic import ValidationError

from sentinel_daemon.core.events import Event, JobFailed, WorkerLost, WorkerStarted
from sentinel_daemon.core.ids import JobId, WorkerId
from sentinel_daemon.daemon.dispatch import PollResult
from sentinel_daemon.daemon.dispatch.dask_cluster import ClusterLink
from sentinel_daemon.daemon.dispatch.dask_task import (
    PRUNE_PREFIX,
    check_paths,
    run_trial_task,
)
from sentinel_daemon.fsutil import atomic_write_bytes
from sentinel_daemon.queue.maildir import Outbox, Queue
from sentinel_daemon.queue.messages import MESSAGE_ADAPTER, TrialCommand

if TYPE_CHECKING:
    import distributed

    from sentinel_daemon.settings import DispatchSettings

log = structlog.get_logger(__name__)

KEY_PREFIX = "sentinel-"
SLOT_PREFIX = "dask-"
#: A file in the state directory that Dask workers must read back (shared storage check).
MARKER_FILE = "dispatch-id"


# ---- the daemon's side --------------------------------------------------------------------


@dataclass
class _Task:
    """A command held by a slot: waiting for its job's path check, or submitted."""

    slot: WorkerId
    command: TrialCommand
    future: distributed.Future[Any] | None = None
    executions: list[str] = field(default_factory=list)
    prune_sent: bool = False


@dataclass(frozen=True)
class _Check:
    job_id: str
    future: concurrent.futures.Future[dict[str, list[str]]]


class DaskDispatcher:
    """Dispatches ``state_dir``'s queued commands to a Dask scheduler (see the module doc).

    The daemon drives it as it drives the local supervisor: :meth:`start`, :meth:`poll`
    each turn, :meth:`stop`. What may wait on the scheduler (connecting, counting workers,
    path checks, prune events) runs on a helper thread; the core loop only submits (which
    does not wait) and fetches a finished task's answer (one round trip to the worker,
    bounded by 5 s). ``worker_state_dir`` overrides ``settings.worker_state_dir``.
    """

    def __init__(
        self,
        state_dir: Path,
        settings: DispatchSettings,
        *,
        worker_state_dir: Path | None = None,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.settings = settings
        self.link = ClusterLink(settings, self._inbound_message)
        self.scheduler = self.link.scheduler
        self.worker_state_dir = str(worker_state_dir or settings.worker_state_dir or state_dir)
        self.queue = Queue(self.state_dir / "queue")
        self._tasks: dict[str, _Task] = {}  # command id -> task
        self._outboxes: dict[str, Outbox] = {}
        self._announced: set[str] = set()  # slots whose worker.started is recorded
        self._slot_count = 0
        self._checked: set[str] = set()  # job ids whose paths every worker can reach
        self._checks: dict[str, _Check] = {}
        self._check_after: dict[str, float] = {}  # job id -> when to ask again
        self._inbound: deque[dict[str, Any]] = deque()  # filled by the client's thread

    #: :meth:`describe` carries the cluster's counts, which change while the daemon runs.
    describe_changes = True

    # -- the Dispatcher interface -----------------------------------------------------------

    @property
    def available(self) -> bool:
        return self.link.available

    @property
    def client(self) -> distributed.Client | None:
        return self.link.client

    @property
    def capacity(self) -> int:
        """Trials the cluster can take at once: ``dispatch.slots``, or its units."""
        if not self.link.available:
            return 0
        return self.settings.slots if self.settings.slots is not None else int(self.link.units)

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
        return False  # no local process to kill (the memory ceiling is Dask's own)

    def status_note(self) -> str | None:
        if self.link.available:
            return None
        return f"dask scheduler {self.scheduler}: {self.link.reason}; dispatching paused"

    def describe(self) -> dict[str, Any]:
        """For ``health.json`` and ``sentinel status``."""
        return {
            "backend": "dask",
            "scheduler": self.scheduler,
            "connected": self.link.available,
            "reason": None if self.link.available else self.link.reason,
            "workers": self.link.workers,
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
        if client is None:
            return result
        self._drain_inbound(result)
        for task in list(self._tasks.values()):
            self._follow(task, result)
        self._finish_checks(result, now)
        self._dispatch(client, result, now)
        return result

    def stop(self, grace_s: float) -> list[Event]:
        """Leave the cluster: tasks still running are abandoned (their commands stay held,
        and the next daemon takes them back with the same attempt)."""
        self.link.close(grace_s)
        return []

    def _inbound_message(self, message: dict[str, Any]) -> None:
        self._inbound.append(message)  # on the client's thread: only hand it over

    # -- following tasks ---------------------------------------------------------------------

    def _drain_inbound(self, result: PollResult) -> None:
        while self._inbound:
            message = self._inbound.popleft()
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
                        f"started it again on {message.get('worker')})",
                        result,
                    )
                continue
            # Progress of the first execution only (a second one is being stopped).
            # (The scheduler adds its own keys, such as the sender's address, to each.)
            if message.get("kind") == "progress" and task.executions[:1] == [execution]:
                self._post(
                    task,
                    {
                        "kind": "progress",
                        "step": message.get("step"),
                        "value": message.get("value"),
                    },
                )

    def _follow(self, task: _Task, result: PollResult) -> None:
        cid = task.command.command_id
        if self.queue.should_prune(task.slot, cid):
            if task.future is None:  # still waiting for its check: nothing runs yet
                self._release(task)
                return
            if not task.prune_sent:
                task.prune_sent = True
                self.link.background(self._set_prune, cid)
        future = task.future
        if future is None or not future.done():
            return
        status = future.status
        if status == "finished":
            try:
                answer = future.result(timeout=5)
            except Exception as exc:  # the result could not be fetched: treat as lost
                self._lost(task, f"its result could not be fetched ({type(exc).__name__})", result)
                return
            self._answer(task, answer)
        elif status == "cancelled":
            self._requeue(task)
        else:
            error = future.exception(timeout=5)
            name = type(error).__name__
            if name == "KilledWorker":
                self._lost(task, f"the Dask worker running it died ({error})"[:300], result)
            else:  # the task itself raised outside the trial code (an import error, say)
                self._post(task, {"kind": "failed", "error": f"dask task: {name}: {error}"})
                self._release(task)

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

    def _set_prune(self, command_id: str) -> None:
        import distributed

        if self.client is not None:
            with contextlib.suppress(Exception):
                distributed.Event(PRUNE_PREFIX + command_id, client=self.client).set()

    def _clear_prune(self, command_id: str) -> None:
        import distributed

        if self.client is not None:
            with contextlib.suppress(Exception):
                distributed.Event(PRUNE_PREFIX + command_id, client=self.client).clear()

    def _release(self, task: _Task) -> None:
        """The slot's command is answered (or dropped): free the slot."""
        cid = task.command.command_id
        self.queue.finish(task.slot, cid)
        self._tasks.pop(cid, None)
        if task.prune_sent:
            self.link.background(self._clear_prune, cid)

    def _requeue(self, task: _Task) -> None:
        cid = task.command.command_id
        for command in self.queue.take_back(task.slot):
            self.queue.put(command)
        self._tasks.pop(cid, None)
        log.info("dispatch.requeued", command_id=cid, slot=task.slot)

    def _lost(self, task: _Task, reason: str, result: PollResult) -> None:
        cid = task.command.command_id
        if task.future is not None:
            self.link.background(self._set_prune, cid)  # a rerun still going stops at a report
            with contextlib.suppress(Exception):
                task.future.cancel()
        self._tasks.pop(cid, None)
        result.events.append(WorkerLost(worker=task.slot, pid=0, gpu=None, reason=reason))
        result.taken_back.extend((task.slot, c) for c in self.queue.take_back(task.slot))
        self._announced.discard(task.slot)
        log.warning("dispatch.trial_lost", command_id=cid, slot=task.slot, reason=reason)

    # -- dispatching -------------------------------------------------------------------------

    def _dispatch(self, client: distributed.Client, result: PollResult, now: float) -> None:
        while len(self._tasks) < self.capacity:
            slot = self._free_slot()
            claimed = self.queue.claim(slot)
            if claimed is None:
                break
            if slot not in self._announced:
                result.events.append(WorkerStarted(worker=slot, pid=0, gpu=None))
                self._announced.add(slot)
            self._tasks[claimed.command.command_id] = _Task(slot, claimed.command)
        for task in list(self._tasks.values()):
            if task.future is not None:
                continue
            job_id = task.command.job_id
            if job_id in self._checked:
                self._submit(client, task)
            elif job_id not in self._checks and now >= self._check_after.get(job_id, 0.0):
                self._checks[job_id] = _Check(
                    job_id, self.link.background(self._check_job, client, task.command)
                )

    def _submit(self, client: distributed.Client, task: _Task) -> None:
        task.future = client.submit(
            run_trial_task,
            task.command.model_dump_json(),
            self.worker_state_dir,
            task.slot,
            key=KEY_PREFIX + task.command.command_id,
            resources={self.settings.resource: 1},
            pure=False,
            retries=0,
        )

    def _check_job(self, client: distributed.Client, command: TrialCommand) -> dict[str, list[str]]:
        """On the helper thread: ask every worker whether it can serve ``command``'s job."""
        root = Path(self.worker_state_dir)
        data = command.data
        reads = [str(root / data.transactions)]
        if data.identity is not None:
            reads.append(str(root / data.identity))
        writes = [str(root / data.cache_dir), str(root / command.artifact_dir)]
        marker = str(root / MARKER_FILE)
        answers: dict[str, list[str]] = client.run(
            check_paths, marker, self._marker_text(), reads, writes
        )
        return answers

    def _marker_text(self) -> str:
        """The state directory's identity, written once; workers must read it back."""
        path = self.state_dir / MARKER_FILE
        try:
            return path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            text = uuid.uuid4().hex
            atomic_write_bytes(path, text.encode())
            return text

    def _finish_checks(self, result: PollResult, now: float) -> None:
        for job_id, check in list(self._checks.items()):
            if not check.future.done():
                continue
            del self._checks[job_id]
            try:
                answers = check.future.result()
            except Exception as exc:  # the connection went, a worker left meanwhile...
                log.warning("dispatch.check_failed", job=job_id, error=str(exc)[:500])
                answers = {}
            if not answers:  # no worker to ask (yet): ask again a little later
                self._check_after[job_id] = now + self.settings.retry_s
                continue
            problems = [f"{w}: {p}" for w, ps in sorted(answers.items()) for p in ps]
            if not problems:
                self._checked.add(job_id)
                log.info("dispatch.paths_checked", job=job_id, workers=len(answers))
                continue
            reason = (
                "Dask workers cannot reach the job's files (shared storage must be mounted "
                "at the same path on every worker host, see docs/dask.md): "
                + "; ".join(problems[:5])
            )
            log.error("dispatch.paths_unreachable", job=job_id, problems=problems[:20])
            result.events.append(JobFailed(job_id=JobId(job_id), reason=reason[:2000]))
            for task in [t for t in self._tasks.values() if t.command.job_id == job_id]:
                if task.future is None:
                    self._release(task)

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
