"""Crash-safe file primitives: write to a temporary name, fsync, rename, fsync the folder."""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import IO

#: Permission bits the daemon and its workers never grant: group write, anything for others.
PRIVATE_UMASK = 0o027
#: Folders operators leave files in (``inbox/``, ``control/``): group-writable, and setgid so
#: that a file an operator leaves keeps the group the daemon reads it through.
DROP_DIR_MODE = 0o2770


def restrict_umask() -> int:
    """Add :data:`PRIVATE_UMASK` to the process's umask (never loosening it); return the old one.

    Only the service user writes the state directory and only its group reads it
    (DESIGN.md, "Operations"). systemd's ``UMask=0027`` says so for the units, but
    ``sentinel run`` started from a shell inherits the shell's umask (0022: every folder
    made without an explicit mode world-readable; 0000: world-writable). Child processes
    (workers, stages, reports) inherit the restricted umask.
    """
    old = os.umask(PRIVATE_UMASK)
    os.umask(old | PRIVATE_UMASK)
    return old


def make_drop_dir(path: Path) -> bool:
    """Create ``path`` as a folder operators drop files into (:data:`DROP_DIR_MODE`).

    An existing folder is left as it is: docs/install.md has systemd-tmpfiles make these
    2770 for the operators' group, and ``sentinel doctor`` reports what is wrong with one.
    Returns False when the setgid bit could not be set (systemd's ``RestrictSUIDSGID=``
    refuses it): the folder then stays private to the daemon (0750 after the umask) rather
    than taking files the daemon could not read.
    """
    try:
        path.mkdir(mode=0o750)
    except FileExistsError:
        return True
    try:
        os.chmod(path, DROP_DIR_MODE)
    except PermissionError:
        return False
    return True


def fsync_dir(path: Path) -> None:
    """Make a rename or create in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_writer(path: Path, mode: int = 0o640) -> Iterator[IO[bytes]]:
    """Yield a binary file that replaces ``path`` atomically and durably on success.

    The data goes to ``.<name>.<pid>.tmp`` in the same folder, is fsynced, renamed over
    ``path`` and the folder is fsynced. On error the temporary file is removed and
    ``path`` is untouched, so a reader sees either the old or the new file, never half.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes, mode: int = 0o640) -> None:
    """Replace ``path`` with ``data`` atomically and durably."""
    with atomic_writer(path, mode) as fh:
        fh.write(data)


def copy_file_durably(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` through :func:`atomic_writer`, preserving nothing but bytes."""
    with open(src, "rb") as fin, atomic_writer(dst) as fout:
        while chunk := fin.read(1 << 20):
            fout.write(chunk)


def numbered_names(name: str, *, keep_suffix: bool = True) -> Iterator[str]:
    """``name``, then ``<stem>.1<suffix>``, ``<stem>.2<suffix>``...: names to try beside it.

    With ``keep_suffix`` the suffix stays last, so that ``job.1.yaml`` is still a YAML
    file to whoever opens it; without, the number follows the whole name (``x.json.1``), as
    the queue has always named the files it sets aside in ``dead/`` and ``bad/``.
    """
    yield name
    stem, suffix = os.path.splitext(name) if keep_suffix else (name, "")
    n = 1
    while True:
        yield f"{stem}.{n}{suffix}"
        n += 1


def free_name(path: Path, companion: str = "", *, keep_suffix: bool = True) -> Path:
    """``path`` if nothing is there, else the first free name of :func:`numbered_names`.

    ``companion`` names a file that goes beside the result (``.reason``): it must be free
    too. Choosing then renaming is race-free only while one thread of one process moves
    files into the folder; where others may, link into each candidate instead (a link
    never replaces a file; a rename silently does).
    """
    return next(
        candidate
        for candidate in map(path.with_name, numbered_names(path.name, keep_suffix=keep_suffix))
        if not os.path.lexists(candidate)
        and not (companion and os.path.lexists(candidate.with_name(candidate.name + companion)))
    )


def file_kind(mode: int) -> str:
    """What a file of this ``st_mode`` is, for messages: 'a regular file', 'a directory', ..."""
    if stat.S_ISREG(mode):
        return "a regular file"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISFIFO(mode):
        return "a FIFO (a pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"
