"""What the operator commands do: ``submit``, ``status``, ``wait`` and ``cancel``.

None of them writes the event log; the daemon is its only writer. ``submit`` places a
validated job file in ``STATE/inbox/``; ``cancel`` leaves a request file in
``STATE/control/`` that the daemon turns into ``job.cancelled``; ``status`` and ``wait``
read the state with :func:`~sentinel_daemon.readstate.read_state`, which takes no lock.
The command line (``cli.py``) parses arguments, prints and picks exit codes; the summaries
and renderings here are pure functions of a :class:`~sentinel_daemon.state.State`.

Cancel request contract (the daemon's side imports :data:`CONTROL_DIR` and
:func:`cancel_request_path`): ``STATE/control/cancel.<job id>``, written atomically, holding
a JSON object ``{"job_id", "requested_at" (RFC 3339 UTC), "pid"}``. Writing it again
replaces it; the daemon appends ``job.cancelled`` for a running job and then removes it.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from sentinel_daemon.errors import SentinelError
from sentinel_daemon.events import ModelKind, Stage
from sentinel_daemon.fsutil import atomic_write_bytes, fsync_dir
from sentinel_daemon.inbox import is_job_name, submit_file
from sentinel_daemon.jobspec import JobSpecError, ParsedJob, parse_job_file
from sentinel_daemon.queue import JOB_ID_PATTERN
from sentinel_daemon.readstate import read_state
from sentinel_daemon.records import format_ts
from sentinel_daemon.settings import Settings
from sentinel_daemon.state import (
    JobState,
    JobStatus,
    StageStatus,
    State,
    TrialStatus,
    WorkerStatus,
)

CONTROL_DIR = "control"
INBOX_DIR = "inbox"
#: Written by a daemon that cannot write its log (a full disk); see daemon.py.
HEALTH_FILE = "health.json"
_JOB_ID = re.compile(JOB_ID_PATTERN)


class OperatorError(SentinelError):
    """An operator command cannot do what was asked; the message says what to do instead."""


class BadJobId(OperatorError):
    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(
            f"{job_id!r} is not a job id (letters, digits, '.', '_' and '-', up to 128, "
            f"starting with a letter or digit); `sentinel status` lists the jobs"
        )


class UnknownJob(OperatorError):
    def __init__(self, job_id: str, state_dir: Path) -> None:
        self.job_id = job_id
        self.state_dir = state_dir
        super().__init__(
            f"no job {job_id!r} in the event log of {state_dir}; check the id with "
            f"`sentinel status` (a job just submitted appears once the daemon has accepted it)"
        )


class JobAlreadyEnded(OperatorError):
    def __init__(self, job_id: str, status: JobStatus, reason: str) -> None:
        self.job_id = job_id
        self.status = status
        self.reason = reason
        why = f" ({reason})" if reason else ""
        super().__init__(f"job {job_id} has already ended: {status}{why}; nothing to cancel")


def check_job_id(job_id: str) -> str:
    """``job_id`` if it is a valid job id (so safe in a file name); else :class:`BadJobId`."""
    if not _JOB_ID.fullmatch(job_id):
        raise BadJobId(job_id)
    return job_id


def cancel_request_path(state_dir: Path, job_id: str) -> Path:
    """Where ``sentinel cancel`` asks the daemon to cancel ``job_id``."""
    return Path(state_dir) / CONTROL_DIR / f"cancel.{check_job_id(job_id)}"


def _ensure_dir(path: Path) -> None:
    """Create ``path`` if missing, and make its entry durable in its parent."""
    if path.is_dir():
        return
    path.mkdir(mode=0o750, parents=True, exist_ok=True)
    fsync_dir(path.parent)


# ---- submit ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Submitted:
    job_id: str
    file: Path
    inbox_path: Path


def submit(path: Path, settings: Settings, *, cwd: Path | None = None) -> Submitted:
    """Validate the job file at ``path`` and place it in the inbox; write nothing if invalid.

    Raises :class:`~sentinel_daemon.jobspec.JobSpecError` for a bad file, and
    :class:`~sentinel_daemon.inbox.InboxError` if it changed while being submitted.
    """
    cwd = Path.cwd() if cwd is None else cwd
    max_bytes = settings.inbox.max_job_bytes
    parsed = parse_job_file(
        path, data_roots=settings.resolved_data_roots(cwd), base_dir=cwd, max_bytes=max_bytes
    )
    _check_relative_data(path, parsed, cwd, settings.state_dir)
    if not is_job_name(Path(path).name):
        raise JobSpecError(path, "-", "the inbox ignores names beginning with '.'; rename it")
    inbox_dir = settings.state_dir / INBOX_DIR
    _ensure_dir(inbox_dir)
    dest = submit_file(path, inbox_dir, expected_sha256=parsed.sha256, max_bytes=max_bytes)
    return Submitted(parsed.job_id, Path(path), dest)


def _check_relative_data(path: Path, parsed: ParsedJob, cwd: Path, state_dir: Path) -> None:
    """Refuse a relative data path that the daemon would resolve to another file.

    The daemon resolves relative paths against its own working folder (``health.json``
    says which, even after it stopped), not the submitter's: validating them here against
    ``cwd`` would accept a job that then fails, or reads another file of the same name.
    """
    health = _health(state_dir) or {}
    daemon_cwd = health.get("cwd")
    if not isinstance(daemon_cwd, str) or os.path.realpath(daemon_cwd) == os.path.realpath(cwd):
        return
    for name, value in parsed.data_as_written.items():
        if not os.path.isabs(value):
            raise JobSpecError(
                path,
                name,
                f"{value!r} is relative, and the daemon resolves it against its working folder "
                f"{daemon_cwd}, not {cwd}; write the absolute path",
            )


# ---- status ---------------------------------------------------------------------------


def _models(job: JobState) -> list[str]:
    models = job.spec.get("models")
    if isinstance(models, list | tuple) and all(isinstance(m, str) for m in models):
        return list(models)
    seen = {str(t.model) for t in job.trials.values()} | set(job.trial_counts)
    return sorted(seen)


def _n_trials(job: JobState) -> int | None:
    search = job.spec.get("search")
    n = search.get("n_trials") if isinstance(search, dict) else None
    return n if isinstance(n, int) else None


def job_summary(job: JobState) -> dict[str, Any]:
    """One job as JSON-ready data: the ``status --json`` entry and the ``wait --json`` output."""
    stage = max(job.stages, key=list(Stage).index, default=None)
    n_trials = _n_trials(job)
    models = []
    for name in _models(job):
        try:
            kind = ModelKind(name)
        except ValueError:
            continue
        running = sum(
            1 for t in job.trials.values() if t.model == kind and t.status is TrialStatus.RUNNING
        )
        models.append(
            {
                "model": str(kind),
                "ended": job.ended_trials(kind),
                "n_trials": n_trials,
                "running": running,
            }
        )
    if job.status is JobStatus.RUNNING:
        best = job.best_saved()
        best_trial, best_value = (best.number, best.value) if best else (None, None)
    else:
        best_trial, best_value = job.best_trial, job.best_value
    promoted = job.promoted
    return {
        "job_id": job.job_id,
        "name": job.name,
        "status": str(job.status),
        "stage": None
        if stage is None
        else {"name": str(stage), "completed": job.stages[stage].status is StageStatus.COMPLETED},
        "models": models,
        "trials_ended": sum(m["ended"] for m in models),
        "trials_total": None if n_trials is None else n_trials * len(models),
        "trials_running": sum(m["running"] for m in models),
        "best_trial": best_trial,
        "best_value": best_value,
        "promoted": None
        if promoted is None
        else {
            "trial": promoted.trial,
            "model": str(promoted.model),
            "artifact": promoted.artifact,
            "sha256": promoted.sha256,
            "value": promoted.value,
        },
        "reason": job.reason,
        "file": job.file,
    }


def find_job(state: State, job_id: str, state_dir: Path) -> JobState:
    """The job ``job_id``, or :class:`UnknownJob`."""
    job = state.jobs.get(check_job_id(job_id))
    if job is None:
        raise UnknownJob(job_id, state_dir)
    return job


def status_report(
    state: State,
    state_dir: Path,
    *,
    job_id: str | None = None,
    gpus: Sequence[int] = (),
    pid_alive: Callable[[int], bool] = lambda pid: False,
) -> dict[str, Any]:
    """``sentinel status`` as JSON-ready data; ``job_id`` narrows it to one job."""
    jobs = [find_job(state, job_id, state_dir)] if job_id else list(state.jobs.values())
    pid = state.daemon_pid
    alive = pid is not None and pid_alive(pid)
    return {
        "state_dir": str(state_dir),
        "last_seq": state.last_seq,
        "daemon": {"pid": pid, "alive": alive, "health": _health(state_dir) if alive else None},
        "jobs": [job_summary(j) for j in jobs],
        "workers": [
            {"worker": w.worker, "pid": w.pid, "gpu": w.gpu}
            for w in state.workers.values()
            if w.status is WorkerStatus.ALIVE
        ],
        "gpus": list(gpus),
        "rejected": state.rejected,
    }


def _health(state_dir: Path) -> dict[str, Any] | None:
    """What a running daemon says about itself when it cannot write its log (``health.json``)."""
    try:
        health = orjson.loads((state_dir / HEALTH_FILE).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return health if isinstance(health, dict) else None


def _value(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _trials_cell(job: dict[str, Any]) -> str:
    parts = [
        f"{m['model']} {m['ended']}/{'?' if m['n_trials'] is None else m['n_trials']}"
        for m in job["models"]
    ]
    return ", ".join(parts) or "-"


def _stage_cell(job: dict[str, Any]) -> str:
    stage = job["stage"]
    if stage is None:
        return "-"
    return f"{stage['name']} (done)" if stage["completed"] else stage["name"]


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]


def render_status(report: dict[str, Any]) -> str:
    """``sentinel status`` for people: daemon line, a table of jobs, then workers and GPUs."""
    daemon = report["daemon"]
    if daemon["pid"] is None:
        who = "not running (stopped cleanly, or never started)"
    elif daemon["alive"]:
        who = f"pid {daemon['pid']}, running"
    else:
        who = f"pid {daemon['pid']}, not running (it stopped without recording it)"
    lines = [f"daemon: {who}; log at seq {report['last_seq']}; state {report['state_dir']}"]
    health = daemon.get("health") or {}
    if health.get("status") == "degraded":
        lines.append(f"DEGRADED: {health.get('reason', '?')} (not dispatching new trials)")
    dispatch = health.get("dispatch") or {}
    if dispatch.get("backend") == "dask":
        if dispatch.get("connected"):
            lines.append(
                f"dispatch: dask scheduler {dispatch.get('scheduler')}, "
                f"{dispatch.get('workers', 0)} workers, {dispatch.get('slots', 0)} slots, "
                f"{dispatch.get('running', 0)} trials running there"
            )
        else:
            lines.append(
                f"DISPATCH PAUSED: dask scheduler {dispatch.get('scheduler')}: "
                f"{dispatch.get('reason', '?')} (trials wait in the queue)"
            )
    if report["jobs"]:
        rows = [["JOB", "NAME", "STATUS", "STAGE", "TRIALS", "RUN", "BEST", "PROMOTED"]]
        for job in report["jobs"]:
            best = _value(job["best_value"])
            if job["best_trial"] is not None:
                best += f" (#{job['best_trial']})"
            promoted = job["promoted"]["artifact"] if job["promoted"] else "-"
            rows.append(
                [
                    job["job_id"],
                    job["name"],
                    job["status"],
                    _stage_cell(job),
                    _trials_cell(job),
                    str(job["trials_running"]),
                    best,
                    promoted,
                ]
            )
        lines += _table(rows)
        lines += [f"  {j['job_id']}: {j['reason']}" for j in report["jobs"] if j["reason"]]
    else:
        lines.append("no jobs")
    workers = report["workers"]
    cells = [
        f"{w['worker']} (pid {w['pid']}, {'cpu' if w['gpu'] is None else 'gpu ' + str(w['gpu'])})"
        for w in workers
    ]
    lines.append(f"workers: {', '.join(cells) if cells else 'none alive'}")
    gpus = report["gpus"]
    lines.append(f"gpus: {', '.join(map(str, gpus)) if gpus else 'none (workers train on CPU)'}")
    return "\n".join(lines)


# ---- wait -----------------------------------------------------------------------------


def progress_line(job_id: str, job: dict[str, Any] | None, width: int = 80) -> str:
    """The one-line progress bar ``sentinel wait`` redraws on a terminal."""
    if job is None:
        return f"{job_id}: not in the log yet (waiting for the daemon to accept it)"[:width]
    ended, total = job["trials_ended"], job["trials_total"]
    bar = ""
    if total:
        filled = min(20, 20 * ended // total)
        bar = f"[{'#' * filled}{'.' * (20 - filled)}] "
    stage = _stage_cell(job)
    text = (
        f"{job_id} {job['status']} {stage} {bar}{ended}/{total or '?'} trials "
        f"best {_value(job['best_value'])}"
    )
    return text[:width]


def wait_for_job(
    state_dir: Path,
    job_id: str,
    *,
    timeout: float | None,
    poll_s: float = 0.2,
    on_poll: Callable[[dict[str, Any] | None], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[bool, dict[str, Any] | None]:
    """Poll the state until ``job_id`` has ended or ``timeout`` s pass.

    Returns whether it ended, and its last summary (``None`` while not in the log: it may
    still be waiting in the inbox). ``on_poll`` sees every summary (for a progress bar).
    """
    check_job_id(job_id)
    deadline = None if timeout is None else clock() + timeout
    while True:
        job = read_state(state_dir).jobs.get(job_id)
        summary = None if job is None else job_summary(job)
        if on_poll is not None:
            on_poll(summary)
        if job is not None and job.status is not JobStatus.RUNNING:
            return True, summary
        if deadline is not None:
            left = deadline - clock()
            if left <= 0:
                return False, summary
            sleep(min(poll_s, left))
        else:
            sleep(poll_s)


def terminal_width() -> int:
    return shutil.get_terminal_size((80, 24)).columns


# ---- cancel ---------------------------------------------------------------------------


def request_cancel(
    state_dir: Path, job_id: str, state: State, *, now: datetime, pid: int | None = None
) -> Path:
    """Ask the daemon to cancel ``job_id`` (running, per ``state``); return the request file."""
    job = find_job(state, job_id, state_dir)
    if job.status is not JobStatus.RUNNING:
        raise JobAlreadyEnded(job.job_id, job.status, job.reason)
    path = cancel_request_path(state_dir, job_id)
    _ensure_dir(path.parent)
    body = {
        "job_id": job_id,
        "requested_at": format_ts(now),
        "pid": os.getpid() if pid is None else pid,
    }
    atomic_write_bytes(path, orjson.dumps(body) + b"\n")
    return path
