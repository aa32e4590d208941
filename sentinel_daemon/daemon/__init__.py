"""The running service: the core loop and what it drives.

The loop (:mod:`~sentinel_daemon.daemon.service`) owns the log; the inbox
(:mod:`~sentinel_daemon.daemon.inbox`) brings job files; one job actor per job
(:mod:`~sentinel_daemon.daemon.actor`) decides; stage processes
(:mod:`~sentinel_daemon.daemon.stages`) prepare and validate; a dispatcher
(:mod:`~sentinel_daemon.daemon.dispatch`) runs trials on local workers or a Dask cluster;
the monitor and the metrics (:mod:`~sentinel_daemon.daemon.monitor`,
:mod:`~sentinel_daemon.daemon.metrics`) watch; the journal
(:mod:`~sentinel_daemon.daemon.journal`) turns each recorded event into a log line; reports
are written by a child process (:mod:`~sentinel_daemon.daemon.reports`). May import every
layer but the tools and the CLI.
"""
