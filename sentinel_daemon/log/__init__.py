"""The event log on disk: record bytes, segments, snapshots, the lock, and the store.

:mod:`~sentinel_daemon.log.records` turns event payloads into checksummed lines and back;
:mod:`~sentinel_daemon.log.segments` appends them with fsync and scans them back;
:mod:`~sentinel_daemon.log.snapshot` saves the folded state so start-up replays only the tail;
:mod:`~sentinel_daemon.log.lock` keeps a second writer out; :mod:`~sentinel_daemon.log.store`
ties them together (append, then apply; recover at start-up), reaching the log only
through its ``EventLog`` protocol; :mod:`~sentinel_daemon.log.memory` is the in-memory
twin of a segment log, which fits that protocol too, for tests.
Imports only the core and the base.
"""
