"""Small builders shared by the log tests."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

from sentinel_daemon.log.memory import MemoryLog
from sentinel_daemon.log.records import Record
from sentinel_daemon.log.segments import FileLog, LogScan


def payload(i: int) -> dict[str, Any]:
    return {
        "type": "trial.started",
        "v": 1,
        "job_id": "j1",
        "trial": i,
        "model": "xgboost",
        "params": {"max_depth": i % 7},
        "attempt": 1,
    }


def open_log(events_dir: Path, segment_bytes: int = 1 << 20) -> FileLog:
    """Scan (cutting any torn tail) and open for appending, as start-up does."""
    events_dir.mkdir(parents=True, exist_ok=True)
    scan = LogScan(events_dir)
    for _ in scan:
        pass
    log, _, _ = FileLog.open(events_dir, scan, segment_bytes=segment_bytes)
    return log


def scan_all(events_dir: Path) -> tuple[list[Record], LogScan]:
    scan = LogScan(events_dir)
    return list(scan), scan


def write_log(events_dir: Path, n: int, batch: int = 1, segment_bytes: int = 1 << 20) -> None:
    log = open_log(events_dir, segment_bytes)
    i = 0
    while i < n:
        k = min(batch, n - i)
        log.append([payload(i + j + 1) for j in range(k)])
        i += k
    log.close()


def segment_files(events_dir: Path) -> list[Path]:
    return sorted(events_dir.glob("*.jsonl"))


class FileBackend:
    """A file log for the contract suite: small segments, so that batches rotate."""

    def __init__(self, root: Path) -> None:
        self.dir = root / "events"
        self.log = open_log(self.dir, segment_bytes=4096)

    def reopen(self) -> None:
        self.log.close()
        self.log = open_log(self.dir, segment_bytes=4096)

    def fail_next_sync(self) -> None:
        def failing(fd: int) -> None:
            raise OSError(errno.EIO, "Input/output error")

        self.log._sync = failing

    def close(self) -> None:
        self.log.close()


class MemoryBackend:
    """The in-memory twin for the contract suite."""

    def __init__(self, root: Path) -> None:
        self.log = MemoryLog()

    def reopen(self) -> None:
        pass

    def fail_next_sync(self) -> None:
        self.log.fail_sync = True

    def close(self) -> None:
        self.log.close()
