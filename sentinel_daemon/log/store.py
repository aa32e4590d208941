"""The core's persistence: lock, snapshot, replay, then append-and-apply.

Start-up takes the state-directory lock, loads the snapshot (if it can be trusted),
replays the log from the snapshot's position, cuts a torn tail (and records that it
did), and is then ready for :meth:`Store.append`, the only way the state changes:
the events are appended and fsynced first, and folded into the state only after.

The store reaches its log only through :class:`EventLog`, which the segment log
(:class:`~sentinel_daemon.log.segments.FileLog`) and its in-memory twin
(:class:`~sentinel_daemon.log.memory.MemoryLog`) both are, so tests can drive a store
without a disk. Start-up (:meth:`Store.open`, :func:`recover`) reads segments, and is the
file log's alone.
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import structlog

from sentinel_daemon.core.events import Event, LogRepaired, decode, encode
from sentinel_daemon.core.state import State, apply
from sentinel_daemon.errors import EventDecodeError, LogGap
from sentinel_daemon.fsutil import fsync_dir
from sentinel_daemon.layout import EVENTS_DIR, SNAPSHOT_NAME
from sentinel_daemon.log.lock import StateLock
from sentinel_daemon.log.records import Position, Record
from sentinel_daemon.log.scrub import Finding, ScrubReport, scrub
from sentinel_daemon.log.segfiles import make_events_dir
from sentinel_daemon.log.segments import FileLog, LogScan, TornTail
from sentinel_daemon.log.snapshot import (
    Snapshot,
    SnapshotInvalid,
    load_snapshot,
    write_snapshot,
)

log = structlog.get_logger(__name__)


class EventLog(Protocol):
    """The log behind a :class:`Store`: a segment log on disk, or its in-memory twin.

    The seam proper is two methods, as in Optuna's journal backend: :meth:`append` a
    batch (durably, all or nothing) and :meth:`read` from a seq. A store also needs where
    the log ends, to count the bytes an append wrote and to anchor a snapshot.
    """

    @property
    def position(self) -> Position:
        """Where the next record will go: just past the last acknowledged one."""
        ...

    def append(self, payloads: Sequence[dict[str, Any]]) -> list[Record]:
        """Append a batch under one commit and return its records, seq from last + 1."""
        ...

    def read(self, after_seq: int = 0) -> Iterator[Record]:
        """Every acknowledged record with seq above ``after_seq``, in order."""
        ...

    def last_crc(self) -> str | None:
        """The checksum of the record that ends at :attr:`position`; None for an empty log.

        A snapshot records it, so that one copied from another log is not taken for ours.
        """
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class OpenReport:
    """What start-up found and did, for the log and for benchmarks.

    ``covered`` is where the snapshot used ends: the records before it were not replayed,
    so only :meth:`Store.scrub` checks them. ``findings`` are what start-up itself saw and
    ran past (stray empty segments, which it never appends into).
    """

    snapshot_seq: int
    snapshot_problem: str | None
    replayed: int
    torn: TornTail | None
    backup: str | None
    seconds: float
    covered: Position | None = None
    findings: tuple[Finding, ...] = ()


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
    """The event log, the state folded from it, and its snapshots, under one lock.

    :meth:`open` recovers a state directory. Built directly, a store folds onto ``state``
    from wherever ``log_`` stands, writes its snapshots into ``state_dir``, and releases
    ``lock`` (if given) on :meth:`close`.
    """

    def __init__(
        self,
        state_dir: Path,
        log_: EventLog,
        state: State,
        *,
        lock: StateLock | None = None,
        report: OpenReport | None = None,
        snapshot_every: int = 10_000,
    ) -> None:
        self.state_dir = state_dir
        self.lock = lock
        self.log = log_
        self.state = state
        self.report = report or OpenReport(state.last_seq, None, 0, None, None, 0.0)
        self.snapshot_every = snapshot_every
        self._snapshot_seq = self.report.snapshot_seq
        #: Bytes the last :meth:`append` added to the log (for the daemon's metrics).
        self.appended_bytes = 0

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
            make_events_dir(events_dir)
            # The segments' entries are fsynced in events/, but events/ itself is an entry
            # of the state directory: until that is fsynced a power cut can take the folder
            # and every record in it (every start, in case the last one died right here).
            fsync_dir(state_dir)
            snap, problem = trusted_snapshot(state_dir / SNAPSHOT_NAME)
            state, scan, replayed, problem = recover(events_dir, snap, problem)
            log_, torn, backup = FileLog.open(
                events_dir, scan, segment_bytes=segment_bytes, clock=clock, sync=sync
            )
            used = snap is not None and problem is None
            report = OpenReport(
                snapshot_seq=snap.seq if snap and used else 0,
                snapshot_problem=problem,
                replayed=replayed,
                torn=torn,
                backup=backup,
                seconds=time.monotonic() - t0,
                covered=snap.position if snap and used else None,
                findings=scan_findings(scan),
            )
            store = cls(
                state_dir, log_, state, lock=lock, report=report, snapshot_every=snapshot_every
            )
        except BaseException:
            lock.release()
            raise
        for finding in report.findings:
            log.error("event log damage", segment=finding.segment, what=finding.what)
        if torn is not None:
            log.warning(
                "event log torn tail cut",
                segment=torn.segment,
                offset=torn.offset,
                bytes_cut=torn.bytes_cut,
                backup=backup,
                reason=torn.reason,
            )
            assert backup is not None  # FileLog.open backs up every tail it cuts
            store.append([repaired_event(torn, backup)])
        if replayed >= snapshot_every:
            store.snapshot()
        return store

    def scrub(self) -> ScrubReport:
        """Check the records start-up did not replay, those the snapshot covers.

        Takes about 1 s per million records (``bench/eventlog.py``), too long for start-up
        itself: run it right after, in a thread if need be (it only reads the part of the
        log before :attr:`OpenReport.covered`, which appends never touch). The findings
        of start-up itself (:attr:`OpenReport.findings`) come first. Without a snapshot,
        start-up replayed, and so checked, every record.
        """
        events_dir = self.state_dir / EVENTS_DIR
        covered = self.report.covered
        if covered is None:
            return ScrubReport(self.report.findings, 0, 0, 0, 0.0, None)
        found = scrub(events_dir, until=covered)
        seen = {(f.segment, f.line, f.kind) for f in self.report.findings}
        more = tuple(f for f in found.findings if (f.segment, f.line, f.kind) not in seen)
        return replace(found, findings=self.report.findings + more)

    def append(self, events: Sequence[Event]) -> list[Record]:
        """Append ``events`` durably (one fsync), then fold them into the state."""
        start = self.log.position
        records = self.log.append([encode(e) for e in events])
        end = self.log.position
        # A batch never spans segments: the log rotates before writing one, not during.
        self.appended_bytes = end.offset - (start.offset if end.segment == start.segment else 0)
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
        write_snapshot(
            self.state_dir / SNAPSHOT_NAME, self.state, self.log.position, self.log.last_crc()
        )
        self._snapshot_seq = self.state.last_seq

    def close(self, *, snapshot: bool = True) -> None:
        """Close the log (after a last snapshot, when asked and there is news).

        The records are durable already; a snapshot that cannot be written (a full disk) is
        said and left out, as in :meth:`append`: the next start replays a longer tail. It
        used to escape, so a stop on a full disk exited 1 instead of 0.
        """
        if snapshot and self.state.last_seq > self._snapshot_seq:
            try:
                self.snapshot()
            except OSError as exc:
                log.warning("snapshot not written at close", error=str(exc))
        self.log.close()
        if self.lock is not None:
            self.lock.release()


def repaired_event(torn: TornTail, backup: str, reason: str | None = None) -> LogRepaired:
    """The ``log.repaired`` event for a cut tail; ``backup`` is relative to ``events/``.

    ``reason`` defaults to the tail's own (start-up); ``sentinel log repair`` says it cut.
    """
    return LogRepaired(
        segment=torn.segment,
        offset=torn.offset,
        bytes_cut=torn.bytes_cut,
        backup=f"{EVENTS_DIR}/{backup}",
        reason=torn.reason if reason is None else reason,
    )


def scan_findings(scan: LogScan) -> tuple[Finding, ...]:
    """Findings for what a scan read past: stray empty segments and duplicated lines."""
    strays = [
        Finding(
            name,
            0,
            "empty",
            "an empty segment not named for the next record: skipped, never appended to; "
            "`sentinel log repair` removes it",
        )
        for name in scan.strays
    ]
    duplicates = [
        Finding(
            seg,
            line,
            "duplicate",
            f"a second copy of the line before it (seq {seq}): read past; "
            f"`sentinel log repair` removes it",
            seq,
        )
        for seg, line, seq in scan.duplicates
    ]
    return tuple(strays + duplicates)


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
        scan, problem = snapshot_fit(events_dir, snap)
        if problem is None:
            state = snap.state
            try:
                return state, scan, replay(scan, state), None
            except LogGap as exc:
                if scan.records_read:
                    raise  # the gap is in the log after the snapshot, not in the snapshot
                problem = f"its position is not in the log: {exc}"
        log.warning("snapshot ignored; replaying the whole log", reason=problem)
    state = State()
    scan = LogScan(events_dir)
    return state, scan, replay(scan, state), problem


def snapshot_fit(events_dir: Path, snap: Snapshot) -> tuple[LogScan, str | None]:
    """A scan of the log from just past the snapshot's record, and why it does not fit there.

    None when it fits: the record before the snapshot's position carries its seq (and its
    checksum, when the snapshot recorded one). Reads only that record.
    """
    scan = LogScan(
        events_dir, start=snap.position, expect_seq=snap.seq + 1, start_crc=snap.last_crc
    )
    if scan.fits_start():
        return scan, None
    return scan, (
        "its position does not match the log (a snapshot from the future, from another state "
        "directory, or the log was restored from an older backup)"
    )


def read_state(state_dir: Path) -> State:
    """Fold the log of ``state_dir`` (from its snapshot if usable) into a state; write nothing.

    A missing events folder gives an empty state. A torn last record is left out, not
    repaired. Corruption in the middle of the log raises
    :class:`~sentinel_daemon.errors.LogCorrupt` (or ``LogGap``) as at start-up.
    """
    events_dir = Path(state_dir) / EVENTS_DIR
    try:
        os.lstat(events_dir)
    except FileNotFoundError:
        return State()  # (a PermissionError goes on up: the caller may not read the log)
    snap, problem = trusted_snapshot(Path(state_dir) / SNAPSHOT_NAME)
    state, _scan, _replayed, _problem = recover(events_dir, snap, problem)
    return state
