"""Mending what the scrub finds that can be mended without losing a record.

Two kinds: a duplicated line (a second, byte-identical copy of the record before it) and a
stray empty segment. Each mend copies what it changes into ``events/damaged/`` first, and
replaces a segment only through a temporary file, fsync and rename, so a crash at any
point leaves either the old segment or the new one, and the copy. The caller holds the
state-directory lock (``sentinel log repair``).
"""

from __future__ import annotations

import os
from collections.abc import Collection, Sequence
from pathlib import Path

from sentinel_daemon.fsutil import atomic_write_bytes, copy_file_durably, free_name, fsync_dir
from sentinel_daemon.layout import DAMAGED_DIR, EVENTS_DIR
from sentinel_daemon.log.records import Position
from sentinel_daemon.log.segfiles import FILE_MODE, read_segment, segment_size
from sentinel_daemon.log.segments import LogScan
from sentinel_daemon.log.snapshot import SnapshotInvalid, load_snapshot, write_snapshot

#: (offset, length) of a line taken out of a segment, newline included.
Cut = tuple[int, int]


def damaged_dir(events_dir: Path) -> Path:
    damaged = events_dir / DAMAGED_DIR
    damaged.mkdir(mode=0o750, exist_ok=True)
    return damaged


def set_aside(events_dir: Path, segment: str, stamp: str) -> Path:
    """Move an empty segment into ``events/damaged/``; returns where it went."""
    if segment_size(events_dir / segment) != 0:
        raise ValueError(f"{segment} is not empty; only an empty segment is set aside whole")
    target = free_name(damaged_dir(events_dir) / f"{segment}.{stamp}", keep_suffix=False)
    os.rename(events_dir / segment, target)
    fsync_dir(target.parent)
    fsync_dir(events_dir)
    return target


def remove_lines(
    events_dir: Path, segment: str, lines: Collection[int], stamp: str
) -> tuple[Path, list[Cut]]:
    """Take the 1-based ``lines`` out of ``segment`` after copying it to ``events/damaged/``.

    Returns the copy's path and where the removed lines were, for moving a snapshot's
    position (:func:`shift_snapshot`).
    """
    path = events_dir / segment
    backup = free_name(damaged_dir(events_dir) / f"{segment}.{stamp}", keep_suffix=False)
    copy_file_durably(path, backup)
    fsync_dir(backup.parent)
    data = read_segment(path)
    parts = data.split(b"\n")
    kept: list[bytes] = []
    cuts: list[Cut] = []
    offset = 0
    for k, line in enumerate(parts[:-1], start=1):
        if k in lines:
            cuts.append((offset, len(line) + 1))
        else:
            kept.append(line)
        offset += len(line) + 1
    atomic_write_bytes(path, b"".join(x + b"\n" for x in kept) + parts[-1], FILE_MODE)
    return backup, cuts


def shift_snapshot(snapshot_path: Path, segment: str, cuts: Sequence[Cut]) -> bool:
    """Move the snapshot's position back over lines cut before it in ``segment``, if that
    is what makes it fit the mended log again; returns whether it was rewritten.

    A snapshot written while the duplicate was there counts it in its offset; one written
    before the damage does not, and fits the mended log as it is. Whichever fits is kept;
    one that fits neither way (or cannot be read) is left alone: the daemon ignores it
    and replays the whole log.
    """
    try:
        snap = load_snapshot(snapshot_path)
    except SnapshotInvalid:
        return False
    if snap is None or snap.position.segment != segment:
        return False
    events_dir = snapshot_path.parent / EVENTS_DIR
    if _fits(events_dir, snap.position, snap.seq, snap.last_crc):
        return False
    before = sum(length for offset, length in cuts if offset < snap.position.offset)
    position = Position(segment, snap.position.offset - before)
    if not before or not _fits(events_dir, position, snap.seq, snap.last_crc):
        return False
    write_snapshot(snapshot_path, snap.state, position, snap.last_crc)
    return True


def _fits(events_dir: Path, position: Position, seq: int, crc: str | None) -> bool:
    return LogScan(events_dir, start=position, expect_seq=seq + 1, start_crc=crc).fits_start()
