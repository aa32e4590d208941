"""Snapshots of the state, so that start-up replays only the log's tail.

A snapshot is an optimisation only: one JSON file, replaced atomically, that records
the seq it covers, the log position just past that record and that record's checksum
(``last_crc``: so that a snapshot copied from another state directory, whose log has a
record of the same seq at the same place, is not taken for ours). It closes with a
checksum of its own bytes, like a log record. If it is missing, damaged, of another
state version, ahead of the log ("from the future", e.g. the log was restored from an
older backup) or from another log, the caller warns and replays the whole log.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import orjson

from sentinel_daemon.core.state import STATE_VERSION, State, state_as_dict, state_from_data
from sentinel_daemon.fsutil import atomic_write_bytes
from sentinel_daemon.log.records import Position

SNAPSHOT_FORMAT = 1
_CRC_RE = re.compile(r"[0-9a-f]{8}")


class SnapshotInvalid(Exception):
    """The snapshot cannot be used; ``reason`` says why. Not fatal: replay everything."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


@dataclass(frozen=True)
class Snapshot:
    seq: int
    position: Position
    state: State
    #: The checksum of the record at ``seq`` (None: an empty log, or an older snapshot).
    last_crc: str | None = None


def write_snapshot(
    path: Path, state: State, position: Position, last_crc: str | None = None
) -> None:
    """Atomically replace the snapshot at ``path`` with ``state`` as of ``position``."""
    head = orjson.dumps(
        {
            "format": SNAPSHOT_FORMAT,
            "seq": state.last_seq,
            "segment": position.segment,
            "offset": position.offset,
            "last_crc": last_crc,
            "state": state_as_dict(state),
        }
    )[:-1]
    atomic_write_bytes(path, b'%s,"crc":"%08x"}\n' % (head, zlib.crc32(head)))


def load_snapshot(path: Path) -> Snapshot | None:
    """Read the snapshot at ``path``; ``None`` when there is none.

    Raises :class:`SnapshotInvalid` when it exists but cannot be trusted.
    """
    try:
        data = path.read_bytes().rstrip(b"\n")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise SnapshotInvalid(path, f"unreadable: {exc}") from None
    if len(data) < 20 or data[-18:-10] != b',"crc":"' or not data.endswith(b'"}'):
        raise SnapshotInvalid(path, "no checksum at the end (torn or not a snapshot)")
    if b"%08x" % zlib.crc32(data[:-18]) != data[-10:-2]:
        raise SnapshotInvalid(path, "checksum mismatch")
    obj = orjson.loads(data)
    if obj.get("format") != SNAPSHOT_FORMAT:
        raise SnapshotInvalid(path, f"format {obj.get('format')!r}, expected {SNAPSHOT_FORMAT}")
    raw_state = obj.get("state") or {}
    if raw_state.get("version") != STATE_VERSION:
        raise SnapshotInvalid(
            path, f"state version {raw_state.get('version')!r}, expected {STATE_VERSION}"
        )
    try:
        state = state_from_data(raw_state)
        seq = int(obj["seq"])
        position = Position(str(obj["segment"]), int(obj["offset"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise SnapshotInvalid(path, f"does not decode: {exc}") from None
    if state.last_seq != seq:
        raise SnapshotInvalid(path, f"covers seq {seq} but its state is at {state.last_seq}")
    last_crc = obj.get("last_crc")  # absent from snapshots written before it existed
    if last_crc is not None and not (isinstance(last_crc, str) and _CRC_RE.fullmatch(last_crc)):
        raise SnapshotInvalid(path, f"last_crc {last_crc!r} is not 8 hex digits")
    return Snapshot(seq, position, state, last_crc)
