"""Opening an input data file: once, without blocking, a regular file under a data root.

A job's data paths are checked when the job is accepted, but the files can change after:
one swapped for a FIFO made ``open()`` wait for a writer forever (the worker's heartbeat
kept beating, so nothing noticed), one swapped for a link to a file outside the data roots
was read. So the check is made again here, at the moment of opening, on what was opened:

1. ``stat`` (following links, as a data path may be a link inside the roots): anything
   but a regular file is refused before it is opened, since opening a device can have
   effects of its own;
2. ``open`` with ``O_NONBLOCK``, so that a FIFO swapped in since step 1 opens at once,
   then ``fstat`` of the open file: a regular file, or refused;
3. the path the kernel gives for the open file (``/proc/self/fd``: links resolved, not
   raceable) must lie under a data root, when roots are given.

Every reader of the file (hashing, the Parquet magic, the CSV header and scan, pyarrow)
reads this one open file, so all of them see the same file, whatever happens to the path.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from sentinel_daemon.fsutil import file_kind
from sentinel_daemon.ml.errors import DataError

_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


class DataFile:
    """An open input file: ``path`` as the job names it, ``real`` where it actually is."""

    def __init__(self, path: Path, real: str, fd: int, st: os.stat_result) -> None:
        self.path = path
        self.real = real
        self.stat = st
        self._file: BinaryIO = os.fdopen(fd, "rb")

    @property
    def size(self) -> int:
        return self.stat.st_size

    def fileno(self) -> int:
        return self._file.fileno()

    def pread(self, size: int, offset: int) -> bytes:
        """Up to ``size`` bytes at ``offset`` (fewer only at the end of the file)."""
        try:
            return os.pread(self.fileno(), size, offset)
        except OSError as exc:
            raise DataError(self.path, None, f"cannot be read: {exc.strerror or exc}") from exc

    def reader(self) -> BinaryIO:
        """The open file, at its start, for a library that reads it (pyarrow)."""
        self._file.seek(0)
        return self._file

    def chunks(self, size: int = 1 << 24) -> Iterator[bytes]:
        """The file's bytes in order, ``size`` at a time."""
        offset = 0
        while chunk := self.pread(size, offset):
            yield chunk
            offset += len(chunk)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> DataFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_data(path: Path, roots: Sequence[Path] | None = None) -> DataFile:
    """Open ``path`` as the module says; DataError names the file and why it is refused.

    ``roots`` None checks no root (a library caller, or a command written before commands
    carried the roots); an empty sequence refuses every file.
    """
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise DataError(path, None, "file not found") from None
    except OSError as exc:
        raise DataError(path, None, f"cannot be read: {exc.strerror or exc}") from None
    _require_regular(path, st.st_mode)
    try:
        fd = os.open(path, _FLAGS)
    except OSError as exc:
        why = "file not found" if exc.errno == errno.ENOENT else exc.strerror or str(exc)
        raise DataError(path, None, f"cannot be opened: {why}") from None
    try:
        st = os.fstat(fd)
        _require_regular(path, st.st_mode)
        real = _real_path(fd, path, st)
        if roots is not None:
            _require_inside(path, real, roots)
        return DataFile(path, real, fd, st)
    except BaseException:
        os.close(fd)
        raise


def _require_regular(path: Path, mode: int) -> None:
    if stat.S_ISREG(mode):
        return
    what = file_kind(mode)
    raise DataError(path, None, f"is {what}, not a data file; point the job at a regular file")


def _real_path(fd: int, path: Path, st: os.stat_result) -> str:
    """Where the open file is: the kernel's name for it, else the resolved path if that is
    still the same file (off Linux)."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        real = os.path.realpath(path)
        try:
            again = os.stat(real)
        except OSError:
            again = None
        if again is None or (again.st_dev, again.st_ino) != (st.st_dev, st.st_ino):
            raise DataError(
                path, None, "changed while it was opened; submit the job again"
            ) from None
        return real


def _require_inside(path: Path, real: str, roots: Sequence[Path]) -> None:
    resolved = [os.path.realpath(root) for root in roots]
    for root in resolved:
        if real == root or real.startswith(root.rstrip(os.sep) + os.sep):
            return
    shown = ", ".join(resolved) or "none configured"
    raise DataError(
        path,
        None,
        f"resolves to {real}, outside the data roots ({shown}): the file was replaced or "
        f"linked elsewhere after the job was accepted; put the data back under a data root",
    )


@contextmanager
def opened(source: Path | DataFile, roots: Sequence[Path] | None = None) -> Iterator[DataFile]:
    """``source`` itself if already open, else opened (and closed after) by :func:`open_data`."""
    if isinstance(source, DataFile):
        yield source
        return
    with open_data(source, roots) as data:
        yield data
