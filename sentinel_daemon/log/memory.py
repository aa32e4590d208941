"""The in-memory twin of the segment log, shipped for tests (like ``structlog.testing``).

:class:`MemoryLog` has the seam of :class:`~sentinel_daemon.log.segments.FileLog` (``append``
a batch, ``read`` from a seq, and the :attr:`~MemoryLog.position` and ``last_crc`` that a
:class:`~sentinel_daemon.log.store.Store` needs) and its semantics (seq from 1, +1 a record,
a batch all or nothing, an fsync failure fatal), with no disk. Its position counts the bytes
the records would take in one segment that never rotates, so a store over it counts the
same bytes and anchors the same snapshots as over a file log.
"""

from __future__ import annotations

import copy
import errno
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sentinel_daemon.errors import LogFsyncFailed
from sentinel_daemon.log.records import Position, Record, encode_batch, format_ts
from sentinel_daemon.log.segfiles import segment_name


class MemoryLog:
    """An event log held in a list; ``fail_sync`` makes the next append fail like fsync."""

    def __init__(self, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._records: list[Record] = []
        self._clock = clock
        self._failed: LogFsyncFailed | None = None
        self._size = 0
        self._last_crc: str | None = None
        self.fail_sync = False

    @property
    def last_seq(self) -> int:
        return len(self._records)

    @property
    def position(self) -> Position:
        return Position(segment_name(1), self._size)

    def last_crc(self) -> str | None:
        return self._last_crc

    def append(self, payloads: Sequence[dict[str, Any]]) -> list[Record]:
        if self._failed is not None:
            raise self._failed
        ts = format_ts(self._clock())
        start = self.last_seq
        data = encode_batch(start + 1, ts, list(payloads))  # refuses envelope keys
        if self.fail_sync:
            self._failed = LogFsyncFailed(Path("<memory>"), errno.EIO, "injected fsync failure")
            raise self._failed
        batch = [Record(start + i + 1, ts, copy.deepcopy(dict(p))) for i, p in enumerate(payloads)]
        self._records.extend(batch)
        if data:
            self._size += len(data)
            self._last_crc = data[-11:-3].decode("ascii")  # ...,"crc":"<8 hex>"}\n
        return batch

    def read(self, after_seq: int = 0) -> Iterator[Record]:
        for record in self._records[max(after_seq, 0) :]:
            yield Record(record.seq, record.ts, copy.deepcopy(record.payload))

    def close(self) -> None:
        """Nothing to release; the records stay readable."""


if TYPE_CHECKING:  # mypy proves that the twin fits the seam a Store is typed to
    from sentinel_daemon.log.store import EventLog

    _FITS_THE_SEAM: type[EventLog] = MemoryLog
