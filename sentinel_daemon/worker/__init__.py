"""The worker process: one trial at a time, from the queue directory to a saved model.

:mod:`~sentinel_daemon.worker.runner` trains and answers one command (shared with the Dask
task); :mod:`~sentinel_daemon.worker.loop` is the process around it (claim, heartbeat,
signals); :mod:`~sentinel_daemon.worker.faults` the fault injection the crash tests use.
``python -m sentinel_daemon.worker`` starts one (the daemon finds orphaned workers by
that module name). Imports the core, the queue, the ML library and the base.
"""
