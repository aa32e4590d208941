"""Which inbox files to report, decided from what was seen: listings in, decisions out.

The pure half of :class:`~sentinel_daemon.daemon.inbox.Inbox`, like watchdog's
``DirectorySnapshotDiff``: no I/O, no clock, no threads. The inbox lstat's files and lists
the folder, hands over what it saw with the time, and reports the names returned here.

A file is its :data:`Identity` (inode, size, mtime): the same name with another identity is
another file (replaced, or changed in place), and is reported again. A file known to be
whole (renamed in, or closed by its writer) is reported at once; one that may still be
being written (a ``created`` event, or found by a listing) becomes a candidate, reported
once its identity has stayed the same for ``settle`` seconds. A file is reported at most
once while it stays in the inbox as it is; once it has left (an event, or a listing
without it) a file coming back under its name is reported again.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeAlias

#: (inode, size, mtime in ns) from lstat: what "the same file" means for de-duplication.
Identity: TypeAlias = tuple[int, int, int]


class InboxDiff:
    """What the inbox has reported and what it waits on; each method takes what was seen.

    An identity of ``None`` means that the name is not (or no longer) a file in the inbox:
    gone, or a folder. Not thread-safe: the inbox calls it under its own lock.
    """

    def __init__(self, settle: float) -> None:
        self.settle = settle
        #: name -> identity when reported.
        self._reported: dict[str, Identity] = {}
        #: name -> (identity, time first seen so): waiting to settle.
        self._candidates: dict[str, tuple[Identity, float]] = {}

    def next_due(self) -> float | None:
        """When the earliest candidate will have waited ``settle`` seconds; None: none waits."""
        return min((since + self.settle for _, since in self._candidates.values()), default=None)

    def complete(self, name: str, ident: Identity | None) -> bool:
        """A file known to be whole (renamed in, closed): whether to report it now."""
        self._candidates.pop(name, None)
        if ident is None or self._reported.get(name) == ident:
            return False
        self._reported[name] = ident
        return True

    def created(self, name: str, ident: Identity | None, now: float) -> None:
        """A file that may still be being written: wait until it settles.

        Seen again unchanged, it keeps its first time; changed, its wait starts over.
        """
        if ident is None or self._reported.get(name) == ident:
            return
        known = self._candidates.get(name)
        if known is None or known[0] != ident:
            self._candidates[name] = (ident, now)

    def removed(self, name: str) -> None:
        """A file left the inbox (deleted, or renamed away)."""
        self._candidates.pop(name, None)
        self._reported.pop(name, None)

    def claimed(self, name: str) -> None:
        """A reported file was claimed out of the inbox: a file arriving under its name is new.

        A candidate under the name is kept: it can only be a newer file than the claimed one.
        """
        self._reported.pop(name, None)

    def listed(self, listing: Mapping[str, Identity], now: float) -> None:
        """A full listing of the inbox's job files: forget those that left, wait on new ones.

        Names already waiting are left to :meth:`settled`, which looks at them again.
        """
        for name in [n for n in self._reported if n not in listing]:
            del self._reported[name]
        for name in sorted(listing):
            if name not in self._candidates:
                self.created(name, listing[name], now)

    def due(self, now: float) -> list[str]:
        """The candidates that have waited ``settle`` seconds: look them up for :meth:`settled`."""
        return [n for n, (_, since) in self._candidates.items() if now - since >= self.settle]

    def settled(self, current: Mapping[str, Identity], now: float) -> list[str]:
        """The candidates to report now, given the identities the :meth:`due` ones have now.

        A due candidate missing from ``current`` is gone and forgotten; one that changed
        waits again from ``now``; one unchanged for ``settle`` seconds is reported.
        """
        ready: list[str] = []
        for name in self.due(now):
            ident, _since = self._candidates[name]
            now_ident = current.get(name)
            if now_ident is None:
                del self._candidates[name]
            elif now_ident != ident:
                self._candidates[name] = (now_ident, now)
            elif self.complete(name, ident):
                ready.append(name)
        return ready
