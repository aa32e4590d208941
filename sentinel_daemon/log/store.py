"""The core's persistence: lock, snapshot, replay, then append-and-apply.

Start-up takes the state-directory lock, loads the snapshot (if it can be trusted),
replays the log from the snapshot's position, cuts a torn tail (and records that it
did), and is then ready for :meth:`Store.append`, the only way the state changes:
the events are appended and fsynced first, and folded into the state only after.
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import structlog

from sentinel_daemon.core.events import Event, LogRepaired, decode, encode
from sentinel_daemon.core.state import State, apply
from sentinel_daemon.errors import EventDecodeError, LogGap
from sentinel_daemon.fsutil import fsync_dir
from sentinel_daemon.layout import EVENTS_DIR, SNAPSHOT_NAME
from sentinel_daemon.log.lock import StateLock
from sentinel_daemon.log.records import Record
from sentinel_daemon.log.segments import FileLog, LogScan, TornTail, line_before
from sentinel_daemon.log.snapshot import (
    Snapshot,
    SnapshotInvalid,
    load_snapshot,
    write_snapshot,
)

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class OpenReport:
    """What start-up found and did, for the log and for benchmarks."""

    snapshot_seq: int
    snapshot_problem: str | None
    replayed: int
    torn: TornTail | None
    backup: str | None
    seconds: float


def decode_record(record: Record) -> Event:
    """The event a record holds, upcast to the current version of its type."""
    try:
        return decode(record.payload)
    except ValueError as exc:  # pydantic's ValidationError, UnknownEventVersion
        raise EventDecodeError(record.seq, str(record.payload.get("type")), str(exc)) from None


def replay(scan: LogScan, state: State) -> int:
    """Fold every record of ``scan`` into ``state``; returns how many.

    The cyclic garbage collector is paused meanwhile: replay allocates millions of small
    objects and keeps many of them, and each collection would walk them all again.
    """
    n = 0
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        for record in scan:
            apply(state, decode_record(record))
            state.last_seq = record.seq
            n += 1
    finally:
        if was_enabled:
            gc.enable()
    return n


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Store:
    """The event log, the state folded from it, and its snapshots, under one lock."""

    def __init__(
        self,
        state_dir: Path,
        lock: StateLock,
        log_: FileLog,
        state: State,
        report: OpenReport,
        snapshot_every: int,
    ) -> None:
        self.state_dir = state_dir
        self.lock = lock
        self.log = log_
        self.state = state
        self.report = report
        self.snapshot_every = snapshot_every
        self._snapshot_seq = report.snapshot_seq

    @classmethod
    def open(
        cls,
        state_dir: Path,
        *,
        segment_bytes: int = 64 << 20,
        snapshot_every: int = 10_000,
        clock: Callable[[], datetime] = _utcnow,
        sync: Callable[[int], None] = os.fdatasync,
    ) -> Store:
        """Lock ``state_dir``, recover its state, and return a store ready to append."""
        t0 = time.monotonic()
        lock = StateLock.acquire(state_dir)
        try:
            events_dir = state_dir / EVENTS_DIR
            events_dir.mkdir(mode=0o750, exist_ok=True)
            # The segments' entries are fsynced in events/, but events/ itself is an entry
            # of the state directory: until that is fsynced a power cut can take the folder
            # and every record in it (every start, in case the last one died right here).
            fsync_dir(state_dir)
            snap, problem = trusted_snapshot(state_dir / SNAPSHOT_NAME)
            state, scan, replayed, problem = recover(events_dir, snap, problem)
            log_, torn, backup = FileLog.open(
                events_dir, scan, segment_bytes=segment_bytes, clock=clock, sync=sync
            )
            report = OpenReport(
                snapshot_seq=snap.seq if snap and problem is None else 0,
                snapshot_problem=problem,
                replayed=replayed,
                torn=torn,
                backup=backup,
                seconds=time.monotonic() - t0,
            )
            store = cls(state_dir, lock, log_, state, report, snapshot_every)
        except BaseException:
            lock.release()
            raise
        if torn is not None:
            log.warning(
                "event log torn tail cut",
                segment=torn.segment,
                offset=torn.offset,
                bytes_cut=torn.bytes_cut,
                backup=backup,
                reason=torn.reason,
            )
            store.append(
                [
                    LogRepaired(
                        segment=torn.segment,
                        offset=torn.offset,
                        bytes_cut=torn.bytes_cut,
                        backup=f"{EVENTS_DIR}/{backup}",
                        reason=torn.reason,
                    )
                ]
            )
        if replayed >= snapshot_every:
            store.snapshot()
        return store

    def append(self, events: Sequence[Event]) -> list[Record]:
        """Append ``events`` durably (one fsync), then fold them into the state."""
        records = self.log.append([encode(e) for e in events])
        for event, record in zip(events, records, strict=True):
            apply(self.state, event)
            self.state.last_seq = record.seq
        if self.state.last_seq - self._snapshot_seq >= self.snapshot_every:
            try:
                self.snapshot()
            except OSError as exc:
                # The records are durable; a snapshot is only a shortcut. Try again later.
                log.warning("snapshot not written", error=str(exc))
                self._snapshot_seq = self.state.last_seq
        return records

    def snapshot(self) -> None:
        """Write a snapshot of the state as of the last appended record."""
        position = self.log.position
        line = line_before(self.log.events_dir, position)
        last_crc = None if line is None else line[-10:-2].decode("ascii")
        write_snapshot(self.state_dir / SNAPSHOT_NAME, self.state, position, last_crc)
        self._snapshot_seq = self.state.last_seq

    def close(self, *, snapshot: bool = True) -> None:
        if snapshot and self.state.last_seq > self._snapshot_seq:
            self.snapshot()
        self.log.close()
        self.lock.release()


def trusted_snapshot(path: Path) -> tuple[Snapshot | None, str | None]:
    """The snapshot at ``path`` and ``None``, or ``None`` and why it cannot be used (warned)."""
    try:
        return load_snapshot(path), None
    except SnapshotInvalid as exc:
        log.warning("snapshot ignored; replaying the whole log", path=str(path), reason=exc.reason)
        return None, exc.reason


def recover(
    events_dir: Path, snap: Snapshot | None, problem: str | None
) -> tuple[State, LogScan, int, str | None]:
    """Replay from the snapshot if it fits the log, else from the start.

    Reads only: the returned scan reports a torn tail (``scan.torn``) without cutting it,
    which is what lets ``sentinel status`` call this while a daemon appends.
    """
    if snap is not None:
        scan = LogScan(
            events_dir, start=snap.position, expect_seq=snap.seq + 1, start_crc=snap.last_crc
        )
        state = snap.state
        try:
            if scan.fits_start():
                return state, scan, replay(scan, state), None
            problem = (
                "its position does not match the log (a snapshot from the future, or from "
                "another state directory?)"
            )
        except LogGap as exc:
            if scan.records_read:
                raise  # the gap is in the log after the snapshot, not in the snapshot
            problem = f"its position is not in the log: {exc}"
        log.warning("snapshot ignored; replaying the whole log", reason=problem)
    state = State()
    scan = LogScan(events_dir)
    return state, scan, replay(scan, state), problem


def read_state(state_dir: Path) -> State:
    """Fold the log of ``state_dir`` (from its snapshot if usable) into a state; write nothing.

    A missing events folder gives an empty state. A torn last record is left out, not
    repaired. Corruption in the middle of the log raises
    :class:`~sentinel_daemon.errors.LogCorrupt` (or ``LogGap``) as at start-up.
    """
    events_dir = Path(state_dir) / EVENTS_DIR
    if not events_dir.is_dir():
        return State()
    snap, problem = trusted_snapshot(Path(state_dir) / SNAPSHOT_NAME)
    state, _scan, _replayed, _problem = recover(events_dir, snap, problem)
    return state
