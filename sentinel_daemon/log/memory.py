"""Test helpers that ship with the package (like ``structlog.testing``).

:class:`MemoryLog` is the in-memory twin of :class:`~sentinel_daemon.log.segments.FileLog`:
same seam (``append`` a batch, ``read`` from a seq), same semantics (seq from 1, +1 a
record, a batch all or nothing, an fsync failure fatal), no disk.
"""

from __future__ import annotations

import copy
import errno
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sentinel_daemon.errors import LogFsyncFailed
from sentinel_daemon.log.records import ENVELOPE_KEYS, Record, format_ts


class MemoryLog:
    """An event log held in a list; ``fail_sync`` makes the next append fail like fsync."""

    def __init__(self, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._records: list[Record] = []
        self._clock = clock
        self._failed: LogFsyncFailed | None = None
        self.fail_sync = False

    @property
    def last_seq(self) -> int:
        return len(self._records)

    def append(self, payloads: Sequence[dict[str, Any]]) -> list[Record]:
        if self._failed is not None:
            raise self._failed
        for payload in payloads:
            for key in ENVELOPE_KEYS:
                if key in payload:
                    raise ValueError(f"event field {key!r} clashes with the record envelope")
        if self.fail_sync:
            self._failed = LogFsyncFailed(Path("<memory>"), errno.EIO, "injected fsync failure")
            raise self._failed
        ts = format_ts(self._clock())
        start = self.last_seq
        batch = [Record(start + i + 1, ts, copy.deepcopy(dict(p))) for i, p in enumerate(payloads)]
        self._records.extend(batch)
        return batch

    def read(self, after_seq: int = 0) -> Iterator[Record]:
        for record in self._records[max(after_seq, 0) :]:
            yield Record(record.seq, record.ts, copy.deepcopy(record.payload))
