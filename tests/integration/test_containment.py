"""Issue 13, containment: whatever goes wrong inside one job fails that job, never the daemon.

A daemon runs in this process (with a real worker process, real stages and a real log) and
one job per step has that step raise: building its actor, the study's ask, telling the study
how a trial ended, a worker's answer, a stage's outcome, the quality gate, promotion, writing
``best/``. Each such job ends ``job.failed`` naming the step and the error; a good job beside
them completes; the daemon stops cleanly. Then a job left running in the log whose actor
cannot be rebuilt becomes ``job.failed`` at the next start, which carries on.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sentinel_daemon.daemon import actor as actor_mod
from sentinel_daemon.daemon import effects as effects_mod
from sentinel_daemon.daemon.actor import JobActor
from sentinel_daemon.daemon.decisions import nothing
from sentinel_daemon.daemon.dispatch import local_plan
from tests.daemonkit import (
    in_process_daemon,
    job_id_of,
    make_dataset,
    of_type,
    read_events,
    write_job,
)
from tests.helpers import wait_for


class Injected(RuntimeError):
    """The fault this test injects (any exception a step may raise)."""


#: job name -> what its injected fault says it broke (job.failed's reason names it).
STEPS = {
    "bad-build": "starting it failed",
    "bad-ask": "deciding on tick failed",
    "bad-tell": "telling the study how a trial ended failed",
    "bad-answer": "deciding on answer failed",
    "bad-stage": "deciding on stageended failed",
    "bad-gate": "deciding on stageended failed",
    "bad-promote": "deciding on tick failed",
    "bad-export": "deciding on tick failed",
}


def _raise_for(name: str, original: Callable[..., Any], job_of: Callable[..., str]) -> Any:
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if job_of(*args, **kwargs).startswith(name + "-"):
            raise Injected(f"injected into {name}")
        return original(*args, **kwargs)

    return wrapped


def _inject(monkeypatch: pytest.MonkeyPatch) -> None:
    def self_job(self: JobActor, *a: Any, **k: Any) -> str:
        return str(self.job_id)

    init = JobActor.__init__

    def build(self: JobActor, job: Any, ctx: Any) -> None:
        if job.job_id.startswith("bad-build-"):
            raise Injected("injected into bad-build")
        init(self, job, ctx)

    monkeypatch.setattr(JobActor, "__init__", build)
    for name, method in (
        ("bad-ask", "_next_model"),
        ("bad-tell", "_tell"),
        ("bad-stage", "_stage_ended"),
        ("bad-gate", "_gate"),
    ):
        original = getattr(JobActor, method)
        monkeypatch.setattr(JobActor, method, _raise_for(name, original, self_job))
    monkeypatch.setattr(
        actor_mod,
        "answered",
        _raise_for("bad-answer", actor_mod.answered, lambda t, m, *a: m.command_id),
    )
    monkeypatch.setattr(
        actor_mod, "promote", _raise_for("bad-promote", actor_mod.promote, lambda j: j.job_id)
    )
    monkeypatch.setattr(
        effects_mod,
        "export_best",
        _raise_for("bad-export", effects_mod.export_best, lambda s, folder, *a: folder.name),
    )


def _run_until(daemon: Any, done: Callable[[], bool]) -> int:
    """Run the daemon in this thread until ``done()``; then stop it as a signal would."""

    def watch() -> None:
        wait_for(done, timeout=240, what="the jobs to end")
        daemon.stop_state.signals = 1

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    code: int = daemon.run()
    watcher.join(timeout=10)
    return code


def test_a_failure_in_any_step_of_one_job_fails_that_job_and_the_others_go_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_dataset(tmp_path / "data", rows=600)
    daemon = in_process_daemon(tmp_path, monkeypatch)
    # One real worker process (the kit's in-process daemon plans none).
    daemon.plan = local_plan(daemon.settings, workers=1, gpus=daemon.gpus)
    daemon.worker_count = len(daemon.plan.workers)
    _inject(monkeypatch)
    inbox = tmp_path / "state" / "inbox"
    inbox.mkdir(parents=True)
    ids = {}
    for name in [*STEPS, "good"]:
        job_file = write_job(tmp_path / "jobs", name, n_trials=1)
        ids[name] = job_id_of(job_file)
        job_file.rename(inbox / job_file.name)

    def ended() -> bool:
        events = read_events(tmp_path / "state")
        return all(
            of_type(events, "job.completed", "job.failed", job_id=job_id) for job_id in ids.values()
        )

    assert _run_until(daemon, ended) == 0
    events = read_events(tmp_path / "state")
    assert of_type(events, "job.completed", job_id=ids["good"]), "the good job did not complete"
    problems = []
    for name, where in STEPS.items():
        failed = of_type(events, "job.failed", job_id=ids[name])
        if not failed:
            problems.append(f"{name}: no job.failed")
        elif where not in failed[0]["reason"] or f"injected into {name}" not in failed[0]["reason"]:
            problems.append(f"{name}: {failed[0]['reason']!r} does not say {where!r}")
    assert not problems, "\n".join(problems)
    assert of_type(events, "daemon.stopped")


def test_a_recorded_job_that_cannot_go_on_fails_at_the_next_start_which_carries_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_dataset(tmp_path / "data", rows=600)
    inbox = tmp_path / "state" / "inbox"
    inbox.mkdir(parents=True)
    stuck = write_job(tmp_path / "jobs", "stuck", n_trials=1)
    stuck_id = job_id_of(stuck)
    stuck.rename(inbox / stuck.name)
    # First run: the job is recorded, and decides nothing (it stays running in the log).
    daemon = in_process_daemon(tmp_path, monkeypatch)
    decide = JobActor.decide
    with monkeypatch.context() as patch:
        patch.setattr(
            JobActor,
            "decide",
            lambda self, *a: nothing() if self.job_id == stuck_id else decide(self, *a),
        )
        submitted = lambda: bool(of_type(read_events(tmp_path / "state"), "job.submitted"))  # noqa: E731
        assert _run_until(daemon, submitted) == 0
    # Next start: its actor cannot be rebuilt from the log (an error of that job's own).
    rebuild = JobActor.rebuild
    monkeypatch.setattr(
        JobActor,
        "rebuild",
        _raise_for("stuck", rebuild, lambda self, *a: str(self.job_id)),
    )
    good = write_job(tmp_path / "jobs", "after", n_trials=1)
    good_id = job_id_of(good)
    good.rename(inbox / good.name)
    daemon = in_process_daemon(tmp_path, monkeypatch)
    # One real worker process (the kit's in-process daemon plans none).
    daemon.plan = local_plan(daemon.settings, workers=1, gpus=daemon.gpus)
    daemon.worker_count = len(daemon.plan.workers)

    def after_done() -> bool:
        events = read_events(tmp_path / "state")
        return bool(of_type(events, "job.completed", "job.failed", job_id=good_id))

    assert _run_until(daemon, after_done) == 0
    events = read_events(tmp_path / "state")
    assert of_type(events, "job.completed", job_id=good_id), "the next job did not complete"
    (failed,) = of_type(events, "job.failed", job_id=stuck_id)
    assert "rebuilding it from the log failed" in failed["reason"]
    assert "injected into stuck" in failed["reason"]
    assert len(of_type(events, "daemon.started")) == 2
