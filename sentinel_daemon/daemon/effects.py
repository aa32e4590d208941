"""Carrying out effects, once the events of their decision are durable.

The :class:`Effector` is the one place where a decision (:mod:`sentinel_daemon.daemon.decisions`)
touches the world: it puts commands into the queue directory and asks workers to prune,
starts and kills the jobs' stage processes, writes ``best/`` and has reports written. It
also gathers what the stage processes did, for the job actors' next decisions: whether a
job's stage process runs, and how one ended (:meth:`Effector.stage_ended`).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import structlog

from sentinel_daemon.core.events import Stage
from sentinel_daemon.daemon.decisions import (
    BestWritten,
    Effect,
    Input,
    PutCommand,
    RequestPrune,
    StageEnded,
    StartStage,
    Withdraw,
    WriteBest,
    WriteReport,
)
from sentinel_daemon.daemon.reports import ReportRunner
from sentinel_daemon.daemon.stages import StageProcess, export_best
from sentinel_daemon.layout import STAGES_DIR, job_dir
from sentinel_daemon.queue.maildir import Queue
from sentinel_daemon.queue.messages import split_command_id

log = structlog.get_logger(__name__)


class Effector:
    """Carries out effects over one state directory (see the module doc)."""

    def __init__(self, state_dir: Path, queue: Queue, reports: ReportRunner) -> None:
        self.state_dir = state_dir
        self.queue = queue
        self.reports = reports
        self._stages: dict[str, StageProcess] = {}  # job id -> its running stage process

    def carry_out(self, effects: Iterable[Effect]) -> list[Input]:
        """Carry out ``effects`` in order; what they tell the actors (:class:`BestWritten`)."""
        follow: list[Input] = []
        for effect in effects:
            match effect:
                case PutCommand():
                    self.queue.put(effect.command)
                case RequestPrune():
                    self.queue.request_prune(effect.worker, effect.command_id)
                case StartStage():
                    self._start_stage(effect)
                case WriteBest():
                    folder = job_dir(self.state_dir, effect.job_id)
                    path = export_best(
                        self.state_dir, folder, effect.artifact, effect.sha256, effect.card
                    )
                    follow.append(BestWritten(path))
                case Withdraw():
                    self._withdraw(effect.job_id)
                case WriteReport():
                    self.reports.add(effect.job_id)
        return follow

    def stage_running(self, job_id: str) -> bool:
        return job_id in self._stages

    def stage_ended(self, job_id: str) -> StageEnded | None:
        """How ``job_id``'s stage process ended, once it has (then it is forgotten)."""
        proc = self._stages.get(job_id)
        outcome = proc.poll() if proc is not None else None
        if proc is None or outcome is None:
            return None
        del self._stages[job_id]
        return StageEnded(Stage(proc.stage), outcome)

    def stop_stage(self, job_id: str) -> None:
        """Kill ``job_id``'s stage process, if one runs (a stage is simply rerun later)."""
        proc = self._stages.pop(job_id, None)
        if proc is not None:
            proc.kill()

    def stop_stages(self) -> None:
        for job_id in list(self._stages):
            self.stop_stage(job_id)

    def withdraw_pending(self) -> int:
        """Take every pending command back (the daemon stops; the log still has them
        running, so the next start queues them again); how many there were."""
        withdrawn = [cid for cid, w in self.queue.in_flight().items() if w is None]
        for command_id in withdrawn:
            self.queue.withdraw(command_id)
        return len(withdrawn)

    def _start_stage(self, effect: StartStage) -> None:
        self.stop_stage(effect.job_id)  # never two of one job
        folder = job_dir(self.state_dir, effect.job_id) / STAGES_DIR
        proc = StageProcess(self.state_dir, folder, effect.request, effect.stage)
        self._stages[effect.job_id] = proc
        log.info("job.stage_process", job=effect.job_id, stage=str(effect.stage), pid=proc.pid)

    def _withdraw(self, job_id: str) -> None:
        for command_id, worker in self.queue.in_flight().items():
            if split_command_id(command_id)[0] != job_id:
                continue
            if worker is None:
                self.queue.withdraw(command_id)
            else:
                self.queue.request_prune(worker, command_id)
        self.stop_stage(job_id)
