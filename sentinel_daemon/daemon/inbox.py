"""The watched inbox folder: notices job files, claims them, and sets rejected ones aside.

``STATE/inbox/`` takes ``*.yaml``, ``*.yml`` and ``*.json`` files; names beginning with a
dot are ignored, so writers can write ``.name.tmp`` and rename it in (what
:func:`submit_file` does). The :class:`Inbox` learns about files two ways: a watchdog
observer (inotify on Linux) for low latency, and a full listing every ``rescan_interval``
seconds because inotify drops events when its queue overflows, and does not work at all on
some network file systems.

When a file is complete matters: a file renamed or linked in is whole at once, but one
written in place is visible while still being written. So a file is reported at once on
a rename into the folder (``moved``) or when its writer closes it (``closed``), and a file
known only from a ``created`` event or from a listing is reported once its inode, size and
mtime have stayed the same for ``settle`` seconds. Writers that follow the contract
(write elsewhere, then rename) never wait for that.

Each file is reported at most once while it stays in the inbox with the same inode, size
and mtime; a different file under the same name, or the same one after it left and came
back, is reported again. Those decisions are pure, in
:class:`~sentinel_daemon.daemon.inboxdiff.InboxDiff`; this module does the I/O around them.
"""

from __future__ import annotations

import contextlib
import os
import queue
import stat
import sys
import threading
import time
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import TypeAlias, assert_never

import structlog
from watchdog.events import (
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

from sentinel_daemon.daemon.inboxdiff import Identity, InboxDiff
from sentinel_daemon.errors import InboxError
from sentinel_daemon.fsutil import atomic_write_bytes, free_name, fsync_dir, numbered_names
from sentinel_daemon.layout import REASON_SUFFIX, is_job_name
from sentinel_daemon.printable import printable

log = structlog.get_logger(__name__)


class InboxFileGone(InboxError):
    """The file is no longer where it was: claimed already, or removed. Safe to ignore."""

    def __init__(self, path: Path) -> None:
        self.path = path
        super().__init__(f"{path} is gone (claimed already, or removed); nothing to do")


class _Kind(StrEnum):
    READY = "ready"  # complete: renamed in, or closed after writing
    CANDIDATE = "candidate"  # present, maybe still being written
    GONE = "gone"  # left the inbox
    STOP = "stop"  # stop() wakes the inbox thread with this


_Item: TypeAlias = tuple[_Kind, str]  # (kind, file name)
_STOP: _Item = (_Kind.STOP, "")


class _Handler(FileSystemEventHandler):
    """Runs on watchdog's thread: only translates events and queues them."""

    def __init__(self, folder: str, put: Callable[[_Item], None]) -> None:
        self._folder = folder
        self._put = put

    def _name_in_folder(self, raw: bytes | str) -> str | None:
        path = os.fsdecode(raw)
        if not path or os.path.dirname(path) != self._folder:
            return None
        name = os.path.basename(path)
        return name if is_job_name(name) else None

    def on_created(self, event: FileSystemEvent) -> None:
        if not event.is_directory and (name := self._name_in_folder(event.src_path)):
            self._put((_Kind.CANDIDATE, name))

    def on_closed(self, event: FileSystemEvent) -> None:
        if name := self._name_in_folder(event.src_path):
            self._put((_Kind.READY, name))

    def on_deleted(self, event: FileSystemEvent) -> None:
        if name := self._name_in_folder(event.src_path):
            self._put((_Kind.GONE, name))

    def on_moved(self, event: FileSystemEvent) -> None:
        # With full events a move from outside has src "" and a move out has dest "".
        if event.is_directory:
            return
        if src := self._name_in_folder(event.src_path):
            self._put((_Kind.GONE, src))
        if dest := self._name_in_folder(event.dest_path):
            self._put((_Kind.READY, dest))


def _make_observer() -> BaseObserver:
    if sys.platform.startswith("linux"):
        from watchdog.observers.inotify import InotifyObserver

        # Full events tell a rename from another folder (complete at once) apart from a
        # create (maybe still being written); by default both arrive as "created".
        return InotifyObserver(generate_full_events=True)
    return Observer()


class Inbox:
    """Watches ``inbox_dir`` and calls ``on_file(path)`` for each new job file.

    ``on_file`` is always called from the inbox's own thread (``sentinel-inbox``), one call
    at a time, never from watchdog's thread; it should hand the path on (to a queue) and
    return quickly, since :meth:`stop` waits for it. An exception from it is logged and the
    file is not offered again unless it changes. :meth:`claim` and :meth:`reject` may be
    called from any thread.

    ``watch=False`` skips the observer and relies on listing alone, for file systems
    where inotify does not work (NFS); ``settle`` is described in the module docstring.
    """

    def __init__(
        self,
        inbox_dir: Path,
        claimed_dir: Path,
        rejected_dir: Path,
        *,
        rescan_interval: float,
        on_file: Callable[[Path], None],
        settle: float = 0.5,
        watch: bool = True,
    ) -> None:
        if rescan_interval <= 0:
            raise ValueError("rescan_interval must be positive")
        self.inbox_dir = Path(os.path.abspath(inbox_dir))
        self.claimed_dir = Path(os.path.abspath(claimed_dir))
        self.rejected_dir = Path(os.path.abspath(rejected_dir))
        self._rescan_interval = rescan_interval
        self._watch = watch
        self._on_file = on_file
        # Not a SimpleQueue: on Python 3.11 its get(timeout=...) can block forever when a
        # signal lands on this thread near the deadline (see Daemon.files).
        self._queue: queue.Queue[_Item] = queue.Queue()
        # What was reported and what waits to settle; claim() updates it too, hence the lock.
        self._diff = InboxDiff(settle)
        self._diff_lock = threading.Lock()
        # Serialises choosing a free name and renaming into it (see _move).
        self._move_lock = threading.Lock()
        self._observer: BaseObserver | None = None
        #: Full listings completed so far (for metrics, and for tests to wait on).
        self.rescans = 0
        self._thread: threading.Thread | None = None
        for folder in (self.inbox_dir, self.claimed_dir, self.rejected_dir):
            folder.mkdir(parents=True, exist_ok=True)

    # ---- life cycle -------------------------------------------------------------------

    def start(self) -> None:
        """Start the inbox thread (which lists the folder at once) and the observer."""
        if self._thread is not None:
            raise RuntimeError("Inbox already started")
        self._thread = threading.Thread(target=self._run, name="sentinel-inbox", daemon=True)
        self._thread.start()
        if self._watch:
            try:
                self._start_observer()
            except BaseException:
                self.stop()  # leave no thread behind a failed start
                raise

    def _start_observer(self) -> None:
        observer: BaseObserver | None = None
        try:
            observer = _make_observer()  # inotify_init happens here (and a thread starts)
            observer.schedule(
                _Handler(str(self.inbox_dir), self._queue.put),
                str(self.inbox_dir),
                recursive=False,
                event_filter=[FileCreatedEvent, FileMovedEvent, FileClosedEvent, FileDeletedEvent],
            )
            observer.start()  # inotify_add_watch happens here
        except OSError as exc:
            # Usually the inotify instance or watch limit. Listing still finds every file,
            # only later, so degrade rather than refuse to run.
            log.warning(
                "inbox.watch_failed",
                folder=str(self.inbox_dir),
                error=str(exc),
                fallback=f"listing every {self._rescan_interval}s",
            )
            if observer is not None:
                observer.stop()
                with contextlib.suppress(RuntimeError):  # its thread never started
                    observer.join()
            return
        self._observer = observer

    def stop(self) -> None:
        """Stop and join the observer and the inbox thread; safe to call more than once."""
        observer, self._observer = self._observer, None
        if observer is not None:
            observer.stop()
            observer.join()
        thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(_STOP)
            thread.join()

    @property
    def watching(self) -> bool:
        """Whether the observer runs (False: listing only, by choice or after a failure)."""
        return self._observer is not None

    def __enter__(self) -> Inbox:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- the inbox thread -------------------------------------------------------------

    def _run(self) -> None:
        next_rescan = time.monotonic()  # list at once: files that came while we were down
        while True:
            now = time.monotonic()
            with self._diff_lock:
                settles = self._diff.next_due()
            due = next_rescan if settles is None else min(next_rescan, settles)
            try:
                item: _Item | None = self._queue.get(timeout=max(0.0, due - now))
            except queue.Empty:
                item = None
            if item == _STOP:
                return
            if item is not None:
                self._handle(item)
            now = time.monotonic()
            if now >= next_rescan:
                self._rescan(now)
                next_rescan = now + self._rescan_interval
            self._settle_candidates(now)

    def _handle(self, item: _Item) -> None:
        kind, name = item
        match kind:
            case _Kind.READY:
                ident = self._identity(name)
                with self._diff_lock:
                    report = self._diff.complete(name, ident)
                if report:
                    self._report(name)
            case _Kind.CANDIDATE:
                ident = self._identity(name)
                with self._diff_lock:
                    self._diff.created(name, ident, time.monotonic())
            case _Kind.GONE:
                with self._diff_lock:
                    self._diff.removed(name)
            case _Kind.STOP:  # handled by the loop before it gets here
                pass
            case _:
                assert_never(kind)

    def _identity(self, name: str) -> Identity | None:
        try:
            st = os.lstat(self.inbox_dir / name)
        except OSError:
            return None
        if stat.S_ISDIR(st.st_mode):  # a folder named like a job file is not a job
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def _settle_candidates(self, now: float) -> None:
        with self._diff_lock:
            due = self._diff.due(now)
        if not due:
            return
        current = {name: ident for name in due if (ident := self._identity(name)) is not None}
        with self._diff_lock:
            ready = self._diff.settled(current, now)
        for name in ready:
            self._report(name)

    def _rescan(self, now: float) -> None:
        try:
            with os.scandir(self.inbox_dir) as entries:
                names = [e.name for e in entries if is_job_name(e.name)]
        except OSError as exc:
            log.error("inbox.list_failed", folder=str(self.inbox_dir), error=str(exc))
            return
        listing = {name: ident for name in names if (ident := self._identity(name)) is not None}
        with self._diff_lock:
            self._diff.listed(listing, now)
        self.rescans += 1

    def _report(self, name: str) -> None:
        try:
            self._on_file(self.inbox_dir / name)
        except Exception:
            log.exception("inbox.on_file_failed", file=printable(self.inbox_dir / name))

    # ---- moving files -----------------------------------------------------------------

    def claim(self, path: Path) -> Path:
        """Move ``path`` out of the inbox into the claimed folder; return its new path.

        Raises :class:`InboxFileGone` when the file is no longer in the inbox (claimed
        already, or removed): the caller can ignore it.
        """
        path = Path(path)
        if Path(os.path.abspath(path.parent)) != self.inbox_dir:
            raise ValueError(f"{path} is not in the inbox {self.inbox_dir}")
        # Link into claimed/, then unlink from the inbox, rather than rename: inotify reports
        # a rename out of a watched folder as a lone IN_MOVED_FROM, which watchdog holds back
        # (0.5 s) hoping to pair it, and every later inbox event waits behind it. A crash
        # between the two steps leaves twin names of one inode; see drop_claimed_twins.
        with self._move_lock:
            for name in numbered_names(path.name):
                dest = self.claimed_dir / name
                try:
                    os.link(path, dest, follow_symlinks=False)
                    break
                except FileExistsError:
                    continue
                except FileNotFoundError:
                    raise InboxFileGone(path) from None
            fsync_dir(self.claimed_dir)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        with self._diff_lock:
            self._diff.claimed(path.name)
        fsync_dir(self.inbox_dir)
        return dest

    def drop_claimed_twins(self) -> list[Path]:
        """Unlink inbox files that are the same inode as a claimed file (a crash mid-claim).

        Call before the inbox starts, so a file claimed once is not claimed twice.
        """
        claimed = set()
        for entry in os.scandir(self.claimed_dir):
            with contextlib.suppress(OSError):
                claimed.add((entry.stat(follow_symlinks=False).st_ino, entry.name))
        inodes = {ino for ino, _ in claimed}
        dropped = []
        for entry in os.scandir(self.inbox_dir):
            with contextlib.suppress(OSError):
                if entry.stat(follow_symlinks=False).st_ino in inodes:
                    os.unlink(entry.path)
                    dropped.append(Path(entry.path))
        if dropped:
            fsync_dir(self.inbox_dir)
            log.info("inbox.claimed_twins_dropped", files=[printable(p) for p in dropped])
        return dropped

    def reject(self, path: Path, reason: str, *, name: str | None = None) -> Path:
        """Move a claimed file (or an inbox file whose name the inbox refuses) to the
        rejected folder, as ``name`` (default: its own), with ``<name>.reason`` beside it.

        The file moves first and the reason follows: after a crash in between, the file is
        where an operator looks, and the reason is in the event log (``job.rejected``). So
        the reason file is best effort: one that cannot be written (a full disk) is logged
        and left out, never an error.
        """
        path = Path(path)
        dest = self._move(path, self.rejected_dir, companion=REASON_SUFFIX, name=name)
        if Path(os.path.abspath(path.parent)) == self.inbox_dir:
            with self._diff_lock:
                self._diff.removed(path.name)
        fsync_dir(path.parent)
        text = reason if reason.endswith("\n") else reason + "\n"
        try:
            atomic_write_bytes(dest.with_name(dest.name + REASON_SUFFIX), text.encode("utf-8"))
        except OSError as exc:
            log.error(
                "inbox.reason_not_written",
                file=str(dest),
                error=printable(exc),
                action="the reason is in the event log (sentinel tail --type job.rejected)",
            )
        return dest

    def _move(self, src: Path, folder: Path, companion: str = "", name: str | None = None) -> Path:
        with self._move_lock:
            # Check-then-rename is race-free here because only the daemon (one per state
            # dir, under its lock) writes claimed/ and rejected/, and this lock covers its
            # threads; os.rename itself would silently replace an existing file.
            dest = free_name(folder / (name or src.name), companion)
            try:
                os.rename(src, dest)
            except FileNotFoundError:
                if not os.path.lexists(src):
                    raise InboxFileGone(src) from None
                raise
        fsync_dir(folder)
        return dest
