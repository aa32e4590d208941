"""The queue directory between the daemon and its workers, and the messages it carries.

:mod:`~sentinel_daemon.queue.messages` holds the trial command and the worker's answers
(pydantic models, JSON on disk); :mod:`~sentinel_daemon.queue.maildir` the directory
protocol that moves them by rename. Imports only the core and the base.
"""
