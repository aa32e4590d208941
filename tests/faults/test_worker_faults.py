"""Worker faults: every way a worker can fail a trial leads to a retry, and the job completes.

One job (XGBoost and LightGBM, tiny data, two workers) carries a fault on several of its
trials, each of a different kind:

- ``sigkill`` / ``sigsegv``: the trial is slowed down (test fault ``slow``) and the worker
  holding it gets SIGKILL or SIGSEGV from the test, mid-trial;
- ``hang``: the worker stops heartbeating and blocks (test fault ``hang``); the
  supervisor kills it after ``workers.heartbeat_timeout_s``;
- ``memory``: the worker grows past ``resources.worker_memory_max_bytes`` (test fault
  ``memory``) and the daemon kills it;
- ``raise``: training raises (test fault ``raise``), the worker reports ``failed``;
- ``gpu-lost``: training raises what XGBoost raises when its CUDA device is lost (test fault
  ``gpu-lost``; there is no GPU here, so the error is simulated where it would surface).

Each faulted attempt must end as ``trial.failed`` naming the cause, retried while attempts
are left (``trials.max_attempts``) and failed for good after; the job completes with every
invariant of DESIGN.md and a valid promoted model. ``short``: one run, each fault on a first
attempt. ``full``: that run twice (the faults on other trials the second time) and a run where
each fault strikes every attempt of its trial, so that the trial fails for good.
"""

from __future__ import annotations

import random
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from sentinel_daemon.worker.faults import FAULT_MEMORY_BYTES
from tests.daemonkit import SLOW_SPACE, DaemonProcess, Event, of_type, write_job
from tests.faults import faultkit
from tests.faults.faultkit import MakeDaemon
from tests.faults.record import full, record

pytestmark = pytest.mark.faults

MIB = 1 << 20
#: A normal worker here peaks near 270 MiB resident; the ``memory`` fault adds 400 MiB.
CEILING = 450 * MIB
HEARTBEAT_TIMEOUT_S = 5.0
MODELS = ("xgboost", "lightgbm")

#: kind -> (how it is injected, what the failed attempt's error must say)
KINDS: dict[str, tuple[str, str]] = {
    "sigkill": ("SIGKILL sent to the worker mid-trial", "signal 9 (SIGKILL)"),
    "sigsegv": ("SIGSEGV sent to the worker mid-trial", "signal 11 (SIGSEGV)"),
    "hang": (
        f"worker stops heartbeating and blocks; heartbeat timeout {HEARTBEAT_TIMEOUT_S:.0f} s",
        "no heartbeat",
    ),
    "memory": (
        f"worker grows by {FAULT_MEMORY_BYTES // MIB} MiB past a {CEILING // MIB} MiB ceiling",
        "memory ceiling",
    ),
    "raise": ("training raises an exception", "InjectedFault"),
    "gpu-lost": (
        "training raises XGBoostError cudaErrorUnknown (a GPU lost, simulated: no GPU here)",
        "cudaErrorUnknown",
    ),
}
#: Kinds the test itself delivers (a signal to the worker holding the trial).
SIGNALS = {"sigkill": signal.SIGKILL, "sigsegv": signal.SIGSEGV}


@dataclass(frozen=True)
class Run:
    name: str
    #: trial number -> fault kind
    faults: dict[int, str]
    #: the fault strikes every attempt (else the first only)
    every_attempt: bool
    n_trials: int
    max_attempts: int = 3


FIRST_ATTEMPT = Run(
    "first-attempt",
    {0: "sigkill", 1: "sigsegv", 2: "hang", 3: "memory", 4: "raise", 5: "gpu-lost"},
    every_attempt=False,
    n_trials=4,
)
RUNS: tuple[Run, ...] = (FIRST_ATTEMPT,)
if full():
    RUNS += (
        Run(
            "first-attempt-late-trials",
            {9: "sigkill", 8: "sigsegv", 7: "hang", 6: "memory", 5: "raise", 4: "gpu-lost"},
            every_attempt=False,
            n_trials=5,
        ),
        Run(
            "every-attempt",
            {0: "sigkill", 1: "sigsegv", 2: "hang", 3: "memory", 4: "raise", 5: "gpu-lost"},
            every_attempt=True,
            n_trials=5,
            max_attempts=2,
        ),
    )


def _plan(run: Run) -> dict[str, str]:
    plan = {}
    for trial, kind in run.faults.items():
        fault = "slow" if kind in SIGNALS else kind
        if run.every_attempt:
            plan[str(trial)] = fault
        else:
            plan[f"{trial}@1"] = fault
    return plan


def _faulted_attempts(run: Run) -> list[tuple[int, int, str]]:
    attempts = range(1, run.max_attempts + 1) if run.every_attempt else (1,)
    return [(t, a, kind) for t, kind in sorted(run.faults.items()) for a in attempts]


def _deliver_signals(
    daemon: DaemonProcess, job_id: str, run: Run, rng: random.Random, timeout: float
) -> dict[str, list[str]]:
    """Signal each planned (trial, attempt) of a signal kind once a worker holds it."""
    todo = {f"{job_id}.{t}.{a}": kind for t, a, kind in _faulted_attempts(run) if kind in SIGNALS}
    claimed_at: dict[str, float] = {}
    delay = {cid: rng.uniform(0.3, 1.5) for cid in todo}
    deadline = time.monotonic() + timeout
    while todo and time.monotonic() < deadline:
        events = daemon.events()
        if faultkit.job_end(events, job_id) is not None:
            break
        if not daemon.running():
            pytest.fail("the daemon exited while worker faults were being injected")
        for cid in list(todo):
            holder = daemon.holder_of(cid)
            if holder is None:
                continue
            first = claimed_at.setdefault(cid, time.monotonic())
            if time.monotonic() - first < delay[cid]:
                continue  # let it get into training
            pid = {e["worker"]: e["pid"] for e in of_type(events, "worker.started")}.get(holder)
            if pid is None:
                continue
            faultkit.kill_group(pid, SIGNALS[todo.pop(cid)])
        time.sleep(0.05)
    problems: dict[str, list[str]] = {}
    for cid, kind in todo.items():
        problems.setdefault(kind, []).append(f"{cid} was never claimed, so never signalled")
    return problems


def _judge(events: list[Event], job_id: str, run: Run) -> dict[str, list[str]]:
    """Per kind, what went wrong with each faulted attempt (empty lists: all handled)."""
    found: dict[str, list[str]] = {kind: [] for kind in run.faults.values()}
    for trial, attempt, kind in _faulted_attempts(run):
        expect = KINDS[kind][1]
        failed = of_type(events, "trial.failed", job_id=job_id, trial=trial, attempt=attempt)
        where = f"trial {trial} attempt {attempt} ({kind})"
        if len(failed) != 1:
            found[kind].append(f"{where}: {len(failed)} trial.failed events, expected 1")
            continue
        if expect not in failed[0]["error"]:
            found[kind].append(f"{where}: error {failed[0]['error']!r} lacks {expect!r}")
        retry = attempt < run.max_attempts
        if failed[0]["retry"] is not retry:
            found[kind].append(f"{where}: retry is {failed[0]['retry']}, expected {retry}")
        if retry and not of_type(
            events, "trial.started", job_id=job_id, trial=trial, attempt=attempt + 1
        ):
            found[kind].append(f"{where}: attempt {attempt + 1} never started")
    return found


@pytest.mark.timeout(600)
@pytest.mark.parametrize("run", RUNS, ids=[r.name for r in RUNS])
def test_each_worker_fault_fails_its_attempt_which_is_retried_and_the_job_completes(
    run: Run, daemons: MakeDaemon, workspace: Path
) -> None:
    rng = faultkit.rng(f"worker-faults/{run.name}")
    daemon = daemons(
        workers=2,
        settings={
            **faultkit.FAULT_SETTINGS,
            "SENTINEL_TRIALS__REPORT_EVERY": "1",  # slow trials report every round
            "SENTINEL_TRIALS__MAX_ATTEMPTS": str(run.max_attempts),
            "SENTINEL_WORKERS__HEARTBEAT_TIMEOUT_S": str(HEARTBEAT_TIMEOUT_S),
            "SENTINEL_RESOURCES__WORKER_MEMORY_MAX_BYTES": str(CEILING),
            "SENTINEL_RESOURCES__SAMPLE_EVERY_S": "0.2",
        },
        faults=_plan(run),
    ).start()
    job_file = write_job(
        workspace / "jobs", f"faulty-{run.name}", models=MODELS, n_trials=run.n_trials,
        parallelism=2, space=SLOW_SPACE, seed=rng.randrange(1000),
    )  # fmt: skip
    job_id = daemon.submit(job_file)
    problems: dict[str, list[str]] = {kind: [] for kind in run.faults.values()}
    broken: list[str] = []
    try:
        for kind, late in _deliver_signals(daemon, job_id, run, rng, timeout=240).items():
            problems[kind] += late
        end = daemon.wait_for_event(
            lambda e: e["type"].startswith("job.") and e.get("job_id") == job_id
            and e["type"] != "job.submitted",
            timeout=240, what=f"job {job_id} to end",
        )  # fmt: skip
        events = daemon.events()
        if end["type"] != "job.completed":
            broken.append(f"{job_id} did not complete: {end}")
        for kind, found in _judge(events, job_id, run).items():
            problems[kind] += found
        broken += faultkit.violations(daemon.state_dir)
    except BaseException as exc:
        broken.append(f"the run stopped: {type(exc).__name__}: {exc}"[:500])
        raise
    finally:
        _record(run, problems, broken)
    assert not broken, faultkit.describe(broken)
    bad = {k: v for k, v in problems.items() if v}
    assert not bad, faultkit.describe([p for v in bad.values() for p in v])
    assert daemon.stop() == 0


def _record(run: Run, problems: dict[str, list[str]], broken: list[str]) -> None:
    per_kind: dict[str, int] = {}
    for _, _, kind in _faulted_attempts(run):
        per_kind[kind] = per_kind.get(kind, 0) + 1
    how = (
        f"each fault on every attempt of its trial (max_attempts {run.max_attempts}): "
        "failed for good"
        if run.every_attempt
        else "each fault on a first attempt: retried"
    )
    for i, (kind, cases) in enumerate(per_kind.items()):
        wrong = problems.get(kind, [])
        extra = broken if i == 0 else []  # the run's invariant violations, counted once
        notes = [f"run {run.name} ({how}), {kind}: {p}" for p in wrong + extra]
        if i == 0:
            notes.insert(0, f"run {run.name}: {how}")
        record(
            f"worker: {kind}",
            KINDS[kind][0],
            cases=cases,
            recovered=0 if broken else max(0, cases - len(wrong)),
            violations=len(wrong) + len(extra),
            note="; ".join(notes),
        )
