"""A job's searches as an Optuna journal file, for ``optuna-dashboard FILE`` and Optuna's API.

One study per model, named ``<job>/<model>``, direction ``maximize``, its objective named
:data:`METRIC_NAME` (Optuna's metric names, shown by optuna-dashboard), holding every trial
the log recorded: its parameters with the distributions they were sampled from, its state
(``COMPLETE``, ``PRUNED`` or ``FAIL``), its value, its intermediate values (recorded since
``trial.saved``/``trial.pruned`` v2) and its start and end times from the log. User
attributes carry Sentinel's trial number (``sentinel_trial``), the attempts, and, for a
saved trial, its artifact, sha256 and validation metrics; study attributes name the job.
The other way round, :func:`optuna_numbers` gives each Sentinel trial its number in the
export, which the job report shows beside Sentinel's.

The file is written through ``optuna.storages.JournalStorage`` with a
``JournalFileBackend`` under a temporary name beside ``out``, fsynced, then linked (or,
with ``force``, renamed) into place: an existing file is never overwritten unless asked,
and never left half-written. Reading the log takes no lock, so a running daemon's job may
be exported too; its trials in flight appear as ``RUNNING``.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from sentinel_daemon.errors import SentinelError
from sentinel_daemon.fsutil import fsync_dir
from sentinel_daemon.tools.history import JobHistory, frozen_trials, optuna_quiet, read_history


class ExportError(SentinelError):
    """The export cannot be written to ``path``."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


#: The objective's name in the export: what each trial's value is.
METRIC_NAME = "valid_roc_auc"


def study_name(job_id: str, model: str) -> str:
    return f"{job_id}/{model}"


def optuna_numbers(history: JobHistory) -> dict[int, int]:
    """Sentinel's trial number -> its ``number`` in its model's exported study.

    :func:`write_journal` adds each model's trials, in Sentinel's order, to a new study,
    and Optuna numbers a study's trials 0, 1, 2... in the order they are added.
    """
    return {t.number: i for model in history.models for i, t in enumerate(history.trials_of(model))}


def export_optuna(
    state_dir: Path, job_id: str, out: Path, *, force: bool = False
) -> dict[str, int]:
    """Write ``job_id``'s studies to the journal file ``out``; trials per study name.

    Raises :class:`ExportError` when ``out`` exists and ``force`` is not set, and
    :class:`~sentinel_daemon.errors.UnknownJob` for a job not in the log.
    """
    out = Path(out)
    if out.exists() and not force:
        raise ExportError(out, "exists; choose another file or pass --force to replace it")
    if out.is_dir():
        raise ExportError(out, "is a folder; name a file")
    if not out.parent.is_dir():
        raise ExportError(out, f"the folder {out.parent} does not exist")
    history = read_history(Path(state_dir), job_id)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    _remove(tmp)
    try:
        counts = write_journal(history, tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        if force:
            os.replace(tmp, out)
        else:
            try:
                os.link(tmp, out)  # fails if ``out`` appeared meanwhile: never overwrite it
            except FileExistsError:
                raise ExportError(
                    out, "was created meanwhile; pass --force to replace it"
                ) from None
        fsync_dir(out.parent)
    finally:
        _remove(tmp)
    return counts


def write_journal(history: JobHistory, path: Path) -> dict[str, int]:
    """Append the studies of ``history`` to the (new or empty) journal file ``path``."""
    storage = JournalStorage(JournalFileBackend(str(path)))
    counts: dict[str, int] = {}
    with optuna_quiet():  # no "A new study created" line per study
        for model in history.models:
            name = study_name(history.job_id, model)
            study = optuna.create_study(storage=storage, study_name=name, direction="maximize")
            with warnings.catch_warnings():  # "experimental" since Optuna 3.2, still so in 5
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.set_metric_names([METRIC_NAME])
            study.set_user_attr("sentinel_job_id", history.job_id)
            study.set_user_attr("sentinel_job_name", history.name)
            study.set_user_attr("sentinel_model", model)
            study.set_user_attr("sentinel_job_status", history.status)
            trials = frozen_trials(history, model)
            study.add_trials(trials)
            counts[name] = len(trials)
    return counts


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
