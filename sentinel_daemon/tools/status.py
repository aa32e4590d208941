"""``sentinel status``: jobs, stages, trials ended per model, best values, workers, GPUs.

Like every operator command it never writes the event log (the daemon is its only writer):
it reads the state with :func:`~sentinel_daemon.log.store.read_state`, which takes no lock,
and ``health.json`` for the daemon's own view. The summaries and renderings here are pure
functions of a :class:`~sentinel_daemon.core.state.State`; ``sentinel wait``
(:mod:`~sentinel_daemon.tools.wait`) reuses them. The command line parses, prints and picks
exit codes.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from sentinel_daemon.core.events import ModelKind, Stage
from sentinel_daemon.core.ids import check_job_id
from sentinel_daemon.core.state import (
    JobState,
    JobStatus,
    StageStatus,
    State,
    TrialStatus,
    WorkerStatus,
)
from sentinel_daemon.errors import AmbiguousJob, UnknownJob
from sentinel_daemon.layout import HEALTH_FILE, QUEUE_DIR
from sentinel_daemon.printable import printable_all
from sentinel_daemon.queue.maildir import HEARTBEAT

# ---- submit ---------------------------------------------------------------------------


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


def job_summary(job: JobState, claimed: Collection[str] | None = None) -> dict[str, Any]:
    """One job as JSON-ready data: the ``status --json`` entry and the ``wait --json`` output.

    ``claimed``: the command ids workers hold now (:func:`claimed_commands`). Then a
    model's ``running`` counts only its trials a worker holds, and ``queued`` the rest of
    those the log has started; without it, ``running`` counts every started trial.
    """
    stage = max(job.stages, key=list(Stage).index, default=None)
    n_trials = _n_trials(job)
    models = []
    for name in _models(job):
        try:
            kind = ModelKind(name)
        except ValueError:
            continue
        started = [
            f"{job.job_id}.{t.number}.{t.attempt}"
            for t in job.trials.values()
            if t.model == kind and t.status is TrialStatus.RUNNING
        ]
        running = len(started) if claimed is None else sum(1 for c in started if c in claimed)
        models.append(
            {
                "model": str(kind),
                "ended": job.ended_trials(kind),
                "n_trials": n_trials,
                "running": running,
                "queued": len(started) - running,
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
        "trials_queued": sum(m["queued"] for m in models),
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


def resolve_job(state: State, ref: str, state_dir: Path) -> JobState | None:
    """The job ``ref`` names: its id, else its name when one job alone has that name.

    None when no job has that id or name; :class:`AmbiguousJob` (at once, listing the
    ids, newest first) when several jobs have that name.
    """
    job = state.jobs.get(check_job_id(ref))
    if job is not None:
        return job
    named = [j for j in state.jobs.values() if j.name == ref]
    if len(named) > 1:
        newest = sorted(named, key=lambda j: j.submitted_seq, reverse=True)
        raise AmbiguousJob(ref, [j.job_id for j in newest], state_dir)
    return named[0] if named else None


def _worker_folders(state_dir: Path) -> list[os.DirEntry[str]]:
    """``STATE/queue/workers/*/``, without following links; empty with no queue yet."""
    try:
        entries = os.scandir(Path(state_dir) / QUEUE_DIR / "workers")
    except (FileNotFoundError, NotADirectoryError):
        return []
    with entries:
        return [e for e in entries if e.is_dir(follow_symlinks=False)]


def claimed_commands(state_dir: Path) -> set[str]:
    """The command ids workers hold now (``STATE/queue/workers/*/``), read without a lock
    and without creating anything; empty when there is no queue yet."""
    held: set[str] = set()
    for folder in _worker_folders(state_dir):
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):  # gone meanwhile
            held |= {
                name[: -len(".json")]
                for name in os.listdir(folder.path)
                if name.endswith(".json") and name != HEARTBEAT and not name.startswith(".")
            }
    return held


def worker_beats(state_dir: Path) -> dict[str, dict[str, Any]]:
    """Each worker's last heartbeat (``queue/workers/<id>/heartbeat.json``: its ``lane``,
    ``threads``, ``gpu``...), read without a lock; a missing or torn one is left out."""
    beats: dict[str, dict[str, Any]] = {}
    for folder in _worker_folders(state_dir):
        with contextlib.suppress(OSError, orjson.JSONDecodeError):
            info = orjson.loads((Path(folder.path) / HEARTBEAT).read_bytes())
            if isinstance(info, dict):
                beats[folder.name] = info
    return beats


def _worker_row(worker: Any, beat: Mapping[str, Any]) -> dict[str, Any]:
    """A live worker for status: its GPU, the kind of trials it takes, its threads."""
    device = beat.get("lane")
    if device not in ("gpu", "cpu"):
        device = "cpu" if worker.gpu is None else "gpu"
    threads = beat.get("threads")
    return {
        "worker": worker.worker,
        "pid": worker.pid,
        "gpu": worker.gpu,
        "device": device,
        "threads": threads if isinstance(threads, int) else None,
    }


def status_report(
    state: State,
    state_dir: Path,
    *,
    job_id: str | None = None,
    gpus: Sequence[int] = (),
    pid_alive: Callable[[int], bool] = lambda pid: False,
    claimed: Collection[str] | None = None,
    beats: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """``sentinel status`` as JSON-ready data; ``job_id`` (an id, or a name one job alone
    has) narrows it to one job; ``claimed`` as for :func:`job_summary`; ``beats``: the
    workers' heartbeats (:func:`worker_beats`), which say each one's device and threads."""
    beats = beats or {}
    if job_id:
        job = resolve_job(state, job_id, state_dir)
        if job is None:
            raise UnknownJob(job_id, state_dir)
        jobs = [job]
    else:
        jobs = list(state.jobs.values())
    pid = state.daemon_pid
    alive = pid is not None and pid_alive(pid)
    return {
        "state_dir": str(state_dir),
        "last_seq": state.last_seq,
        "daemon": {"pid": pid, "alive": alive, "health": _health(state_dir) if alive else None},
        "jobs": [job_summary(j, claimed) for j in jobs],
        "workers": [
            _worker_row(w, beats.get(w.worker, {}))
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
    """``sentinel status`` for people: daemon line, a table of jobs, then workers and GPUs.

    Every string of ``report`` is escaped first (names, reasons and paths come from
    outside: :func:`~sentinel_daemon.printable.printable`).
    """
    report = printable_all(report)
    daemon = report["daemon"]
    if daemon["pid"] is None:
        who = "not running (stopped cleanly, or never started)"
    elif daemon["alive"]:
        who = f"pid {daemon['pid']}, running"
    else:
        who = f"pid {daemon['pid']}, not running (it stopped without recording it)"
    lines = [f"daemon: {who}; log at seq {report['last_seq']}; state {report['state_dir']}"]
    health = daemon.get("health") or {}
    damage = health.get("damage") or []
    if health.get("status") == "degraded" and not (damage and not health.get("blocked")):
        lines.append(f"DEGRADED: {health.get('reason', '?')} (not dispatching new trials)")
    if damage:
        lines.append(
            f"EVENT LOG DAMAGED (the daemon runs on its snapshot): {'; '.join(damage)}; "
            f"see `sentinel log verify`, mend with `sentinel log repair`"
        )
    dispatch = health.get("dispatch") or {}
    dask = dispatch.get("backend") == "dask"
    if dask:
        if dispatch.get("connected"):
            resource = dispatch.get("resource", "GPU")
            lines.append(
                f"dispatch: dask scheduler {dispatch.get('scheduler')}, "
                f"{dispatch.get('workers', 0)} workers ({dispatch.get('offering', 0)} offer "
                f"{resource}), {dispatch.get('slots', 0)} slots, "
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
    if dask:
        # The Dask workers are counted above; the log's workers are the daemon's slots.
        slots = ", ".join(w["worker"] for w in workers) or "none yet"
        lines.append(f"workers: on the Dask cluster; slots used: {slots}")
    else:
        cells = [_worker_cell(w) for w in workers]
        lines.append(f"workers: {', '.join(cells) if cells else 'none alive'}")
    gpus = report["gpus"]
    lines.append(f"gpus: {', '.join(map(str, gpus)) if gpus else 'none (workers train on CPU)'}")
    return "\n".join(lines)


# ---- wait -----------------------------------------------------------------------------


# ---- cancel ---------------------------------------------------------------------------


def _worker_cell(worker: Mapping[str, Any]) -> str:
    """``w0-3-1 (pid 4250, gpu 0, 1 thread)``: where a worker trains, with how many threads."""
    where = "cpu" if worker["gpu"] is None else f"gpu {worker['gpu']}"
    threads = worker.get("threads")
    if threads is not None:
        where += f", {threads} thread{'s' if threads != 1 else ''}"
    return f"{worker['worker']} (pid {worker['pid']}, {where})"
