"""The byte format of one log record: a flat JSON object closed by its own checksum.

A record is serialised as ``{"seq":1,"ts":"...","type":"...","v":1,...}``; its last
``}`` is then replaced by ``,"crc":"<crc32 hex of everything before>"}`` and a newline.
A reader checks the exact bytes it read, without re-serialising, and ``jq`` still sees a
plain JSON object per line.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

_CRC_KEY = b',"crc":"'
_SUFFIX_LEN = len(_CRC_KEY) + 8 + 2  # ,"crc":"xxxxxxxx"}
ENVELOPE_KEYS = ("seq", "ts", "crc")


@dataclass(frozen=True, slots=True)
class Position:
    """A place in the log: the byte offset just past a record in a named segment."""

    segment: str
    offset: int


@dataclass(frozen=True, slots=True)
class Record:
    """One decoded record: envelope plus the event's own fields (``type``, ``v``, ...)."""

    seq: int
    ts: str
    payload: dict[str, Any]


class BadRecord(ValueError):
    """The bytes of one line are not a whole, intact record."""


def format_ts(moment: datetime) -> str:
    """RFC 3339 in UTC with microseconds and a ``Z``, sortable as text."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def encode_line(seq: int, ts: str, payload: dict[str, Any]) -> bytes:
    """Serialise one record with its closing checksum and newline."""
    for key in ENVELOPE_KEYS:
        if key in payload:
            raise ValueError(f"event field {key!r} clashes with the record envelope")
    head = orjson.dumps({"seq": seq, "ts": ts, **payload})[:-1]
    return b'%s,"crc":"%08x"}\n' % (head, zlib.crc32(head))


def decode_line(line: bytes) -> tuple[int, str, dict[str, Any]]:
    """Check and decode one line (without its newline) into ``(seq, ts, payload)``.

    Raises :class:`BadRecord` when the checksum does not match the bytes or the record
    lacks its envelope.
    """
    if len(line) <= _SUFFIX_LEN or line[-_SUFFIX_LEN:-10] != _CRC_KEY or line[-2:] != b'"}':
        raise BadRecord("no checksum at the end of the line (torn or not a record)")
    # Compare the exact bytes (lower-case hex), so that no bit of the line goes unchecked.
    if b"%08x" % zlib.crc32(line[:-_SUFFIX_LEN]) != line[-10:-2]:
        raise BadRecord("checksum mismatch")
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as exc:  # a checksum collision on garbage; vanishingly rare
        raise BadRecord(f"not JSON: {exc}") from None
    seq = obj.pop("seq", None)
    ts = obj.pop("ts", None)
    del obj["crc"]
    if type(seq) is not int or not isinstance(ts, str) or not isinstance(obj.get("type"), str):
        raise BadRecord("record lacks seq, ts or type")
    return seq, ts, obj
