"""Crash-safe file primitives: write to a temporary name, fsync, rename, fsync the folder."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO


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
