"""The pure core: ids, events, the state fold, the job spec and the quality gate.

Nothing here reads the clock, the disk or a random source: events in, state out. Every
other layer may import it; it imports only the base (:mod:`sentinel_daemon.errors`,
:mod:`sentinel_daemon.layout`).
"""
