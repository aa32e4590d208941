"""The running service: the core loop and what it drives.

The loop (:mod:`~sentinel_daemon.daemon.service`) owns the log and turns: gather, decide,
append (fsync), fold, then act. Each concern has its module:

- :mod:`~sentinel_daemon.daemon.committer`: the one way to the log (append, fold, then act),
  and one job actor per running job;
- :mod:`~sentinel_daemon.daemon.actor`: a job actor's pure decisions (with
  :mod:`~sentinel_daemon.daemon.answers` and :mod:`~sentinel_daemon.daemon.promotion`), whose
  inputs and effects are the data of :mod:`~sentinel_daemon.daemon.decisions`;
- :mod:`~sentinel_daemon.daemon.effects`: the effects carried out (queue, stage processes of
  :mod:`~sentinel_daemon.daemon.stages`, ``best/``, reports of
  :mod:`~sentinel_daemon.daemon.reports`);
- :mod:`~sentinel_daemon.daemon.recovery`: start-up after a stop or a crash;
- :mod:`~sentinel_daemon.daemon.intake`: job files from the inbox
  (:mod:`~sentinel_daemon.daemon.inbox`, its decisions pure in
  :mod:`~sentinel_daemon.daemon.inboxdiff`) to ``job.submitted`` or ``job.rejected``;
- :mod:`~sentinel_daemon.daemon.control`: operators' requests (cancel);
- :mod:`~sentinel_daemon.daemon.results`: workers' answers, lost and external workers;
- :mod:`~sentinel_daemon.daemon.health`: ``health.json``, the degraded state, the status line;
- :mod:`~sentinel_daemon.daemon.blocking`: why dispatching is held back (admission, no
  scheduler, no capacity, writes failing), for the log, ``health.json`` and the metrics;
- :mod:`~sentinel_daemon.daemon.deadlines`: the per-trial ceiling, ``trials.timeout_s``;
- :mod:`~sentinel_daemon.daemon.dispatch`: the ``Dispatcher`` Protocol, with local workers
  or a Dask cluster behind it;
- :mod:`~sentinel_daemon.daemon.monitor` and :mod:`~sentinel_daemon.daemon.metrics`:
  resources, admission control and Prometheus metrics;
- :mod:`~sentinel_daemon.daemon.journal`: each recorded event as a log line at its level.

May import every layer but the tools and the CLI.
"""
