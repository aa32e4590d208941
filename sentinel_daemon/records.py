"""The byte format of one log record: a flat JSON object closed by its own checksum.

A record is serialised as ``{"seq":1,"ts":"...","type":"...","v":1,...}``; its last
``}`` is then replaced by ``,"crc":"<crc32 hex of everything before>"}`` and a newline.
A reader checks the exact bytes it read, without re-serialising, and ``jq`` still sees a
plain JSON object per line.

The writer always puts ``seq`` and ``ts`` first and ``ts`` always has the same length, so
a reader takes the envelope from the bytes and leaves the event's own fields as JSON
bytes (``raw``), parsed only by whoever needs them: the fold validates them straight
into an event, ``tail`` parses them into a dict.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

_CRC_KEY = b',"crc":"'
_SUFFIX_LEN = len(_CRC_KEY) + 8 + 2  # ,"crc":"xxxxxxxx"}
_SEQ_KEY = b'{"seq":'
_TS_KEY = b',"ts":"'
TS_LEN = len("2026-01-01T00:00:00.000000Z")
ENVELOPE_KEYS = frozenset(("seq", "ts", "crc"))


@dataclass(frozen=True, slots=True)
class Position:
    """A place in the log: the byte offset just past a record in a named segment."""

    segment: str
    offset: int


class Record:
    """One record: the envelope, and the event's fields as JSON bytes parsed on demand."""

    __slots__ = ("_payload", "_raw", "seq", "ts")

    def __init__(
        self, seq: int, ts: str, raw: bytes | None = None, payload: dict[str, Any] | None = None
    ) -> None:
        if raw is None and payload is None:
            raise ValueError("a record needs its raw bytes or its payload")
        self.seq = seq
        self.ts = ts
        self._raw = raw
        self._payload = payload

    @property
    def raw(self) -> bytes:
        """The event's fields as JSON bytes (what the fold validates)."""
        if self._raw is None:
            self._raw = orjson.dumps(self._payload)
        return self._raw

    @property
    def payload(self) -> dict[str, Any]:
        """The event's fields (``type``, ``v``, ...) as a dict."""
        if self._payload is None:
            self._payload = orjson.loads(self._raw)  # type: ignore[arg-type]
        return self._payload

    def __repr__(self) -> str:
        return f"Record(seq={self.seq}, ts={self.ts!r}, raw={self.raw[:60]!r}...)"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Record):
            return NotImplemented
        return (self.seq, self.ts, self.payload) == (other.seq, other.ts, other.payload)

    __hash__ = None  # type: ignore[assignment]  # mutable cache inside: not hashable


class BadRecord(ValueError):
    """The bytes of one line are not a whole, intact record."""


def format_ts(moment: datetime) -> str:
    """RFC 3339 in UTC with microseconds and a ``Z``, fixed width, sortable as text."""
    if moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC)
    return moment.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def encode_line(seq: int, ts: str, payload: dict[str, Any]) -> bytes:
    """Serialise one record with its closing checksum and newline."""
    if not ENVELOPE_KEYS.isdisjoint(payload):
        clash = sorted(ENVELOPE_KEYS.intersection(payload))
        raise ValueError(f"event field {clash[0]!r} clashes with the record envelope")
    if len(ts) != TS_LEN:
        raise ValueError(f"timestamp {ts!r} is not in the log's fixed-width form")
    body = orjson.dumps(payload)
    head = b'{"seq":%d,"ts":"%s",%s' % (seq, ts.encode(), body[1:-1])
    return b'%s,"crc":"%08x"}\n' % (head, zlib.crc32(head))


def encode_batch(first_seq: int, ts: str, payloads: list[dict[str, Any]]) -> bytes:
    """Serialise consecutive records (seq ``first_seq``, ...) exactly as :func:`encode_line`.

    The hot path of group commit: one ``join`` for the batch, and each checksum computed
    over the prefix and the event's JSON in place instead of over a concatenated copy.
    """
    if len(ts) != TS_LEN:
        raise ValueError(f"timestamp {ts!r} is not in the log's fixed-width form")
    tsb = ts.encode()
    parts: list[bytes | memoryview] = []
    crc32 = zlib.crc32
    dumps = orjson.dumps
    for i, payload in enumerate(payloads):
        if not ENVELOPE_KEYS.isdisjoint(payload):
            clash = sorted(ENVELOPE_KEYS.intersection(payload))
            raise ValueError(f"event field {clash[0]!r} clashes with the record envelope")
        prefix = b'{"seq":%d,"ts":"%s",' % (first_seq + i, tsb)
        inner = memoryview(dumps(payload))[1:-1]
        parts += (prefix, inner, b',"crc":"%08x"}\n' % crc32(inner, crc32(prefix)))
    return b"".join(parts)


def decode_line(line: bytes) -> Record:
    """Check one line (without its newline) and split it into envelope and event bytes.

    Raises :class:`BadRecord` when the checksum does not match the bytes or the line is
    not in the writer's form. The event's JSON is checked when it is parsed.
    """
    if len(line) <= _SUFFIX_LEN or line[-_SUFFIX_LEN:-10] != _CRC_KEY or line[-2:] != b'"}':
        raise BadRecord("no checksum at the end of the line (torn or not a record)")
    # Compare the exact bytes (lower-case hex), so that no bit of the line goes unchecked.
    if b"%08x" % zlib.crc32(line[:-_SUFFIX_LEN]) != line[-10:-2]:
        raise BadRecord("checksum mismatch")
    comma = line.find(b",", 7)
    ts_end = comma + 7 + TS_LEN
    if (
        not line.startswith(_SEQ_KEY)
        or line[comma : comma + 7] != _TS_KEY
        or line[ts_end : ts_end + 2] != b'",'
    ):
        raise BadRecord("the record does not begin with its seq and ts")
    try:
        seq = int(line[7:comma])
    except ValueError:
        raise BadRecord("seq is not an integer") from None
    return Record(
        seq, line[comma + 7 : ts_end].decode(), b"{" + line[ts_end + 2 : -_SUFFIX_LEN] + b"}"
    )
