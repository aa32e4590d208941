"""Segment files on disk: their names, listing them, and reading them without surprises.

Every read of a segment goes through :func:`read_segment`, which refuses anything that is
not a regular file (a folder, a link, dangling or not, a FIFO) and turns an I/O error into
:class:`~sentinel_daemon.errors.LogUnreadable` naming the path and what to do, so that no
operator command and no start-up ends in a traceback. The cheap start-up checks that read
only the ends of segments (:func:`check_chain`, :func:`line_before`) live here too.
"""

from __future__ import annotations

import errno
import itertools
import os
import re
import stat
from collections.abc import Sequence
from pathlib import Path

from sentinel_daemon.errors import LogCorrupt, LogGap, LogUnreadable
from sentinel_daemon.fsutil import file_kind
from sentinel_daemon.log.records import BadRecord, Position, decode_line

SEGMENT_RE = re.compile(r"^(\d{20})\.jsonl$")
FILE_MODE = 0o640
_RESTORE = (
    "a segment must be a regular file: move this one out of events/ and put the segment back "
    "from a backup (`sentinel log verify` lists each segment and its seq range)"
)


def segment_name(first_seq: int) -> str:
    """Segments are named by the seq of their first record, zero-padded to sort as text."""
    return f"{first_seq:020d}.jsonl"


def list_segments(events_dir: Path) -> list[str]:
    """Segment file names in ``events_dir``, in seq order (other names are ignored).

    A missing folder is an empty log; one that is not a folder raises LogUnreadable.
    """
    try:
        names = os.listdir(events_dir)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise events_dir_unreadable(events_dir, exc) from None
    return sorted(n for n in names if SEGMENT_RE.match(n))


def make_events_dir(events_dir: Path) -> None:
    """Create ``events/`` (and its parents) if missing; LogUnreadable if it is not a folder."""
    try:
        events_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
    except OSError as exc:
        raise events_dir_unreadable(events_dir, exc) from None


def events_dir_unreadable(events_dir: Path, exc: OSError) -> LogUnreadable:
    """The error for an ``events/`` that cannot be listed (a file, a dangling link...)."""
    if exc.errno in (errno.ENOTDIR, errno.EEXIST, errno.ENOENT):
        try:
            what = f"is {kind_of(events_dir, os.lstat(events_dir).st_mode)}"
        except OSError:
            what = "cannot be listed"
        return LogUnreadable(
            events_dir,
            f"{what}, not the folder of the log's segments",
            "Move it aside and restore the events/ folder from a backup (only a new state "
            "directory starts without one)",
        )
    return LogUnreadable(
        events_dir,
        f"cannot be listed ({exc.strerror or exc})",
        "Check its permissions and the disk (`dmesg`); the daemon's user must own the state "
        "directory (docs/install.md)",
    )


def kind_of(path: Path, mode: int) -> str:
    """What a file that is not a regular file is, for messages: 'a directory', ..."""
    if stat.S_ISLNK(mode):
        try:
            target = os.readlink(path)
        except OSError:
            return "a symbolic link"
        dangling = "" if os.path.exists(path) else ", which does not exist"
        return f"a symbolic link to {target}{dangling}"
    return file_kind(mode)


def segment_size(path: Path) -> int:
    """The size of a segment, which must be a regular file (not followed if a link)."""
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise _unreadable(path, exc) from None
    if not stat.S_ISREG(st.st_mode):
        raise LogUnreadable(path, f"is {kind_of(path, st.st_mode)}", _RESTORE)
    return st.st_size


def read_segment(path: Path, offset: int = 0, limit: int | None = None) -> bytes:
    """The bytes of a segment from ``offset`` to its end (or to ``limit``), or LogUnreadable.

    Opened without following a link and without blocking (a FIFO in its place would
    otherwise wait for a writer), then checked to be a regular file.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise _unreadable(path, exc) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise LogUnreadable(path, f"is {kind_of(path, st.st_mode)}", _RESTORE)
        end = st.st_size if limit is None else min(limit, st.st_size)
        chunks = []
        pos = offset
        # Up to ``limit``, or to the end of file even if it grew since fstat (a reader
        # beside a running daemon sees what was written, as a plain read would).
        while limit is None or pos < end:
            chunk = os.pread(fd, max(end - pos, 1 << 16), pos)
            if not chunk:
                break
            if limit is not None:
                chunk = chunk[: end - pos]
            chunks.append(chunk)
            pos += len(chunk)
        return b"".join(chunks)
    except OSError as exc:
        raise _unreadable(path, exc) from None
    finally:
        os.close(fd)


def _unreadable(path: Path, exc: OSError) -> LogUnreadable:
    if exc.errno == errno.ELOOP:
        try:
            what = kind_of(path, os.lstat(path).st_mode)
        except OSError:
            what = "a symbolic link"
        return LogUnreadable(path, f"is {what}", _RESTORE)
    if exc.errno == errno.ENOENT:
        return LogUnreadable(
            path,
            "disappeared while the log was read",
            "Another process is changing events/: only the daemon (or `sentinel log repair`, "
            "under its lock) may; put the segment back from a backup if it was removed",
        )
    if exc.errno in (errno.EACCES, errno.EPERM):
        return LogUnreadable(
            path,
            "cannot be read (permission denied)",
            "The daemon's user must own the state directory and its segments "
            "(docs/install.md); fix the owner or mode",
        )
    return LogUnreadable(
        path,
        f"cannot be read ({exc.strerror or exc})",
        "Check the disk (`dmesg`, `smartctl`), then restore this segment from a backup; "
        "nothing in the log was changed",
    )


def line_before(events_dir: Path, position: Position) -> bytes | None:
    """The whole line (without its newline) that ends at ``position``, or None if none does."""
    path = events_dir / position.segment
    offset = position.offset
    if not os.path.lexists(path):
        return None
    size = segment_size(path)
    if offset <= 0 or offset > size:
        return None
    data = read_segment(path, max(0, offset - (1 << 20)), offset)
    if not data.endswith(b"\n"):
        return None
    return data[:-1].rsplit(b"\n", 1)[-1]


def lines_before(path: Path, offset: int) -> int:
    """How many lines precede ``offset`` (for error messages after a snapshot's start)."""
    if offset <= 0:
        return 0
    return read_segment(path, 0, offset).count(b"\n")


def last_seq_of(path: Path) -> int | None:
    """The seq of the last whole record of a segment, reading only its end."""
    size = segment_size(path)
    window = 1 << 16
    while True:
        start = max(0, size - window)
        data = read_segment(path, start, size)
        lines = data.rstrip(b"\n").split(b"\n")
        if len(lines) >= 2 or start == 0:
            if not lines[-1]:
                return None
            return decode_line(lines[-1]).seq
        window *= 4


def check_chain(events_dir: Path, segs: Sequence[str]) -> list[str]:
    """Check that each segment ends just before the next begins, reading only the ends.

    This is the cheap start-up check that catches a deleted or misplaced segment among
    those a snapshot lets us skip, the first one included (the log starts at seq 1);
    ``sentinel log verify`` and the scrub (:mod:`~sentinel_daemon.log.scrub`) read every
    record. Empty segments are left out of the chain and returned: an empty segment is
    only ever the newest one, so one among the covered segments is a stray.
    """
    # The last one is where the snapshot points: empty only for a snapshot of an empty log.
    strays = [s for s in segs[:-1] if segment_size(events_dir / s) == 0]
    chain = [s for s in segs if s not in strays]
    if chain and int(chain[0][:20]) != 1:
        raise LogGap(events_dir / chain[0], 1, 1, int(chain[0][:20]))
    for a, b in itertools.pairwise(chain):
        try:
            last = last_seq_of(events_dir / a)
        except BadRecord as exc:
            raise LogCorrupt(events_dir / a, 0, f"last record unreadable: {exc}") from None
        if last is None or last + 1 != int(b[:20]):
            raise LogGap(events_dir / b, 1, (last or 0) + 1, int(b[:20]))
    return strays
