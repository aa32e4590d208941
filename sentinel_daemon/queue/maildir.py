"""The maildir-style queue directory between the daemon and its worker processes.

Layout under the queue root (the daemon uses ``STATE/queue/``)::

    tmp/                  every file is written here first, fsynced, then renamed away
    pending/              <command_id>.json: commands put by the daemon, not yet claimed
    pending-gpu/          the same, for GPU workers only, and for CPU workers only: the
    pending-cpu/          lanes (sentinel_daemon/queue/routing.py; names in layout.py)
    workers/<worker_id>/  <command_id>.json the worker claimed, heartbeat.json, msg_seq,
                          prune.<command_id> (control files from the daemon)
    results/              <worker_id>.<msg_seq:012d>.<kind>.json: worker -> daemon messages
    dead/                 commands taken back from lost workers, kept for the record
    bad/                  malformed files moved aside, each beside a ``.reason`` file

Every hand-off is a rename within one filesystem, so a file is wholly in a folder or not
there at all: nobody sees half a command or half a result, and of two workers renaming
the same pending file exactly one succeeds (the other gets ENOENT and tries the next).

Lanes. A queue opened with ``lanes`` (the daemon's, when it runs GPU and CPU workers) puts
a command whose ``device`` is one of them into that lane's folder, every other command into
``pending/``. A worker claims from ``pending/`` and its own lane (``claim(..., lane=)``),
oldest first across both. Every pending folder counts the same for ``put``'s duplicate
check, ``withdraw``, ``in_flight`` and restart; :meth:`Queue.relane` moves pending
commands into the folders that the current lanes say (a daemon restarted with other
workers), by rename, so a command is always in exactly one folder.

Roles: the daemon (one process, one thread) calls :meth:`Queue.put`, ``results``,
``ack``, ``take_back``, ``in_flight``, ``recover``, ``request_prune`` and ``last_beat``;
workers call ``claim``, ``beat``, ``should_prune``, post through an :class:`Outbox` (which
numbers their messages) and ``finish`` a command once its result is posted. ``finish`` is
idempotent, so a daemon may also call it for a command whose result it has ingested.

Crashes: ``put`` and ``post`` are durable (file and folder fsynced) before they return.
Claims, acks, finishes and take-backs are plain renames and unlinks without fsync: only a
power loss can undo one, a power loss kills the workers too, and the daemon's replay
repeats each of them harmlessly. A result can therefore be seen twice (the daemon died
between making its event durable and :meth:`Queue.ack`): ingesting a result again must be
a no-op, and that idempotency is the daemon's job, through its state (a trial already
saved ignores a second ``saved``). ``msg_seq`` lets a running daemon drop a replayed
message cheaply (:class:`~sentinel_daemon.queue.messages.ReplayFilter`); it is not a
substitute for the state check.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

import orjson
import structlog
from pydantic import (
    ValidationError,
)

from sentinel_daemon.core.ids import WorkerId
from sentinel_daemon.fsutil import atomic_write_bytes, free_name, fsync_dir
from sentinel_daemon.layout import QUEUE_LANES
from sentinel_daemon.queue.messages import (
    _WORKER_ID,
    MESSAGE_ADAPTER,
    WORKER_ID_PATTERN,
    Failed,
    Progress,
    Pruned,
    Saved,
    TrialCommand,
    WorkerMessage,
)
from sentinel_daemon.queue.routing import Device, lane_for
from sentinel_daemon.settings import QueueSettings

log = structlog.get_logger(__name__)

HEARTBEAT = "heartbeat.json"
SEQ_FILE = "msg_seq"
_RESULT_NAME = re.compile(r"^([A-Za-z0-9][A-Za-z0-9_-]*)\.([0-9]{12,})\.([a-z]+)\.json$")


# ---- messages ---------------------------------------------------------------------------


_M = TypeVar("_M", Progress, Saved, Pruned, Failed)


# ---- the queue --------------------------------------------------------------------------


class PutOutcome(StrEnum):
    """What :meth:`Queue.put` did: queued the command, or found it already in flight."""

    QUEUED = "queued"
    ALREADY_PENDING = "already-pending"
    ALREADY_CLAIMED = "already-claimed"


@dataclass(frozen=True)
class ClaimedCommand:
    """A command a worker now holds; ``path`` is its file under ``workers/<worker_id>/``."""

    worker_id: WorkerId
    command: TrialCommand
    path: Path


@dataclass(frozen=True)
class BadFile:
    """A malformed file moved to ``bad/``; ``reason`` is also in ``<moved_to>.reason``."""

    original: Path
    moved_to: Path
    reason: str


def _log_bad(bad: BadFile) -> None:
    log.warning(
        "queue.bad_file", file=str(bad.original), moved_to=str(bad.moved_to), reason=bad.reason
    )


class Queue:
    """One queue directory; safe to use from several processes at once (see the module doc).

    ``on_bad`` is told about every malformed file moved aside (the default logs a warning);
    the call that met it carries on as if the file had not been there. ``lanes``: the
    lanes :meth:`put` uses (see the module doc); none, every command goes to ``pending/``.
    """

    def __init__(
        self,
        root: Path,
        settings: QueueSettings | None = None,
        on_bad: Callable[[BadFile], None] = _log_bad,
        lanes: frozenset[Device] = frozenset(),
    ) -> None:
        self.root = Path(root)
        self.settings = settings or QueueSettings()
        self.on_bad = on_bad
        self.lanes = lanes
        self.tmp = self.root / "tmp"
        #: Every pending folder by lane (None: the shared ``pending/``).
        self.pending_dirs: dict[str | None, Path] = {
            lane: self.root / name for lane, name in QUEUE_LANES.items()
        }
        self.pending = self.pending_dirs[None]
        self.workers = self.root / "workers"
        self.results_dir = self.root / "results"
        self.dead = self.root / "dead"
        self.bad = self.root / "bad"
        folders = (self.tmp, *self.pending_dirs.values(), self.workers, self.results_dir)
        for folder in (*folders, self.dead, self.bad):
            folder.mkdir(parents=True, exist_ok=True)
        # put and post fsync the folder a file lands in; the folders' own entries (and the
        # queue's in the state directory) must be durable too, or a power cut takes them
        # with every command and result in them.
        fsync_dir(self.root)
        fsync_dir(self.root.parent)
        self._made_dirs: set[str] = set()
        self._last_put_ns = 0

    # -- daemon -> worker ------------------------------------------------------------------

    def put(self, command: TrialCommand) -> PutOutcome:
        """Queue ``command`` durably, unless its command id is already pending or claimed.

        The caller appends ``trial.started`` first (write-ahead); after a crash it may put
        the same command again, which is then a no-op. A command in ``dead/`` does not
        count: putting it again queues it again.
        """
        name = f"{command.command_id}.json"
        # Pending first, then claimed: a claim only ever moves pending -> workers, so a
        # command claimed between the two look-ups is still seen by the second. (relane
        # moves a command between pending folders only at the daemon's start-up, in the
        # daemon itself, never during a put.)
        if any((folder / name).exists() for folder in self.pending_dirs.values()):
            return PutOutcome.ALREADY_PENDING
        if self._holder(name) is not None:
            return PutOutcome.ALREADY_CLAIMED
        # The kernel stamps files from a clock that ticks every few ms, so puts in one tick
        # would tie; strictly rising stamps keep claim order equal to put order.
        self._last_put_ns = max(time.time_ns(), self._last_put_ns + 1)
        data = command.model_dump_json().encode()
        folder = self.pending_dirs[lane_for(command.device, self.lanes)]
        self._publish(name, folder / name, data, mtime_ns=self._last_put_ns)
        return PutOutcome.QUEUED

    def claim(
        self, worker_id: str, lane: Device | None = None, *, every_lane: bool = False
    ) -> ClaimedCommand | None:
        """Take the oldest pending command (by the time it was written), or None.

        From ``pending/`` and, given ``lane``, that lane's folder (never another lane's);
        ``every_lane``: from every pending folder (the Dask dispatcher, on a cluster that
        offers one kind of resource only).
        """
        wid = self._worker(worker_id)
        wdir = self.worker_dir(wid)
        if every_lane:
            folders = list(self.pending_dirs.values())
        else:
            folders = [self.pending] if lane is None else [self.pending, self.pending_dirs[lane]]
        for folder, name in self._pending_oldest_first(folders):
            target = wdir / name
            try:
                os.rename(folder / name, target)
            except FileNotFoundError:
                continue  # another worker renamed it first
            command = self._load_command(target, f"workers-{wid}")
            if command is not None:
                return ClaimedCommand(wid, command, target)
        return None

    def claim_wait(
        self,
        worker_id: str,
        timeout_s: float,
        stop: Callable[[], bool] = lambda: False,
        lane: Device | None = None,
    ) -> ClaimedCommand | None:
        """:meth:`claim`, polling every ``poll_interval_s`` until ``timeout_s`` or ``stop()``."""
        deadline = time.monotonic() + timeout_s
        while True:
            claimed = self.claim(worker_id, lane)
            if claimed is not None or stop() or time.monotonic() >= deadline:
                return claimed
            time.sleep(min(self.settings.poll_interval_s, max(deadline - time.monotonic(), 0)))

    def request_prune(self, worker_id: str, command_id: str) -> bool:
        """Ask the worker to stop ``command_id``; False, doing nothing, if it does not hold it."""
        wdir = self.workers / self._worker(worker_id)
        if not (wdir / f"{command_id}.json").exists():
            return False
        os.close(os.open(wdir / f"prune.{command_id}", os.O_WRONLY | os.O_CREAT, 0o640))
        return True

    def withdraw(self, command_id: str) -> bool:
        """Remove ``command_id`` from ``pending/`` before any worker claims it.

        False when it is not pending (claimed meanwhile, or never put). The daemon withdraws
        commands when it stops dispatching; its log still says the trial runs, so the next
        start puts the command again.
        """
        name = f"{command_id}.json"
        return any([_unlink(folder / name) for folder in self.pending_dirs.values()])

    def relane(self) -> int:
        """Move every pending command into the folder the current ``lanes`` give it.

        The daemon calls it at start-up, before its workers start: a command put into a
        lane by a predecessor that ran both kinds of workers must not wait in a lane that
        no worker serves now, and one in ``pending/`` goes to its lane now that there are
        lanes. A rename, so the command is in one folder at every instant (a worker of the
        predecessor's that still claims meanwhile just wins the race). How many moved.
        """
        moved = 0
        for lane, folder in self.pending_dirs.items():
            for name in self._command_names(folder):
                command = self._load_command(folder / name, QUEUE_LANES[lane])
                if command is None:
                    continue
                target = self.pending_dirs[lane_for(command.device, self.lanes)]
                if target == folder:
                    continue
                try:
                    os.rename(folder / name, target / name)
                except FileNotFoundError:
                    continue  # claimed meanwhile
                moved += 1
        if moved:
            for folder in self.pending_dirs.values():
                fsync_dir(folder)
        return moved

    def should_prune(self, worker_id: str, command_id: str) -> bool:
        """Whether the daemon asked to prune ``command_id`` (one stat: call it every round)."""
        return os.path.exists(f"{self.workers}/{worker_id}/prune.{command_id}")

    # -- worker -> daemon ------------------------------------------------------------------

    def post(self, worker_id: str, message: WorkerMessage) -> Path:
        """Deliver ``message`` into ``results/``; workers normally use :class:`Outbox`.

        Durably (fsync the file, rename, fsync the folder), except a :class:`Progress`: it
        only feeds the pruner in memory and is never recorded, so one lost to a crash only
        delays a pruning decision. Skipping its two fsyncs spares the worker's training
        loop every few rounds (and, with Dask, the daemon's core loop, which posts for its
        tasks). After a power cut such a file may be empty: :meth:`results` drops it.
        """
        wid = self._worker(worker_id)
        if message.worker_id != wid:
            raise ValueError(f"message of worker {message.worker_id!r} posted as {wid!r}")
        name = f"{wid}.{message.msg_seq:012d}.{message.kind}.json"
        path = self.results_dir / name
        data = message.model_dump_json().encode()
        self._publish(name, path, data, durable=not isinstance(message, Progress))
        return path

    def beat(self, worker_id: str, info: dict[str, Any]) -> None:
        """Replace the worker's heartbeat (``pid``, ``command_id`` or None, a counter).

        Atomic but not fsynced: liveness is read from the file's mtime, a power loss takes
        the worker down with the heartbeat, and an fsync per beat would cost every worker.
        """
        wid = self._worker(worker_id)
        tmp = self.tmp / f"heartbeat.{wid}.json"
        tmp.write_bytes(orjson.dumps({"pid": os.getpid(), **info}))
        os.rename(tmp, self.worker_dir(wid) / HEARTBEAT)

    # -- daemon side -----------------------------------------------------------------------

    def results(self) -> list[tuple[Path, WorkerMessage]]:
        """Every readable result, by worker id then ``msg_seq``; malformed ones go to bad/."""
        found: list[tuple[tuple[str, int], Path, WorkerMessage]] = []
        for name in os.listdir(self.results_dir):
            path = self.results_dir / name
            match = _RESULT_NAME.match(name)
            if match is None:
                self._move_aside(path, "results", "name is not <worker_id>.<msg_seq>.<kind>.json")
                continue
            message = self._load_result(path, match)
            if message is not None:
                found.append(((match[1], int(match[2])), path, message))
        found.sort(key=lambda item: item[0])
        return [(path, message) for _, path, message in found]

    def ack(self, path: Path) -> None:
        """Remove a result once the daemon's event for it is durable; a missing file is fine."""
        if Path(path).parent != self.results_dir:
            raise ValueError(f"{path} is not a result file of {self.results_dir}")
        _unlink(path)

    def finish(self, worker_id: str, command_id: str) -> bool:
        """Remove a finished command (and any prune request) from the worker's folder."""
        wdir = self.workers / self._worker(worker_id)
        removed = _unlink(wdir / f"{command_id}.json")
        _unlink(wdir / f"prune.{command_id}")
        return removed

    def take_back(self, worker_id: str, *, stop: bool = False) -> list[TrialCommand]:
        """Move every command a lost worker held into ``dead/`` and return them.

        Ingest :meth:`results` first: a result the worker posted before it died is real,
        and its trial must not be retried. The heartbeat stays, as the last sign of life.
        ``stop``: the worker may still run (one the daemon cannot kill); a prune request is
        left for each command taken, so that it stops at its next report (its answer is
        then for an attempt given up).
        """
        wid = self._worker(worker_id)
        wdir = self.workers / wid
        taken: list[TrialCommand] = []
        for name in sorted(self._command_names(wdir)):
            dead = self.dead / f"{name[: -len('.json')]}.{wid}.json"
            target = free_name(dead, keep_suffix=False)
            try:
                os.rename(wdir / name, target)
            except FileNotFoundError:
                continue  # finished (or taken back) meanwhile
            command = self._load_command(target, "dead")
            if command is not None:
                taken.append(command)
        for name in _listdir(wdir):
            if name.startswith("prune."):
                _unlink(wdir / name)
        for command in taken if stop else ():
            os.close(os.open(wdir / f"prune.{command.command_id}", os.O_WRONLY | os.O_CREAT, 0o640))
        return taken

    def in_flight(self) -> dict[str, WorkerId | None]:
        """Command id -> the worker holding it, or None while it is pending (for restart)."""
        flight: dict[str, WorkerId | None] = {
            name[: -len(".json")]: None
            for folder in self.pending_dirs.values()
            for name in self._command_names(folder)
        }
        for entry in os.scandir(self.workers):
            if entry.is_dir() and _WORKER_ID.match(entry.name):
                for name in self._command_names(Path(entry.path)):
                    flight[name[: -len(".json")]] = WorkerId(entry.name)
        return flight

    def last_beat(self, worker_id: str) -> tuple[float, dict[str, Any]] | None:
        """``(age in seconds by mtime, info)``, or None if the worker never beat.

        ``info`` is empty if the file cannot be read (a power loss can leave it empty).
        """
        path = self.workers / self._worker(worker_id) / HEARTBEAT
        try:
            mtime = path.stat().st_mtime
            info = orjson.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        except orjson.JSONDecodeError:
            info = {}
        return max(time.time() - mtime, 0.0), info if isinstance(info, dict) else {}

    def recover(self, older_than_s: float | None = None) -> list[Path]:
        """Remove ``tmp/`` files older than ``tmp_stale_s``: writes that never got renamed.

        Only old files go: a worker may be writing one while the daemon starts.
        """
        limit = self.settings.tmp_stale_s if older_than_s is None else older_than_s
        cutoff = time.time() - limit
        removed = []
        for entry in os.scandir(self.tmp):
            try:
                stale = entry.stat().st_mtime <= cutoff
            except FileNotFoundError:
                continue
            if stale and _unlink(Path(entry.path)):
                removed.append(Path(entry.path))
        return removed

    def worker_dir(self, worker_id: str) -> Path:
        """``workers/<worker_id>/``, created if needed (by the worker's own calls)."""
        path = self.workers / self._worker(worker_id)
        if worker_id not in self._made_dirs:
            path.mkdir(exist_ok=True)
            self._made_dirs.add(worker_id)
        return path

    # -- internals -------------------------------------------------------------------------

    @staticmethod
    def _worker(worker_id: str) -> WorkerId:
        """Refuse an id unfit to name a folder or to prefix result names."""
        if not _WORKER_ID.match(worker_id):
            raise ValueError(
                f"worker id {worker_id!r} must match {WORKER_ID_PATTERN} "
                f"(it names a folder and prefixes result files)"
            )
        return WorkerId(worker_id)

    def _publish(
        self,
        tmp_name: str,
        final: Path,
        data: bytes,
        mtime_ns: int | None = None,
        *,
        durable: bool = True,
    ) -> None:
        """Write in tmp/, fsync, rename to ``final``, fsync its folder (no fsyncs if not durable).

        Renamed into place whole either way: a reader never sees a partly written file
        unless a power cut lost what was not fsynced.
        """
        tmp = self.tmp / tmp_name
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if mtime_ns is not None:
                os.utime(fd, ns=(mtime_ns, mtime_ns))
            if durable:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            _unlink(tmp)
            raise
        os.close(fd)
        os.rename(tmp, final)
        if durable:
            fsync_dir(final.parent)

    def _holder(self, name: str) -> WorkerId | None:
        for entry in os.scandir(self.workers):
            if entry.is_dir() and os.path.exists(os.path.join(entry.path, name)):
                return WorkerId(entry.name)
        return None

    @staticmethod
    def _command_names(folder: Path) -> list[str]:
        return [
            name
            for name in _listdir(folder)
            if name.endswith(".json") and name != HEARTBEAT and not name.startswith(".")
        ]

    def _pending_oldest_first(self, folders: list[Path]) -> list[tuple[Path, str]]:
        # put stamps each file with a strictly rising mtime (rename keeps it) and the daemon
        # is the one writer, so this is put order (across folders too) unless the wall
        # clock steps back.
        keyed = []
        for folder in folders:
            for entry in os.scandir(folder):
                if entry.name.startswith("."):
                    continue
                if not entry.name.endswith(".json"):
                    reason = "not a <command_id>.json file"
                    self._move_aside(Path(entry.path), folder.name, reason)
                    continue
                try:
                    keyed.append((entry.stat().st_mtime_ns, entry.name, folder))
                except FileNotFoundError:
                    continue
        keyed.sort()
        return [(folder, name) for _, name, folder in keyed]

    def _load_command(self, path: Path, origin: str) -> TrialCommand | None:
        try:
            command = TrialCommand.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            return None
        except ValidationError as exc:
            self._move_aside(path, origin, _first_error(exc))
            return None
        # Files in dead/ carry the worker id after the command id.
        if origin != "dead" and path.stem != command.command_id:
            self._move_aside(path, origin, f"holds command {command.command_id}")
            return None
        return command

    def _load_result(self, path: Path, match: re.Match[str]) -> WorkerMessage | None:
        try:
            message = MESSAGE_ADAPTER.validate_json(path.read_bytes())
        except FileNotFoundError:
            return None
        except ValidationError as exc:
            if match[3] == Progress.model_fields["kind"].default:
                # Posted without fsync (see post()): a power cut can leave it empty. It
                # was only advice for the pruner; nothing is lost by dropping it.
                log.info("queue.progress_dropped", file=path.name, error=_first_error(exc))
                _unlink(path)
                return None
            self._move_aside(path, "results", _first_error(exc))
            return None
        if (message.worker_id, message.msg_seq, message.kind) != (
            match[1],
            int(match[2]),
            match[3],
        ):
            reason = f"holds {message.worker_id}.{message.msg_seq}.{message.kind}"
            self._move_aside(path, "results", f"name does not match content: {reason}")
            return None
        return message

    def _move_aside(self, path: Path, origin: str, reason: str) -> None:
        target = free_name(self.bad / f"{origin}.{path.name}", ".reason", keep_suffix=False)
        try:
            os.rename(path, target)
        except FileNotFoundError:
            return  # another process moved or claimed it first
        atomic_write_bytes(target.with_name(target.name + ".reason"), reason.encode() + b"\n")
        self.on_bad(BadFile(path, target, reason))


def _listdir(folder: Path) -> list[str]:
    """The names in ``folder``; none if it does not exist (a worker that never claimed)."""
    try:
        return os.listdir(folder)
    except FileNotFoundError:
        return []


def _unlink(path: Path) -> bool:
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "file"
    return f"{where}: {err['msg']}"


# ---- the worker's numbered channel ------------------------------------------------------


class Outbox:
    """A worker's side of ``results/``: numbers each message and posts it.

    ``msg_seq`` must keep rising when a worker restarts under the same id, or a daemon that
    remembers the old numbers would drop the new worker's messages as replays. Numbers are
    reserved in blocks, recorded durably in ``workers/<id>/msg_seq`` (hi/lo): a restart
    starts above the last reservation, skipping unused numbers; gaps are harmless.
    """

    def __init__(self, queue: Queue, worker_id: str) -> None:
        self.queue = queue
        self.worker_id = WorkerId(worker_id)
        self._file = queue.worker_dir(worker_id) / SEQ_FILE
        try:
            reserved = int(self._file.read_bytes())
        except FileNotFoundError:
            reserved = 0
        except ValueError:
            log.warning("queue.seq_file_unreadable", file=str(self._file))
            reserved = 0
        # Results not yet acknowledged also bound the numbers used (e.g. a lost seq file).
        prefix = f"{self.worker_id}."
        for name in os.listdir(queue.results_dir):
            match = _RESULT_NAME.match(name)
            if name.startswith(prefix) and match is not None:
                reserved = max(reserved, int(match[2]))
        self._next = reserved + 1
        self._ceiling = reserved

    def next_seq(self) -> int:
        if self._next > self._ceiling:
            self._ceiling = self._next + self.queue.settings.seq_block - 1
            atomic_write_bytes(self._file, str(self._ceiling).encode())
        seq = self._next
        self._next += 1
        return seq

    def send(self, kind: type[_M], command_id: str, **fields: Any) -> _M:
        """Build a ``kind`` message with the next ``msg_seq`` and post it durably.

        ``outbox.send(Saved, command_id, artifact=..., sha256=..., metrics=..., value=...,
        train_seconds=..., duration_s=...)``. A message that fails validation (a NaN score,
        say) raises ``ValidationError`` in the worker; the number it took is just skipped.
        """
        message = kind.model_validate(
            {
                **fields,
                "worker_id": self.worker_id,
                "msg_seq": self.next_seq(),
                "command_id": command_id,
            }
        )
        self.queue.post(self.worker_id, message)
        return message


__all__ = [
    "BadFile",
    "ClaimedCommand",
    "Outbox",
    "PutOutcome",
    "Queue",
]
