"""kill -9 torture: SIGKILL the daemon and its workers at random moments until jobs complete.

Each run starts a real daemon on a fresh state directory, submits a job of ``n_trials`` per
model (XGBoost and LightGBM, tiny data) and kills, over and over, seeded:

- the daemon alone (its orphaned workers are left to notice, or to be reaped by the next
  daemon), after a random delay or just after a chosen event is appended;
- the daemon with its workers and stage processes at once (a host crash, minus the disk);
- one random worker while the daemon runs (the supervisor must notice and retry).

Event-keyed kills wait for the next ``trial.started``, ``trial.saved``, ``stage.started``
of ``validate`` or ``export``, ``model.promoted``... and kill a few milliseconds after it:
the windows where a decision is durable and its side effect is not yet done. Every daemon
kill is followed by a check of the invariants on what the dead daemon left, then a restart.
When a job completes before the run's kills are spent, another job is submitted. At the
end every job must have completed with all of DESIGN.md's invariants, a promoted model that
loads and matches its sha256, and the daemon must stop cleanly.

``SENTINEL_FAULTS_SCALE=full``: four runs of 26 kills (104), 12 trials per model, varied
workers, samplers, pruners and log segment sizes; ``short``: one run of 5 kills on a job of
3 trials per model. ``SENTINEL_FAULTS_SEED`` replays a run's kill schedule (the moments
themselves depend on timing).
"""

from __future__ import annotations

import random
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.daemonkit import DaemonProcess, Event, job_id_of, of_type, write_job
from tests.faults import faultkit
from tests.faults.faultkit import EventTail, MakeDaemon
from tests.faults.record import full, record
from tests.helpers import wait_for

pytestmark = pytest.mark.faults

MODELS = ("xgboost", "lightgbm")
#: A keyed kill that waits longer than this for its event kills anyway (a random moment).
KEY_WAIT_S = 20.0
#: ... and this long for an event at the end of a job (the rest of its search runs first).
END_WAIT_S = 120.0
#: How often the event log is polled while a kill waits for its moment.
POLL_S = 0.004
JOB_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class Run:
    """One torture run: the daemon's shape and how many kills it takes."""

    name: str
    kills: int
    n_trials: int
    workers: int = 2
    parallelism: int = 2
    sampler: str = "random"
    pruner: str = "none"
    settings: dict[str, str] = field(default_factory=dict)


FULL_RUNS = (
    Run("two-workers", kills=26, n_trials=12),
    Run(
        "tpe-median-small-segments",
        kills=26,
        n_trials=12,
        parallelism=3,
        sampler="tpe",
        pruner="median",
        # Rotation and snapshots happen many times in the run (records are ~300-2000 bytes).
        settings={
            "SENTINEL_EVENTLOG__SEGMENT_BYTES": "16384",
            "SENTINEL_EVENTLOG__SNAPSHOT_EVERY": "100",
            "SENTINEL_TRIALS__REPORT_EVERY": "3",
        },
    ),
    Run("one-worker", kills=26, n_trials=12, workers=1,
        settings={"SENTINEL_TRIALS__MAX_ATTEMPTS": "5"}),
    Run("hyperband-three-workers", kills=26, n_trials=12, workers=3, parallelism=3,
        pruner="hyperband", settings={"SENTINEL_TRIALS__REPORT_EVERY": "2"}),
)  # fmt: skip
SHORT_RUNS = (Run("short", kills=5, n_trials=3),)
RUNS = FULL_RUNS if full() else SHORT_RUNS

#: (weight, kind) of each kill; "keyed-*" wait for an event first.
KINDS = (
    (3, "daemon"),
    (2, "all"),
    (3, "worker"),
    (3, "keyed-daemon"),
    (2, "keyed-all"),
)
#: Events to key a kill on while a job searches, and once its search is (nearly) over.
SEARCH_KEYS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("trial.started", {}),
    ("trial.saved", {}),
    ("trial.saved", {}),
    ("worker.started", {}),
    ("daemon.started", {}),  # during recovery
    ("stage.completed", {"stage": "prepare"}),
)
END_KEYS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("stage.started", {"stage": "validate"}),
    ("stage.completed", {"stage": "validate"}),
    ("model.promoted", {}),
    ("model.promoted", {}),
    ("stage.completed", {"stage": "export"}),
    ("job.completed", {}),
)


@dataclass
class Tally:
    kills: Counter[str] = field(default_factory=Counter)
    keys: Counter[str] = field(default_factory=Counter)
    processes_killed: int = 0
    restarts: int = 0
    before_log: int = 0
    violations: list[str] = field(default_factory=list)
    #: kind of kill ("daemon", "daemon and workers", "worker", or "end") -> violations found
    blame: Counter[str] = field(default_factory=Counter)
    #: kills that landed between a model.promoted and its export (best/ not yet written)
    pending_exports: int = 0
    aborted: bool = False
    jobs: list[str] = field(default_factory=list)


class Torture:
    """One run's daemon, its jobs, and the kill loop (see the module doc)."""

    def __init__(self, daemon: DaemonProcess, run: Run, rng: random.Random, jobs_dir: Path):
        self.daemon = daemon
        self.run = run
        self.rng = rng
        self.jobs_dir = jobs_dir
        self.tail = EventTail(daemon.state_dir)
        self.tally = Tally()

    # -- jobs --------------------------------------------------------------------------

    def submit(self) -> str:
        n = len(self.tally.jobs)
        job_file = write_job(
            self.jobs_dir, f"torture-{n}", models=MODELS, n_trials=self.run.n_trials,
            parallelism=self.run.parallelism, sampler=self.run.sampler, pruner=self.run.pruner,
            seed=self.rng.randrange(1000),
        )  # fmt: skip
        job_id = job_id_of(job_file)
        self.daemon.submit(job_file)
        self.tally.jobs.append(job_id)
        return job_id

    def current(self) -> str:
        """The job being tortured: the last submitted one; a new one once that one ended."""
        self.tail.poll()
        job_id = self.tally.jobs[-1]
        end = faultkit.job_end(self.tail.events, job_id)
        if end is not None:
            if end["type"] != "job.completed":
                self.tally.violations.append(f"{job_id} did not complete: {end}")
                self.tally.blame["end"] += 1
            job_id = self.submit()
        return job_id

    def near_the_end(self, job_id: str) -> bool:
        events = self.tail.events
        if of_type(events, "stage.completed", job_id=job_id, stage="search"):
            return True
        total = self.run.n_trials * len(MODELS)
        return faultkit.ended_trials(events, job_id) >= total - self.run.parallelism - 2

    # -- the loop ----------------------------------------------------------------------

    def torture(self) -> None:
        self.submit()
        while sum(self.tally.kills.values()) < self.run.kills:
            job_id = self.current()
            ending = self.near_the_end(job_id)
            if ending and self.rng.random() < 0.7:
                # The end of a job is short and holds the windows that matter most (validate,
                # promotion, export): most kills there wait for one of its events.
                kind = self.rng.choice(("keyed-daemon", "keyed-all"))
            else:
                kind = self.rng.choices([k for _, k in KINDS], [w for w, _ in KINDS])[0]
            if kind.startswith("keyed-"):
                # Half the keyed kills wait for the job's end (however far off): its windows
                # are short and few, and random moments seldom land in them.
                to_come = self.end_keys_to_come(job_id)
                keys = to_come if (ending or self.rng.random() < 0.5) else ()
                key_type, fields = self.rng.choice(keys or SEARCH_KEYS)
                label = key_type + "".join(f" {v}" for k, v in fields.items() if k != "job_id")
                wait = END_WAIT_S if keys else KEY_WAIT_S
                hit = self.wait_for_key(key_type, fields, job_id, wait)
                if hit:
                    self.tally.keys[label] += 1
                    if key_type != "model.promoted":  # its window is a few ms: kill at once
                        time.sleep(self.rng.choice((0.0, 0.0, 0.002, 0.01, 0.03)))
                self.kill_daemon(everything=kind == "keyed-all", label=kind)
            else:
                self.pause(self.rng.choice((0.05, 0.3, 1.0, 2.0, 3.0, 4.0)) * self.rng.random())
                if kind == "worker":
                    self.kill_a_worker()
                else:
                    self.kill_daemon(everything=kind == "all", label=kind)

    def end_keys_to_come(self, job_id: str) -> tuple[tuple[str, dict[str, Any]], ...]:
        """The end-of-job events ``job_id`` has not reached yet, with its id to match."""
        return tuple(
            (key_type, {**fields, "job_id": job_id})
            for key_type, fields in END_KEYS
            if not of_type(self.tail.events, key_type, job_id=job_id, **fields)
        )

    def pause(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.alive()
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))

    def alive(self) -> None:
        if not self.daemon.running():
            code = self.daemon.proc.returncode if self.daemon.proc else None
            pytest.fail(f"the daemon exited on its own (code {code}) during the torture")

    def wait_for_key(
        self, key_type: str, fields: dict[str, Any], job_id: str, timeout: float
    ) -> bool:
        """Wait for the next event of ``key_type`` (with ``fields``); False on timeout."""
        self.tail.poll()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for e in self.tail.poll():
                if e["type"] == key_type and all(e.get(k) == v for k, v in fields.items()):
                    return True
            if faultkit.job_end(self.tail.events, job_id) is not None:
                return False
            self.alive()
            time.sleep(POLL_S)
        return False

    def kill_daemon(self, *, everything: bool, label: str) -> None:
        self.alive()
        pid = self.daemon.pid
        if everything:
            self.tally.processes_killed += faultkit.kill_everything(self.daemon)
        else:
            assert self.daemon.kill() == -signal.SIGKILL
            self.tally.processes_killed += 1
        kind = "daemon and workers" if everything else "daemon"
        self.tally.kills[kind] += 1
        self.tail.poll()
        if not of_type(self.tail.events, "daemon.started", pid=pid):
            self.tally.before_log += 1  # killed while starting, before its first record
        # What the dead daemon left must already satisfy every invariant.
        found = faultkit.violations(self.daemon.state_dir, mid_crash=True)
        self.tally.violations += [f"after kill {sum(self.tally.kills.values())} ({label}): {v}"
                                  for v in found]  # fmt: skip
        self.tally.blame[kind] += len(found)
        events = self.tail.events
        done = {e["job_id"] for e in of_type(events, "stage.completed", stage="export")}
        if any(e["job_id"] not in done for e in of_type(events, "model.promoted")):
            self.tally.pending_exports += 1
        if self.rng.random() < 0.2:
            time.sleep(self.rng.random() * 0.5)  # sometimes orphans are still winding down
        self.daemon.start()
        self.tally.restarts += 1

    def kill_a_worker(self) -> None:
        deadline = time.monotonic() + 15.0
        while not (workers := faultkit.live_workers(self.daemon)):
            if time.monotonic() > deadline:
                return  # none came up (all restarting): another kind of kill comes next
            self.pause(0.05)
        victim = self.rng.choice(workers)
        faultkit.kill_group(victim.pid)
        self.tally.kills["worker"] += 1
        self.tally.processes_killed += 1

    def finish(self) -> list[Event]:
        """Let the jobs complete; return the final log (violations are in the tally)."""
        # The last daemon must be up (recovered, signal handlers in place) before its stop;
        # the jobs may have ended under one of its predecessors.
        pid = self.daemon.pid
        self.daemon.wait_for_event(
            lambda e: e["type"] == "daemon.started" and e["pid"] == pid,
            timeout=60, what="the last daemon to start",
        )  # fmt: skip
        for job_id in self.tally.jobs:
            self.daemon.wait_for_event(
                lambda e, j=job_id: (
                    e["type"] in ("job.completed", "job.failed", "job.cancelled")
                    and e.get("job_id") == j
                ),
                timeout=JOB_TIMEOUT_S,
                what=f"job {job_id} to end",
            )
        events = self.daemon.events()
        for job_id in self.tally.jobs:
            end = faultkit.job_end(events, job_id)
            if end is None or end["type"] != "job.completed":
                self.tally.violations.append(f"{job_id} did not complete: {end}")
                self.tally.blame["end"] += 1
        found = faultkit.violations(self.daemon.state_dir)
        self.tally.violations += found
        self.tally.blame["end"] += len(found)
        return events


@pytest.mark.timeout(1200 if full() else 300)
@pytest.mark.parametrize("run", RUNS, ids=[r.name for r in RUNS])
def test_jobs_complete_with_every_invariant_under_repeated_sigkill(
    run: Run, daemons: MakeDaemon, workspace: Path
) -> None:
    rng = faultkit.rng(f"kill-torture/{run.name}")
    print(f"kill torture {run.name}: seed {faultkit.seed()}, {run}")
    settings = {
        **faultkit.FAULT_SETTINGS,
        "SENTINEL_WORKERS__HEARTBEAT_TIMEOUT_S": "20",  # a loaded machine starves workers
        **run.settings,
    }
    daemon = daemons(workers=run.workers, settings=settings).start()
    torture = Torture(daemon, run, rng, workspace / "jobs")
    t0 = time.monotonic()
    tally = torture.tally
    try:
        torture.torture()
        events = torture.finish()
    except BaseException as exc:  # recorded as a violation, then reported by pytest
        tally.violations.append(f"the run stopped: {type(exc).__name__}: {exc}"[:500])
        tally.blame["end"] += 1
        tally.aborted = True
        raise
    finally:
        _record(run, tally, time.monotonic() - t0)
    assert not tally.violations, faultkit.describe(tally.violations)
    assert daemon.stop() == 0
    # Workers of a daemon killed while they were still starting (never recorded, so never
    # reaped by its successor) see their parent gone once started, and exit on their own.
    wait_for(lambda: not daemon.leftovers(), timeout=60, what="orphaned processes to exit")
    # Every kill was survived: each daemon start after a kill is in the log, but for the
    # daemons killed before they had written to it.
    assert len(of_type(events, "daemon.started")) == tally.restarts + 1 - tally.before_log
    for job_id in tally.jobs:
        for model in MODELS:
            saved = of_type(events, "trial.saved", job_id=job_id, model=model)
            assert saved, f"{job_id}: no {model} trial was saved"


def _record(run: Run, tally: Tally, seconds: float) -> None:
    keys = ", ".join(f"{k} x{n}" for k, n in sorted(tally.keys.items()))
    note = (
        f"run {run.name} (seed {faultkit.seed()}): {sum(tally.kills.values())} kills "
        f"({dict(tally.kills)}), {tally.processes_killed} processes, {len(tally.jobs)} jobs of "
        f"{run.n_trials} trials per model, {seconds:.0f} s; {tally.before_log} daemons killed "
        f"while starting, before their first record; {tally.pending_exports} between "
        f"model.promoted and its export; keyed on: {keys or 'none'}"
    )
    rows = (
        ("daemon", "SIGKILL to the daemon alone, at a random moment or just after an event; "
                   "restarted"),
        ("daemon and workers", "SIGKILL to the daemon, its workers and stage processes at "
                               "once; restarted"),
        ("worker", "SIGKILL to one random worker while the daemon runs"),
    )  # fmt: skip
    for i, (kind, injected) in enumerate(rows):
        n = tally.kills[kind]
        # A violation found after a kill counts against that kill's kind; one found at the
        # end of the run (or a run that stopped) against the first row, and then no kill of
        # the run counts as recovered.
        end = tally.blame["end"] if i == 0 else 0
        failed_run = tally.aborted or tally.blame["end"] > 0
        record(
            f"kill -9: {kind}",
            injected,
            cases=n,
            recovered=0 if failed_run else max(0, n - tally.blame[kind]),
            violations=tally.blame[kind] + end,
            note=note if i == 0 else "",
        )
