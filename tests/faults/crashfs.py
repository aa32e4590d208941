"""Crash states in the spirit of ALICE (Pillai et al., OSDI 2014): record what a workload
does to the file system, then build the states a power cut could leave behind.

:class:`Recorder` is a thin layer over the ``os`` calls Sentinel's durable paths make
(``open``, ``write``, ``pwrite``, ``ftruncate``, ``fsync``, ``fdatasync``, ``rename``,
``replace``, ``link``, ``unlink``, ``rmdir``, ``mkdir``, ``close``, and ``fdopen`` and
``open`` for writing), installed in-process with :mod:`unittest.mock` while a scripted
workload runs. It lets every call through and logs, for files under its root, one
:class:`Op` per change, keyed by inode (so that a renamed folder takes its entries along).
Defaults bound at import time (``FileLog``'s ``write=os.write`` and ``sync=os.fdatasync``,
``Store.open``'s ``sync``) are swapped too.

:func:`crash_state` replays a prefix of the ops, leaving out any that were not yet durable
at the cut, as :class:`Crash` says. The persistence model is deliberately weaker than
ext4's (which commits all earlier metadata with any fsync), as POSIX allows and other file
systems do:

- a write or truncation of a file is durable once that file is fsynced (or fdatasynced)
  afterwards; until then it may be lost, with the writes to one file lost from the end
  (a prefix survives), and the last surviving one may be torn at 512-byte sectors (any
  subset of its sectors written; the rest keep their old bytes, zeros past the old end);
- creating, linking, removing or renaming an entry is durable once its folder (for a
  rename, the destination's) is fsynced afterwards; until then it may be undone, each
  independently of the others; a rename is atomic (both names or neither).
"""

from __future__ import annotations

import builtins
import contextlib
import io
import os
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

SECTOR = 512
ROOT_INO = 1

#: Op kinds that change a folder's entries, and those that change a file's bytes.
ENTRY_OPS = ("creat", "mkdir", "link", "unlink", "rename")
DATA_OPS = ("write", "trunc")


@dataclass(frozen=True)
class Op:
    """One change to the file system (or an fsync), as the recorder saw it."""

    kind: str  # creat mkdir link unlink rename write trunc fsync
    ino: int  # the file or folder changed (fsync: the one synced)
    parent: int = 0  # entry ops: the folder of the entry (rename: the source's)
    name: str = ""
    dst_parent: int = 0  # rename: the destination folder
    dst_name: str = ""
    offset: int = 0  # write: where; trunc: the new size
    data: bytes = b""
    path: str = ""  # for people: the path it was done through

    @property
    def folder(self) -> int:
        """The folder whose fsync makes this entry op durable."""
        return self.dst_parent if self.kind == "rename" else self.parent


@dataclass
class _Fd:
    ino: int
    is_dir: bool
    append: bool
    pos: int = 0


class Tree:
    """Folders and files by inode: what a state directory holds at some point."""

    def __init__(self) -> None:
        self.entries: dict[tuple[int, str], int] = {}
        self.dirs: set[int] = {ROOT_INO}
        self.content: dict[int, bytearray] = {}

    def copy(self) -> Tree:
        other = Tree()
        other.entries = dict(self.entries)
        other.dirs = set(self.dirs)
        other.content = {k: bytearray(v) for k, v in self.content.items()}
        return other

    def lookup(self, parts: tuple[str, ...]) -> int | None:
        ino = ROOT_INO
        for part in parts:
            found = self.entries.get((ino, part))
            if found is None:
                return None
            ino = found
        return ino

    def apply(self, op: Op, torn: frozenset[int] | None = None) -> None:
        """Apply ``op``; for a write, ``torn`` is the set of its sectors that reached the disk."""
        if op.kind in ("creat", "link"):
            self.entries[(op.parent, op.name)] = op.ino
            self.content.setdefault(op.ino, bytearray())
        elif op.kind == "mkdir":
            self.entries[(op.parent, op.name)] = op.ino
            self.dirs.add(op.ino)
        elif op.kind == "unlink":
            if self.entries.get((op.parent, op.name)) == op.ino:
                del self.entries[(op.parent, op.name)]
        elif op.kind == "rename":
            if self.entries.get((op.parent, op.name)) == op.ino:
                del self.entries[(op.parent, op.name)]
            self.entries[(op.dst_parent, op.dst_name)] = op.ino
        elif op.kind == "trunc":
            buf = self.content.setdefault(op.ino, bytearray())
            del buf[op.offset :]
            buf.extend(bytes(op.offset - len(buf)))
        elif op.kind == "write":
            buf = self.content.setdefault(op.ino, bytearray())
            end = op.offset + len(op.data)
            if len(buf) < end:
                buf.extend(bytes(end - len(buf)))
            if torn is None:
                buf[op.offset : end] = op.data
            else:
                for sector in torn:
                    lo = max(op.offset, sector * SECTOR)
                    hi = min(end, (sector + 1) * SECTOR)
                    buf[lo:hi] = op.data[lo - op.offset : hi - op.offset]

    def materialize(self, dest: Path) -> int:
        """Write the tree under ``dest`` (which must not exist); return the files written."""
        dest.mkdir(parents=True)
        children: dict[int, list[tuple[str, int]]] = {}
        for (parent, name), ino in self.entries.items():
            children.setdefault(parent, []).append((name, ino))
        count = 0
        stack = [(ROOT_INO, dest)]
        seen = {ROOT_INO}
        while stack:
            folder, path = stack.pop()
            for name, ino in sorted(children.get(folder, [])):
                target = path / name
                if ino in self.dirs:
                    if ino in seen:
                        continue
                    seen.add(ino)
                    target.mkdir()
                    stack.append((ino, target))
                else:
                    target.write_bytes(bytes(self.content.get(ino, b"")))
                    count += 1
        return count


def sectors_of(op: Op) -> list[int]:
    """The 512-byte sectors (by file offset) a write covers."""
    if not op.data:
        return []
    return list(range(op.offset // SECTOR, (op.offset + len(op.data) - 1) // SECTOR + 1))


class _WriteFile(io.RawIOBase):
    """What ``os.fdopen(fd, "wb")`` and ``open(path, "wb")`` return under the recorder:
    writes go through the (recorded) ``os.write``; no buffering, so none is lost."""

    def __init__(self, fd: int, recorder: Recorder) -> None:
        self._fd = fd
        self._recorder = recorder

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        n = 0
        while n < len(view):
            n += self._recorder.write(self._fd, view[n:])
        return n

    def fileno(self) -> int:
        return self._fd

    def close(self) -> None:
        if not self.closed:
            self._recorder.close(self._fd)
        super().close()


class Recorder:
    """Records the changes made under ``root`` while installed (a context manager)."""

    def __init__(self, root: Path) -> None:
        self.root = os.path.realpath(root)
        self.ops: list[Op] = []
        self.tree = Tree()
        self._fds: dict[int, _Fd] = {}
        self._next_ino = ROOT_INO + 1
        self._real: dict[str, Callable[..., Any]] = {}
        self._scan_existing()

    # -- what is already there ---------------------------------------------------------------

    def _scan_existing(self) -> None:
        """Existing files and folders are the durable base every crash state starts from."""
        self.base = Tree()
        stack = [(ROOT_INO, self.root)]
        while stack:
            ino, path = stack.pop()
            for entry in sorted(os.scandir(path), key=lambda e: e.name):
                new = self._new_ino()
                self.base.entries[(ino, entry.name)] = new
                if entry.is_dir(follow_symlinks=False):
                    self.base.dirs.add(new)
                    stack.append((new, Path(entry.path)))
                else:
                    with open(entry.path, "rb") as fh:
                        self.base.content[new] = bytearray(fh.read())
        self.tree = self.base.copy()

    def _new_ino(self) -> int:
        self._next_ino += 1
        return self._next_ino

    def _rel(self, path: Any) -> tuple[str, ...] | None:
        """Path components under the root, or None for a path elsewhere."""
        full = os.path.abspath(os.fsdecode(path))
        if full == self.root:
            return ()
        if not full.startswith(self.root + os.sep):
            return None
        return tuple(full[len(self.root) + 1 :].split(os.sep))

    def _record(self, op: Op) -> None:
        self.ops.append(op)
        self.tree.apply(op)

    @staticmethod
    def _no_dir_fd(kwargs: dict[str, Any]) -> None:
        if kwargs.get("dir_fd") is not None or kwargs.get("src_dir_fd") is not None:
            raise NotImplementedError("the crash recorder does not follow dir_fd")

    # -- the recorded calls ---------------------------------------------------------------------

    def open(self, path: Any, flags: int, mode: int = 0o777, **kwargs: Any) -> int:
        self._no_dir_fd(kwargs)
        rel = self._rel(path)
        existed = rel is not None and self.tree.lookup(rel) is not None
        fd: int = self._real["open"](path, flags, mode, **kwargs)
        if rel is None:
            return fd
        ino = self.tree.lookup(rel)
        if ino is None:  # created by this call
            parent = self.tree.lookup(rel[:-1])
            assert parent is not None, f"created {path} in a folder the recorder never saw"
            ino = self._new_ino()
            self._record(Op("creat", ino, parent, rel[-1], path="/".join(rel)))
        elif existed and flags & os.O_TRUNC and ino not in self.tree.dirs:
            self._record(Op("trunc", ino, offset=0, path="/".join(rel)))
        self._fds[fd] = _Fd(ino, ino in self.tree.dirs, bool(flags & os.O_APPEND))
        return fd

    def write(self, fd: int, data: Any) -> int:
        n: int = self._real["write"](fd, data)
        info = self._fds.get(fd)
        if info is not None and n > 0:
            chunk = bytes(memoryview(data).cast("B")[:n])
            offset = len(self.tree.content.get(info.ino, b"")) if info.append else info.pos
            self._record(Op("write", info.ino, offset=offset, data=chunk))
            info.pos = offset + n
        return n

    def pwrite(self, fd: int, data: Any, offset: int) -> int:
        n: int = self._real["pwrite"](fd, data, offset)
        info = self._fds.get(fd)
        if info is not None and n > 0:
            chunk = bytes(memoryview(data).cast("B")[:n])
            self._record(Op("write", info.ino, offset=offset, data=chunk))
        return n

    def ftruncate(self, fd: int, length: int) -> None:
        self._real["ftruncate"](fd, length)
        info = self._fds.get(fd)
        if info is not None:
            self._record(Op("trunc", info.ino, offset=length))

    def fsync(self, fd: Any) -> None:
        fd = fd if isinstance(fd, int) else fd.fileno()
        self._real["fsync"](fd)
        info = self._fds.get(fd)
        if info is not None:
            self._record(Op("fsync", info.ino))

    def fdatasync(self, fd: int) -> None:
        self._real["fdatasync"](fd)
        info = self._fds.get(fd)
        if info is not None:
            self._record(Op("fsync", info.ino))

    def close(self, fd: int) -> None:
        self._fds.pop(fd, None)
        self._real["close"](fd)

    def _entry(self, path: Any) -> tuple[int, str, int | None, str] | None:
        rel = self._rel(path)
        if rel is None or not rel:
            return None
        parent = self.tree.lookup(rel[:-1])
        if parent is None:
            return None
        return parent, rel[-1], self.tree.entries.get((parent, rel[-1])), "/".join(rel)

    def rename(self, src: Any, dst: Any, **kwargs: Any) -> None:
        self._no_dir_fd(kwargs)
        a, b = self._entry(src), self._entry(dst)
        self._real["rename"](src, dst, **kwargs)
        if a is not None and b is not None and a[2] is not None:
            self._record(Op("rename", a[2], a[0], a[1], b[0], b[1], path=f"{a[3]} -> {b[3]}"))

    def replace(self, src: Any, dst: Any, **kwargs: Any) -> None:
        self._no_dir_fd(kwargs)
        a, b = self._entry(src), self._entry(dst)
        self._real["replace"](src, dst, **kwargs)
        if a is not None and b is not None and a[2] is not None:
            self._record(Op("rename", a[2], a[0], a[1], b[0], b[1], path=f"{a[3]} -> {b[3]}"))

    def link(self, src: Any, dst: Any, **kwargs: Any) -> None:
        self._no_dir_fd(kwargs)
        a, b = self._entry(src), self._entry(dst)
        self._real["link"](src, dst, **kwargs)
        if a is not None and b is not None and a[2] is not None:
            self._record(Op("link", a[2], b[0], b[1], path=b[3]))

    def unlink(self, path: Any, **kwargs: Any) -> None:
        self._no_dir_fd(kwargs)
        e = self._entry(path)
        self._real["unlink"](path, **kwargs)
        if e is not None and e[2] is not None:
            self._record(Op("unlink", e[2], e[0], e[1], path=e[3]))

    def rmdir(self, path: Any, **kwargs: Any) -> None:
        self._no_dir_fd(kwargs)
        e = self._entry(path)
        self._real["rmdir"](path, **kwargs)
        if e is not None and e[2] is not None:
            self._record(Op("unlink", e[2], e[0], e[1], path=e[3]))

    def mkdir(self, path: Any, mode: int = 0o777, **kwargs: Any) -> None:
        self._no_dir_fd(kwargs)
        e = self._entry(path)
        self._real["mkdir"](path, mode, **kwargs)
        if e is not None:
            ino = self._new_ino()
            self.tree.dirs.add(ino)
            self._record(Op("mkdir", ino, e[0], e[1], path=e[3]))

    def fdopen(self, fd: int, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if fd in self._fds and ("w" in mode or "a" in mode) and "b" in mode:
            return _WriteFile(fd, self)
        return self._real["fdopen"](fd, mode, *args, **kwargs)

    def open_file(self, file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        """``builtins.open``: writing a binary file under the root goes through the recorder."""
        if isinstance(file, int) or self._rel(file) is None or mode in ("r", "rb", "rt"):
            return self._real["builtins.open"](file, mode, *args, **kwargs)
        if "b" not in mode or "+" in mode or "r" in mode:
            raise NotImplementedError(f"the crash recorder does not follow open(mode={mode!r})")
        flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC
        flags |= os.O_APPEND if "a" in mode else os.O_TRUNC if "w" in mode else os.O_EXCL
        return _WriteFile(self.open(file, flags, 0o666), self)

    # -- installing ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def installed(self) -> Iterator[Recorder]:
        names = ("open", "write", "pwrite", "ftruncate", "fsync", "fdatasync", "close",
                 "rename", "replace", "link", "unlink", "rmdir", "mkdir", "fdopen")  # fmt: skip
        self._real = {name: getattr(os, name) for name in names}
        self._real["builtins.open"] = builtins.open
        with contextlib.ExitStack() as stack:
            for name in names:
                stack.enter_context(mock.patch(f"os.{name}", getattr(self, name)))
            stack.enter_context(mock.patch("os.remove", self.unlink))
            stack.enter_context(mock.patch("builtins.open", self.open_file))
            stack.enter_context(mock.patch("io.open", self.open_file))
            for function, param in _bound_defaults():
                if function.__kwdefaults__[param] is self._real["write"]:
                    stack.enter_context(
                        mock.patch.dict(function.__kwdefaults__, {param: self.write})
                    )
                elif function.__kwdefaults__[param] is self._real["fdatasync"]:
                    stack.enter_context(
                        mock.patch.dict(function.__kwdefaults__, {param: self.fdatasync})
                    )
            yield self


def _bound_defaults() -> list[tuple[Any, str]]:
    """Keyword defaults that captured ``os.write``/``os.fdatasync`` when defined."""
    from sentinel_daemon.log.segments import FileLog
    from sentinel_daemon.log.store import Store

    found = []
    for function in (FileLog.open.__func__, FileLog.__init__, Store.open.__func__):  # type: ignore[attr-defined]
        for param in ("write", "sync"):
            if param in (function.__kwdefaults__ or {}):
                found.append((function, param))
    return found


# ---- crash states --------------------------------------------------------------------------


@dataclass(frozen=True)
class Crash:
    """A power cut after ``cut`` ops: which not-yet-durable ops still reached the disk."""

    cut: int
    #: Indexes (< cut) of ops left out although they ran.
    lost: frozenset[int] = frozenset()
    #: A write index -> the sectors of it that reached the disk (the rest did not).
    torn: tuple[tuple[int, frozenset[int]], ...] = ()
    #: process-kill, only-durable, some-lost or some-lost-torn.
    style: str = "process-kill"

    def describe(self, ops: list[Op]) -> str:
        lost = ", ".join(f"#{i} {ops[i].kind} {ops[i].path}" for i in sorted(self.lost)[:6])
        more = f" (+{len(self.lost) - 6})" if len(self.lost) > 6 else ""
        torn = "; ".join(f"#{i} torn, sectors {sorted(s)}" for i, s in self.torn)
        return f"cut after op {self.cut} ({self.style}); lost: {lost or '-'}{more}; {torn or ''}"


def volatile(ops: list[Op], cut: int) -> list[int]:
    """Indexes of ops before ``cut`` that no later fsync (before ``cut``) made durable."""
    synced_after: dict[int, int] = {}  # ino -> index of its last fsync before the cut
    for i in range(cut):
        if ops[i].kind == "fsync":
            synced_after[ops[i].ino] = i
    out = []
    for i in range(cut):
        op = ops[i]
        if op.kind in DATA_OPS:
            if synced_after.get(op.ino, -1) < i:
                out.append(i)
        elif op.kind in ENTRY_OPS and synced_after.get(op.folder, -1) < i:
            out.append(i)
    return out


def crash_state(base: Tree, ops: list[Op], crash: Crash) -> Tree:
    """The tree a power cut leaves: ``ops[:crash.cut]`` without ``crash.lost``."""
    tree = base.copy()
    torn = dict(crash.torn)
    for i in range(crash.cut):
        if i not in crash.lost and ops[i].kind != "fsync":
            tree.apply(ops[i], torn.get(i))
    return tree


def every_cut(ops: list[Op]) -> list[Crash]:
    """The harshest state at every cut: every op not yet durable lost."""
    return [
        Crash(cut, frozenset(volatile(ops, cut)), style="only-durable")
        for cut in range(len(ops) + 1)
    ]


def plan_crashes(ops: list[Op], r: random.Random, n: int) -> list[Crash]:
    """``n`` crash states, seeded: at random cuts, with none, all, or some volatile ops lost.

    Writes to one file are lost from the end (a prefix of them survives); the last one
    kept may be torn at sectors. Entry ops are lost independently.
    """
    crashes: list[Crash] = []
    interesting = [i + 1 for i, op in enumerate(ops) if op.kind in ("fsync", "rename", "write")]
    for k in range(n):
        cut = r.choice(interesting) if r.random() < 0.5 else r.randrange(len(ops) + 1)
        vol = volatile(ops, cut)
        style = ("process-kill", "only-durable", "some-lost", "some-lost-torn")[k % 4]
        if style == "process-kill" or not vol:
            crashes.append(Crash(cut))  # everything written survives
            continue
        if style == "only-durable":
            crashes.append(Crash(cut, frozenset(vol), style=style))
            continue
        lost: set[int] = set()
        by_ino: dict[int, list[int]] = {}
        for i in vol:
            if ops[i].kind in DATA_OPS:
                by_ino.setdefault(ops[i].ino, []).append(i)
            elif r.random() < 0.5:
                lost.add(i)
        torn: list[tuple[int, frozenset[int]]] = []
        for writes in by_ino.values():
            keep = r.randint(0, len(writes))
            lost.update(writes[keep:])
            if style == "some-lost-torn" and keep and ops[writes[keep - 1]].kind == "write":
                last = writes[keep - 1]
                sectors = sectors_of(ops[last])
                part = frozenset(s for s in sectors if r.random() < 0.5)
                if part != frozenset(sectors):
                    torn.append((last, part))
        crashes.append(Crash(cut, frozenset(lost), tuple(torn), style=style))
    return crashes


@dataclass
class Ack:
    """A workload step that returned (its effects must survive) after ``at`` ops."""

    at: int
    what: str
    data: dict[str, Any] = field(default_factory=dict)
