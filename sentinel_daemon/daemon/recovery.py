"""Start-up after a stop or a crash: what the predecessor left behind.

The log was replayed (snapshot plus tail) before any of this, in the folders
:func:`make_folders` made. The daemon then, in order
(:meth:`sentinel_daemon.daemon.service.Daemon.recover`): kills the workers a crashed
predecessor left running (:func:`reap_orphans`); ingests the answers that arrived while no
daemon ran, and records as saved every running attempt whose model is complete on disk (a
trial saved then is recorded, never trained again); queues the reports of jobs that ended
without one (:func:`missing_reports`); takes back the commands its workers held and queues
them again with the same attempt (:func:`requeue_held`: the daemon stopped, the trial did
not fail); queues every running attempt whose command is in no queue folder
(:func:`redispatch`); and looks again at job files claimed but never recorded.
"""

from __future__ import annotations

import contextlib
import os
import signal
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import psutil
import structlog

from sentinel_daemon.core.events import Event, WorkerLost
from sentinel_daemon.core.ids import WorkerId
from sentinel_daemon.core.state import JobState, JobStatus, State, WorkerStatus
from sentinel_daemon.daemon.committer import Committer
from sentinel_daemon.daemon.decisions import Redispatch
from sentinel_daemon.fsutil import make_drop_dir
from sentinel_daemon.layout import (
    CLAIMED_DIR,
    CONTROL_DIR,
    INBOX_DIR,
    JOBS_DIR,
    REJECTED_DIR,
    report_index,
)
from sentinel_daemon.queue.maildir import Queue

log = structlog.get_logger(__name__)

#: How long start-up waits for a predecessor's orphaned worker to die after SIGKILL.
ORPHAN_KILL_WAIT_S = 10.0


def make_folders(state_dir: Path) -> None:
    """The state directory and the folders the daemon and its operators use."""
    state_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
    for sub in (INBOX_DIR, CONTROL_DIR):
        if not make_drop_dir(state_dir / sub):
            log.warning(
                "daemon.drop_dir_private",
                folder=str(state_dir / sub),
                reason="the setgid bit was refused (RestrictSUIDSGID=?); only the daemon's "
                "user can leave files here",
                fix="make it 2770 for the operators' group with systemd-tmpfiles "
                "(docs/install.md, step 3)",
            )
    for sub in (CLAIMED_DIR, REJECTED_DIR, JOBS_DIR):
        (state_dir / sub).mkdir(mode=0o750, exist_ok=True)


def reap_orphans(state: State) -> list[Event]:
    """Workers the log has alive belong to a predecessor: make sure they are gone."""
    events: list[Event] = []
    doomed: list[psutil.Process] = []
    for w in state.workers.values():
        if w.status is not WorkerStatus.ALIVE:
            continue
        reason = "its daemon stopped without stopping it"
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(w.pid)
            cmdline = proc.cmdline()
            if "sentinel_daemon.worker" in " ".join(cmdline) and w.worker in cmdline:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(w.pid, signal.SIGKILL)  # its own group (start_new_session)
                doomed.append(proc)
                reason += "; it was still running and was killed at start-up"
        events.append(WorkerLost(worker=WorkerId(w.worker), pid=w.pid, gpu=w.gpu, reason=reason))
    if doomed:
        psutil.wait_procs(doomed, timeout=ORPHAN_KILL_WAIT_S)
    return events


def missing_reports(state: State, state_dir: Path) -> list[str]:
    """Jobs that ended (with trials) while no daemon could write their report."""
    return [
        job.job_id
        for job in state.jobs.values()
        if job.status is not JobStatus.RUNNING
        and job.trial_counts
        and not report_index(state_dir, job.job_id).is_file()
    ]


def requeue_held(queue: Queue, state: State, heartbeat_timeout_s: float) -> int:
    """Commands held by the predecessor's workers (all dead now) back into ``pending/``.

    With the same attempt: the daemon stopped, the trial did not fail. A worker the log
    does not know whose heartbeat is fresh is one systemd runs (not ours): its result will
    come. Returns how many commands were queued again.
    """
    requeued = 0
    for worker in set(queue.in_flight().values()):
        if worker is None:
            continue
        beat = queue.last_beat(worker)
        if worker not in state.workers and beat is not None and beat[0] < heartbeat_timeout_s:
            continue
        for command in queue.take_back(worker):
            held = state.jobs.get(command.job_id)
            trial = held.trials.get(command.trial) if held else None
            if trial and trial.attempt == command.attempt and not trial.status.ended:
                queue.put(command)
                requeued += 1
    return requeued


def rebuild(core: Committer, job: JobState) -> None:
    """Make ``job``'s actor and its studies from the log (raises what the job owns)."""
    core.actor(job.job_id).rebuild(job)


def redispatch(core: Committer, queue: Queue) -> int:
    """Queue every running attempt whose command is in no queue folder; how many were."""
    in_flight = frozenset(queue.in_flight())
    queued = 0
    for job in core.state.running_jobs():
        actor = core.actors.get(job.job_id)
        if actor is None:
            continue
        decision = core.guard(
            job.job_id,
            "queuing its trials again",
            partial(actor.decide, core.state, Redispatch(in_flight), datetime.now(UTC)),
        )
        if decision is not None:  # no events: the log has them running
            core.effector.carry_out(decision.effects)
            queued += len(decision.effects)
    return queued
