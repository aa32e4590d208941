"""Benchmark the running daemon: pickup latency, per-trial overhead, trial rate, restart.

Run ``python bench/daemon.py`` (about ten minutes on two cores) or ``--quick`` (tiny
sizes, a smoke test whose figures mean nothing). Work files go to a temporary folder on
the repository's own filesystem (``/tmp`` when it is the same filesystem, else
``.bench-tmp/`` in the repository, or under ``--dir``); it is removed at the end unless
``--keep`` is given. Every daemon is the real one, started as an operator would:
``python -m sentinel_daemon.cli run --state-dir S --workers N`` with the default settings
(JSON logs to a file; ``shutdown.grace_s`` shortened so a stop never waits a minute).
Figures are read from its event log (``STATE/events/*.jsonl``), which the benchmark
follows while it runs. The daemon writes a report for every ended job in a child process
(seconds of CPU each); in the full run the benchmark waits for it before each measured job
so that it does not run during the next one. Each row is measured beside its baseline in
the same run:

1. ``pickup latency``: a job file renamed into ``STATE/inbox/`` (written as ``.x.tmp``
   first, as ``sentinel submit`` does) until its ``job.submitted`` record appears in the
   log, over N distinct files (each job is cancelled at once, through ``STATE/control/``,
   so that none of them trains; a daemon and state directory of their own, so that their
   reports stay out of the later figures), renamed 1 s after the previous one was picked up (a
   lone submission) and 0.2 s after (a script submitting several). Baseline: the least a
   watcher can do, a bare watchdog observer in its own process that appends one line and
   ``fdatasync``s it on the same kind of rename, followed the same way. Renames alternate
   between the two. Target: median < 100 ms, at both gaps. A note gives the same figure
   from the record's own ``ts``.
2. ``orchestration overhead per trial``: on trials that train about one second (40 fixed
   rounds, the rows calibrated once in this process; one worker, parallelism 1), the
   trial's wall time seen by the daemon (``trial.started`` to ``trial.saved``, the
   records' ``ts``) minus the ML work the worker measured (``train_seconds``, fitting, plus
   ``score_seconds``, scoring the validation split: both in the ``meta.json`` beside the
   saved model). Saving the model, posting and every hand-off count as overhead. The
   job's first trial is left out (the worker loads the data for it). Targets: median
   < 20 ms and < 2% of the trial's time (Ray Tune's own benchmark reports ~14% for
   one-second trials). A note splits it into the
   daemon's side (wall time minus the worker's ``duration_s``) and the worker's.
3. ``trials/s on near-empty trials`` (XGBoost, ``n_estimators`` 1, depth 1, 2,000 rows):
   a job of N trials on the daemon with one worker and parallelism 1, from its first
   ``trial.started`` to the search stage's ``stage.completed``; against Optuna's own
   ``study.optimize`` in one process with SQLite storage (``RDBStorage``) and with its
   journal file storage (``JournalStorage`` + ``JournalFileBackend``), running the same
   training function (``ml.train_trial``, same prepared data, same sampler and seed, as
   many training threads as the daemon gives its one worker). Sampler random and TPE,
   in alternating rounds (the daemon stays up, idle, while Optuna runs; a note gives the
   CPU it used meanwhile); medians. Target: Sentinel >= Optuna with SQLite. Sentinel also
   fsyncs its log, its queue hand-offs and every model it saves; Optuna saves no model.
4. ``restart with 10,000 recorded trials``: a state directory whose log holds a running
   job (XGBoost and LightGBM, 5,000 ended trials each, budget left, so it is still
   searching), written with :class:`Store` and closed (so a snapshot exists); from the
   ``sentinel run`` process's start to the first new ``trial.started`` in the log, ready
   to dispatch. Baseline: a fresh process that loads the same 10,000 trials from an Optuna
   journal file (the same two studies) and asks for the next trial. Target: < 1 s. The
   issue's anchor: loading a 28,000-trial Optuna journal took ~23 s. A note splits the
   time at the ``daemon.started`` record and gives the import time of the daemon's
   modules in a fresh interpreter.

``ratio`` is Sentinel over the baseline of its row; ``target`` says which way it must go.
Figures are reported, never asserted: the exit code is 0 unless the benchmark crashes.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import platform
import random
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import lightgbm
import optuna
import orjson
import psutil
import xgboost
from benchkit import (
    Report,
    bench_arguments,
    filesystem_of,
    print_notes_and_summary,
    progress,
    rate,
    verdict,
    work_root,
)
from benchkit import print_table as print_rows

from sentinel_daemon import __version__, ml
from sentinel_daemon.core.events import (
    DaemonStarted,
    DaemonStopped,
    Event,
    JobSubmitted,
    ModelKind,
    Stage,
    StageCompleted,
    StageStarted,
    TrialSaved,
    TrialStarted,
)
from sentinel_daemon.core.ids import JobId, TrialNumber
from sentinel_daemon.core.space import resolve_space
from sentinel_daemon.daemon.stages import PrepareRequest, run_prepare
from sentinel_daemon.fsutil import atomic_write_bytes
from sentinel_daemon.jobfile import parse_job_file
from sentinel_daemon.layout import EVENTS_DIR, INBOX_DIR
from sentinel_daemon.log.records import format_ts
from sentinel_daemon.log.store import Store
from sentinel_daemon.ml import synth
from sentinel_daemon.ml.space import distributions, suggest
from sentinel_daemon.queue.messages import TrialData
from sentinel_daemon.tools.cancel import cancel_request_path

REPO = Path(__file__).resolve().parent.parent
MAX_PICKUP_S = 0.100
#: Renames a second apart (a lone submission) and 0.2 s apart (a script submitting several).
PICKUP_GAPS_S = (1.0, 0.2)
MAX_OVERHEAD_S = 0.020
#: Rounds of the ~1 s trials; under the early-stopping patience (50) of ml.train_trial.
OVERHEAD_ROUNDS = 40
MAX_OVERHEAD_SHARE = 0.02
RAY_TUNE_SHARE = "~14%"
MIN_RATE_RATIO = 1.0
MAX_RESTART_S = 1.0
ANCHOR_RESTART = "Optuna journal, 28,000 trials: ~23 s (issue)"
#: A job-report child absent this long: the daemon's report queue is empty.
QUIET_S = 1.0
#: The daemon's own default is a minute; the benchmark stops it between phases.
GRACE_S = "10"
NEAR_EMPTY = {"n_estimators": [1, 1], "max_depth": [1, 1]}
SEED = 42
ENDED = ("trial.saved", "trial.pruned", "trial.failed")
JOB_END = ("job.completed", "job.failed", "job.cancelled")


@dataclass(frozen=True)
class Sizes:
    pickups: int  # renames into the inbox per gap, and as many for the bare watcher
    tiny_rows: int  # data for near-empty trials and the pickup / restart jobs
    calibrate: bool  # scale the ~1 s trials' data to this machine (else tiny_rows)
    overhead_trials: int  # measured trials (one more runs: the first is left out)
    rate_trials: int  # per job / per Optuna study
    rate_rounds: int  # alternating rounds of Sentinel and Optuna runs
    restart_trials: int  # ended trials in the restarted log (half per model)
    restart_repeats: int
    cpu_window_s: float  # how long to watch the daemon's CPU after the restart
    timeout_s: float  # the longest wait for any one thing the daemon should do
    quiesce: bool  # wait for the daemon's job reports before each measured job


FULL = Sizes(
    pickups=20,
    tiny_rows=2_000,
    calibrate=True,
    overhead_trials=15,
    rate_trials=100,
    rate_rounds=3,
    restart_trials=10_000,
    restart_repeats=3,
    cpu_window_s=3.0,
    timeout_s=300.0,
    quiesce=True,
)
QUICK = Sizes(
    pickups=2,
    tiny_rows=2_000,
    calibrate=False,
    overhead_trials=2,
    rate_trials=5,
    rate_rounds=1,
    restart_trials=200,
    restart_repeats=1,
    cpu_window_s=0.5,
    timeout_s=60.0,
    quiesce=False,
)


@dataclass(frozen=True)
class Row:
    """One line of the table; ``passed`` is None for a figure that counts towards nothing."""

    what: str
    measured: str
    baseline: str
    ratio: str
    target: str
    passed: bool | None

    @property
    def result(self) -> str:
        return verdict(self.passed)


class BenchError(RuntimeError):
    """The daemon did not do what the benchmark waits for."""


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.1f} ms"


def p90(values: list[float]) -> float:
    return (
        statistics.quantiles(values, n=10, method="inclusive")[-1] if len(values) > 1 else values[0]
    )


def ts_epoch(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


# ---- following files -------------------------------------------------------------------


class Follower:
    """New complete lines of the files matching ``pattern`` in ``folder``, in name order.

    Each line is kept with the ``perf_counter`` time at which this process first read it:
    what "the record appeared" means here (it is written before its fsync returns, so
    this can be a fraction of a millisecond early).
    """

    def __init__(self, folder: Path, pattern: str, parse: Callable[[bytes], Any]) -> None:
        self.folder = folder
        self.pattern = pattern
        self.parse = parse
        self.items: list[tuple[float, Any]] = []
        self._files: dict[str, Any] = {}
        self._partial: dict[str, bytes] = {}

    def poll(self) -> int:
        """Read what was appended since the last call; how many new lines."""
        before = len(self.items)
        try:
            names = sorted(p.name for p in self.folder.glob(self.pattern))
        except FileNotFoundError:
            return 0
        for name in names:
            fh = self._files.get(name)
            if fh is None:
                fh = self._files[name] = open(self.folder / name, "rb")  # noqa: SIM115
            chunk = fh.read()
            if not chunk:
                continue
            seen = time.perf_counter()
            data = self._partial.pop(name, b"") + chunk
            *lines, rest = data.split(b"\n")
            if rest:
                self._partial[name] = rest
            self.items.extend((seen, self.parse(line)) for line in lines if line)
        return len(self.items) - before

    def close(self) -> None:
        for fh in self._files.values():
            fh.close()
        self._files.clear()

    def wait_for(
        self,
        match: Callable[[Any], bool],
        timeout: float,
        what: str,
        start: int = 0,
        alive: Callable[[], None] | None = None,
        pause: float = 0.0005,
    ) -> tuple[float, Any, int]:
        """The first item from index ``start`` that ``match``es: ``(seen, item, index)``."""
        deadline = time.monotonic() + timeout
        i = start
        while True:
            while i < len(self.items):
                seen, item = self.items[i]
                if match(item):
                    return seen, item, i
                i += 1
            if time.monotonic() > deadline:
                raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}")
            if not self.poll():
                if alive is not None:
                    alive()
                time.sleep(pause)


def event_follower(state: Path) -> Follower:
    return Follower(state / EVENTS_DIR, "*.jsonl", orjson.loads)


# ---- processes -----------------------------------------------------------------------


def daemon_env(settings: dict[str, str] | None = None) -> dict[str, str]:
    """The environment without any operator's SENTINEL_* settings, plus the bench's own
    (and ``settings``, SENTINEL_* variables of the caller's)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENTINEL_")}
    env["SENTINEL_LOGGING__FORMAT"] = "json"
    env["SENTINEL_SHUTDOWN__GRACE_S"] = GRACE_S
    env.update(settings or {})
    return env


def kill_group(proc: psutil.Process) -> None:
    """SIGKILL ``proc``'s process group (never the benchmark's own), or ``proc`` alone."""
    with contextlib.suppress(psutil.Error, ProcessLookupError, PermissionError):
        if not proc.is_running():  # also false when the pid was reused by another process
            return
        pgid = os.getpgid(proc.pid)
        if pgid != os.getpgid(0):
            os.killpg(pgid, signal.SIGKILL)
        else:
            proc.kill()


class DaemonProcess:
    """One ``sentinel run`` over ``state``; :meth:`stop` leaves nothing of it running."""

    def __init__(
        self,
        state: Path,
        workers: int,
        cwd: Path,
        log_path: Path,
        settings: dict[str, str] | None = None,
    ) -> None:
        self.state = state
        self.workers = workers
        self.cwd = cwd
        self.log_path = log_path
        self.settings = settings
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    def argv(self) -> list[str]:
        """The daemon's command line."""
        run = [sys.executable, "-m", "sentinel_daemon.cli", "run", "--state-dir", str(self.state)]
        return [*run, "--workers", str(self.workers)]

    def start(self) -> float:
        """Start the daemon; returns the ``perf_counter`` time just before the fork."""
        with open(self.log_path, "ab") as err:
            self.started_at = time.perf_counter()
            self.proc = subprocess.Popen(
                self.argv(),
                cwd=self.cwd,
                env=daemon_env(self.settings),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                start_new_session=True,
            )
        return self.started_at

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise BenchError(
                f"the daemon exited with {self.proc.returncode}; its log ends:\n{self.log_tail()}"
            )

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def _processes(self) -> list[psutil.Process]:
        """The daemon's children (workers, stage processes), and every worker the log names."""
        found: dict[int, psutil.Process] = {}
        if self.proc is not None:
            with contextlib.suppress(psutil.Error):
                for child in psutil.Process(self.proc.pid).children(recursive=True):
                    found[child.pid] = child
        follower = event_follower(self.state)
        with contextlib.suppress(OSError, ValueError):
            follower.poll()
        follower.close()
        for _, rec in follower.items:
            if rec.get("type") == "worker.started" and rec["pid"] not in found:
                with contextlib.suppress(psutil.Error):
                    proc = psutil.Process(rec["pid"])
                    cmd = " ".join(proc.cmdline())
                    if "sentinel_daemon" in cmd and str(self.state) in cmd:
                        found[proc.pid] = proc
        return list(found.values())

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, wait, then SIGKILL the process groups of the daemon and its children."""
        proc = self.proc
        if proc is None:
            return None
        children: list[psutil.Process] = []
        with contextlib.suppress(Exception):  # best effort: stopping must go on regardless
            children = self._processes()
        self.proc = None
        code: int | None = proc.poll()
        if code is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(timeout)
            except subprocess.TimeoutExpired:
                progress(f"the daemon did not stop within {timeout:.0f} s: killed")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                code = proc.wait(10)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # anything left in its group
        for child in children:
            kill_group(child)
        psutil.wait_procs(children, timeout=10)
        return code


class Processes:
    """Every process the benchmark starts, so that ``finally`` can stop them all."""

    def __init__(self) -> None:
        self.daemons: list[DaemonProcess] = []
        self.others: list[subprocess.Popen[bytes]] = []

    def daemon(
        self,
        state: Path,
        workers: int,
        cwd: Path,
        log_path: Path,
        settings: dict[str, str] | None = None,
    ) -> DaemonProcess:
        d = DaemonProcess(state, workers, cwd, log_path, settings)
        self.daemons.append(d)
        return d

    def stop_all(self) -> None:
        for d in self.daemons:
            with contextlib.suppress(Exception):
                d.stop()
        for p in self.others:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(p.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(10)


@contextlib.contextmanager
def running(procs: Processes, daemon: DaemonProcess, what: str) -> Iterator[DaemonProcess]:
    daemon.start()
    try:
        yield daemon
    finally:
        code = daemon.stop()
        if code not in (0, None):
            progress(f"{what}: the daemon exited with {code}; its log ends:\n{daemon.log_tail()}")


def report_children(daemon: DaemonProcess) -> list[psutil.Process]:
    """The daemon's ``sentinel report`` child processes (it writes one per ended job)."""
    if daemon.proc is None:
        return []
    found = []
    with contextlib.suppress(psutil.Error):
        for child in psutil.Process(daemon.proc.pid).children():
            with contextlib.suppress(psutil.Error):
                if "report" in child.cmdline()[3:5]:  # python -m sentinel_daemon.cli report
                    found.append(child)
    return found


def count_reports(daemon: DaemonProcess) -> int:
    """Job reports the daemon finished (written or failed), from its log."""
    try:
        lines = daemon.log_path.read_bytes().splitlines()
    except OSError:
        return 0
    return sum(1 for line in lines if b'"daemon.report_' in line)


# ---- jobs ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Data:
    transactions: Path
    identity: Path


def job_doc(
    name: str,
    data: Data,
    *,
    models: tuple[str, ...] = ("xgboost",),
    n_trials: int,
    parallelism: int = 1,
    sampler: str = "random",
    pruner: str = "none",
    space: dict[str, dict[str, list[float]]] | None = None,
) -> dict[str, Any]:
    search: dict[str, Any] = {
        "n_trials": n_trials,
        "parallelism": parallelism,
        "sampler": sampler,
        "pruner": pruner,
        "seed": SEED,
    }
    if space:
        search["space"] = space
    return {
        "name": name,
        "data": {"transactions": str(data.transactions), "identity": str(data.identity)},
        "models": list(models),
        "search": search,
        "validation": {"test_fraction": 0.2, "valid_fraction": 0.2},
        # Figures, not models: the benchmark's jobs promote whatever they find.
        "quality_gate": {"min_test_auc": 0.0, "allow_regression": True},
    }


def job_bytes(doc: dict[str, Any]) -> bytes:
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n"


def job_id_of(name: str, body: bytes) -> str:
    return f"{name}-{hashlib.sha256(body).hexdigest()[:8]}"


def stage_tmp(inbox: Path, name: str, body: bytes) -> tuple[Path, Path]:
    """Write the job as ``.name.tmp`` in the inbox (ignored there); returns (tmp, final)."""
    tmp = inbox / f".{name}.tmp"
    with open(tmp, "wb") as fh:
        fh.write(body)
        fh.flush()
        os.fsync(fh.fileno())
    return tmp, inbox / f"{name}.json"


class Session:
    """A running daemon and the follower of its log."""

    def __init__(self, daemon: DaemonProcess, sizes: Sizes) -> None:
        self.daemon = daemon
        self.state = daemon.state
        self.sizes = sizes
        self.log = event_follower(daemon.state)
        self.quiesced_s = 0.0

    def wait(self, match: Callable[[dict[str, Any]], bool], what: str, start: int = 0,
             timeout: float | None = None,
             pause: float = 0.0005) -> tuple[float, dict[str, Any], int]:  # fmt: skip
        return self.log.wait_for(
            match, timeout or self.sizes.timeout_s, what, start, alive=self.daemon.check_alive,
            pause=pause,
        )  # fmt: skip

    def quiesce(self) -> None:
        """Wait until the daemon's job-report child (one per ended job) has finished.

        The report is written after the job's last record, in a child process that reloads
        the data and draws charts; it would otherwise run during the next measurement.
        """
        if not self.sizes.quiesce:
            return
        t0 = time.perf_counter()
        deadline, quiet_since = t0 + self.sizes.timeout_s, None
        while time.perf_counter() < deadline:
            self.daemon.check_alive()
            if report_children(self.daemon):
                quiet_since = None
            elif quiet_since is None:
                quiet_since = time.perf_counter()
            elif time.perf_counter() - quiet_since >= QUIET_S:
                break
            time.sleep(0.05)
        else:
            progress("a job report was still being written; measuring anyway")
        self.quiesced_s += time.perf_counter() - t0

    def wait_ready(self) -> None:
        """``daemon.started`` and every worker's ``worker.started`` of this daemon's run."""
        pid = self.daemon.proc.pid if self.daemon.proc else -1
        _, _, i = self.wait(
            lambda r: r["type"] == "daemon.started" and r["pid"] == pid, "daemon.started"
        )
        for _ in range(self.daemon.workers):
            _, _, i = self.wait(lambda r: r["type"] == "worker.started", "worker.started", i + 1)

    def submit(self, doc: dict[str, Any]) -> tuple[str, float, float]:
        """Rename the job into the inbox; returns (job id, perf time, wall time) of the rename."""
        body = job_bytes(doc)
        tmp, final = stage_tmp(self.state / INBOX_DIR, doc["name"], body)
        wall = time.time()
        t0 = time.perf_counter()
        os.rename(tmp, final)
        return job_id_of(doc["name"], body), t0, wall

    def run_job(
        self, doc: dict[str, Any], pause: float = 0.0005
    ) -> tuple[str, list[dict[str, Any]]]:
        """Submit, wait for the job to end; its records (the job must complete).

        ``pause``: how long to sleep between looks at the log (figures from the records'
        own ``ts`` need no quick look, and a slower one takes less CPU from the trials).
        """
        start = len(self.log.items)
        job_id, _, _ = self.submit(doc)
        self.wait(lambda r: r.get("job_id") == job_id and r["type"] == "job.submitted",
                  f"job.submitted of {job_id}", start, pause=pause)  # fmt: skip
        _, end, _ = self.wait(lambda r: r.get("job_id") == job_id and r["type"] in JOB_END,
                              f"the end of job {job_id}", start, pause=pause)  # fmt: skip
        records = [r for _, r in self.log.items[start:] if r.get("job_id") == job_id]
        if end["type"] != "job.completed":
            raise BenchError(f"job {job_id} ended {end['type']}: {end.get('reason')}")
        return job_id, records

    def cancel(self, job_id: str) -> None:
        """What ``sentinel cancel`` does: the request file of the operator module's contract."""
        body = {"job_id": job_id, "requested_at": format_ts(datetime.now(UTC)), "pid": os.getpid()}
        atomic_write_bytes(cancel_request_path(self.state, job_id), orjson.dumps(body) + b"\n")


# ---- 1. pickup latency ----------------------------------------------------------------

BARE_WATCHER = r"""
import os, sys
from watchdog.events import FileSystemEventHandler
from watchdog.observers import Observer
folder, out = sys.argv[1], sys.argv[2]
fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
class Handler(FileSystemEventHandler):
    def on_moved(self, event):
        name = os.path.basename(event.dest_path)
        if name.endswith(".json") and not name.startswith("."):
            os.write(fd, name.encode() + b"\n")
            os.fdatasync(fd)
observer = Observer()
observer.schedule(Handler(), folder)
observer.start()
print("ready", flush=True)
sys.stdin.read()
observer.stop()
observer.join()
"""


def bench_pickup(
    session: Session, procs: Processes, root: Path, tiny: Data, sizes: Sizes, report: Report
) -> None:
    bare_dir = root / "bare-inbox"
    bare_dir.mkdir()
    bare_out = root / "bare-watcher.log"
    bare_out.touch()
    watcher = subprocess.Popen(
        [sys.executable, "-c", BARE_WATCHER, str(bare_dir), str(bare_out)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    procs.others.append(watcher)
    assert watcher.stdout is not None and watcher.stdin is not None
    if watcher.stdout.readline().strip() != b"ready":
        raise BenchError("the bare watcher did not start")
    bare_log = Follower(root, bare_out.name, bytes.decode)
    # gap -> (Sentinel by following the log, Sentinel by the record's ts, bare watcher)
    found: dict[float, tuple[list[float], list[float], list[float]]] = {}
    n = 0
    try:
        for gap in PICKUP_GAPS_S:
            sentinel, sentinel_ts, bare = found[gap] = ([], [], [])
            last = time.perf_counter() - gap
            for _ in range(sizes.pickups):
                # A distinct job file each time (the name is part of the bytes), renamed
                # ``gap`` seconds after the previous one was picked up.
                doc = job_doc(f"bench-pickup-{n}", tiny, n_trials=1,
                              space={"xgboost": NEAR_EMPTY})  # fmt: skip
                n += 1
                start = len(session.log.items)
                time.sleep(max(0.0, last + gap - time.perf_counter()))
                job_id, t0, wall = session.submit(doc)
                seen, rec, _ = session.wait(
                    lambda r, j=job_id: r["type"] == "job.submitted" and r["job_id"] == j,
                    f"job.submitted of {job_id}",
                    start,
                )
                last = seen
                sentinel.append(seen - t0)
                sentinel_ts.append(ts_epoch(rec["ts"]) - wall)
                session.cancel(job_id)  # so that it never trains
                session.wait(lambda r, j=job_id: r["type"] in JOB_END and r.get("job_id") == j,
                             f"job.cancelled of {job_id}", start)  # fmt: skip
                # The bare watcher, on a file of the same size.
                tmp, final = stage_tmp(bare_dir, f"bare-{n}", job_bytes(doc))
                start = len(bare_log.items)
                t0 = time.perf_counter()
                os.rename(tmp, final)
                seen, _, _ = bare_log.wait_for(
                    lambda line, name=final.name: line == name, 30.0, "the bare watcher", start
                )
                bare.append(seen - t0)
    finally:
        watcher.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            watcher.wait(10)
        bare_log.close()
    for gap, (sentinel, sentinel_ts, bare) in found.items():
        med, base = statistics.median(sentinel), statistics.median(bare)
        when = f"{gap:g} s after the previous pickup"
        report.rows += [
            Row(
                f"pickup: rename into inbox -> job.submitted, {when}, median of {len(sentinel)}",
                ms(med),
                f"bare watchdog+fsync {ms(base)}",
                f"{med / base:.1f}x",
                f"median < {ms(MAX_PICKUP_S)}",
                med < MAX_PICKUP_S,
            ),
            Row(
                f"pickup, {when}, p90",
                ms(p90(sentinel)),
                f"bare watchdog+fsync {ms(p90(bare))}",
                f"{p90(sentinel) / p90(bare):.1f}x",
                "reference",
                None,
            ),
        ]
        report.notes.append(
            f"pickup {when}: by the record's own ts (daemon clock) minus a wall stamp before "
            f"the rename: median {ms(statistics.median(sentinel_ts))}, p90 "
            f"{ms(p90(sentinel_ts))}; range by following the log {ms(min(sentinel))}.."
            f"{ms(max(sentinel))}"
        )


# ---- 2. overhead per trial ------------------------------------------------------------


def overhead_params() -> dict[str, float]:
    """Fixed training work: every parameter that changes it is pinned. 40 rounds is under
    the early-stopping patience (50), so every trial trains exactly the same rounds."""
    return {
        "n_estimators": OVERHEAD_ROUNDS,
        "max_depth": 6,
        "learning_rate": 0.05,
        "subsample": 0.8,
        "colsample_bytree": 0.5,
        "gamma": 0.0,
        "min_child_weight": 1.0,
    }


def overhead_space() -> dict[str, dict[str, list[float]]]:
    return {"xgboost": {k: [v, v] for k, v in overhead_params().items()}}


def make_data(folder: Path, rows: int, seed: int) -> Data:
    synth.generate(rows, folder, seed=seed)
    return Data(folder / "train_transaction.csv", folder / "train_identity.csv")


def prepare(data: Data, cache: Path) -> ml.Prepared:
    return ml.prepare(data.transactions, data.identity, cache,
                      test_fraction=0.2, valid_fraction=0.2)  # fmt: skip


def calibrate(
    folder: Path, cache: Path, threads: int, target_s: float, report: Report
) -> tuple[Data, int]:
    """Data on which one trial of :func:`overhead_params` trains about ``target_s`` here.

    Rows are scaled from a first guess by the time measured (up to three tries); also
    measures, in this process, what a worker does around the training (scoring the
    validation split and computing metrics, saving the model), for the notes.
    """
    rows = 20_000
    for attempt in range(3):
        shutil.rmtree(folder, ignore_errors=True)
        data = make_data(folder, rows, seed=2)
        prepared = prepare(data, cache)
        times, wholes = [], []
        for _ in range(3):
            t0 = time.perf_counter()
            result = ml.train_trial("xgboost", overhead_params(), prepared, n_threads=threads)
            wholes.append(time.perf_counter() - t0)
            times.append(result.train_seconds)
        train_s = statistics.median(times)
        if 0.8 * target_s <= train_s <= 1.25 * target_s or attempt == 2:
            break
        rows = max(2_000, min(400_000, round(rows * target_s / train_s)))
    saves = []
    for i in range(3):
        t0 = time.perf_counter()
        ml.save_model(result, "xgboost", folder / f"saved-{i}")
        saves.append(time.perf_counter() - t0)
    report.notes.append(
        f"calibration: {rows:,} rows, {OVERHEAD_ROUNDS} rounds of depth 6 trained "
        f"{train_s:.3f} s here with {threads} threads; in this process, around the training: "
        f"validation scoring + metrics {ms(statistics.median(wholes) - train_s)}, "
        f"ml.save_model {ms(statistics.median(saves))}"
    )
    return data, rows


@dataclass(frozen=True)
class TrialTime:
    """One saved trial of a job, timed from the log and from its model's ``meta.json``."""

    trial: int
    worker: str  # the worker id in the model's folder name (``<attempt>-<worker_id>``)
    started: float  # epoch of trial.started (the last attempt's), the record's ts
    wall: float  # trial.started -> trial.saved, the records' ts
    train_s: float  # train_seconds: fitting
    score_s: float  # score_seconds: scoring the validation split
    duration_s: float  # the worker's own measure of the trial (trial.saved's duration_s)

    @property
    def ml_s(self) -> float:
        return self.train_s + self.score_s

    @property
    def overhead(self) -> float:
        """Everything but the ML work: queue hand-offs, saving, posting, the daemon's side."""
        return self.wall - self.ml_s


def trial_times(state: Path, records: list[dict[str, Any]]) -> list[TrialTime]:
    """Every ``trial.saved`` of ``records`` (one job's), in log order."""
    started = {r["trial"]: ts_epoch(r["ts"]) for r in records if r["type"] == "trial.started"}
    times = []
    for r in records:
        if r["type"] != "trial.saved":
            continue
        meta = orjson.loads(meta_of(state, r["artifact"]).read_bytes())
        times.append(
            TrialTime(
                trial=r["trial"],
                worker=Path(r["artifact"]).parent.name.partition("-")[2],
                started=started[r["trial"]],
                wall=ts_epoch(r["ts"]) - started[r["trial"]],
                train_s=float(meta["train_seconds"]),
                score_s=float(meta.get("score_seconds", 0.0)),
                duration_s=float(r["duration_s"]),
            )
        )
    return times


def search_seconds(records: list[dict[str, Any]]) -> float:
    """One job's first ``trial.started`` to its search stage's ``stage.completed`` (ts)."""
    first = min(ts_epoch(r["ts"]) for r in records if r["type"] == "trial.started")
    done = next(
        ts_epoch(r["ts"])
        for r in records
        if r["type"] == "stage.completed" and r["stage"] == "search"
    )
    return done - first


def bench_overhead(
    session: Session, mid: Data, data_rows: int, sizes: Sizes, report: Report
) -> None:
    doc = job_doc("bench-overhead", mid, n_trials=sizes.overhead_trials + 1, space=overhead_space())
    _, records = session.run_job(doc)
    rows = [
        (t.wall, t.ml_s, t.duration_s) for t in trial_times(session.state, records) if t.trial != 0
    ]
    if not rows:
        raise BenchError("the overhead job saved no trial after its first")
    overhead = [w - t for w, t, _ in rows]
    share = [(w - t) / w for w, t, _ in rows]
    daemon_side = [w - d for w, _, d in rows]
    worker_side = [d - t for _, t, d in rows]
    walls = [w for w, _, _ in rows]
    trains = [t for _, t, _ in rows]
    med, med_share = statistics.median(overhead), statistics.median(share)
    report.rows += [
        Row(
            f"overhead per ~1 s trial, 1 worker, median of {len(rows)}",
            ms(med),
            f"train+score {statistics.median(trains):.3f} s",
            f"{med / statistics.median(trains):.3f}x",
            f"median < {ms(MAX_OVERHEAD_S)}",
            med < MAX_OVERHEAD_S,
        ),
        Row(
            "overhead as share of the trial's wall time",
            f"{100 * med_share:.2f}%",
            f"Ray Tune {RAY_TUNE_SHARE}",
            f"{med_share / 0.14:.2f}x",
            f"median < {100 * MAX_OVERHEAD_SHARE:.0f}%",
            med_share < MAX_OVERHEAD_SHARE,
        ),
    ]
    report.notes.append(
        f"overhead: {OVERHEAD_ROUNDS} rounds on {data_rows:,} rows; trial wall "
        f"time median {statistics.median(walls):.3f} s; overhead range "
        f"{ms(min(overhead))}..{ms(max(overhead))}; split: daemon side (wall - the worker's "
        f"duration_s: queue put, claim poll, result pick-up, fsyncs) median "
        f"{ms(statistics.median(daemon_side))}, worker side (duration_s - train and score "
        f"seconds: saving the model, posting, the data check) median "
        f"{ms(statistics.median(worker_side))}"
    )


# ---- 3. trial rate --------------------------------------------------------------------


def cpu_seconds(procs: list[psutil.Process]) -> float:
    total = 0.0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            t = proc.cpu_times()
            total += t.user + t.system
    return total


def daemon_and_workers(daemon: DaemonProcess) -> tuple[psutil.Process, list[psutil.Process]]:
    assert daemon.proc is not None
    main = psutil.Process(daemon.proc.pid)
    workers = []
    for child in main.children():
        # A stage process that has just exited is a zombie until the daemon reaps it, and
        # psutil refuses its command line: skip any child that is gone or going.
        with contextlib.suppress(psutil.Error):
            if "sentinel_daemon.worker" in " ".join(child.cmdline()):
                workers.append(child)
    return main, workers


@dataclass(frozen=True)
class SentinelRun:
    rate: float  # trials/s over the search window
    daemon_cpu: float  # the daemon's CPU seconds per trial (the whole job)
    daemon_share: float  # the daemon's CPU over the job's wall time, in cores
    worker_cpu: float  # the worker's CPU seconds per trial, training included
    train_s: list[float]  # train_seconds of each trial, from meta.json


def sentinel_rate(session: Session, tiny: Data, sampler: str, n: int, tag: str) -> SentinelRun:
    doc = job_doc(f"bench-rate-{sampler}-{tag}", tiny, n_trials=n, sampler=sampler,
                  space={"xgboost": NEAR_EMPTY})  # fmt: skip
    main, workers = daemon_and_workers(session.daemon)
    cpu0, wcpu0, t0 = cpu_seconds([main]), cpu_seconds(workers), time.perf_counter()
    job_id, records = session.run_job(doc)
    elapsed = time.perf_counter() - t0
    cpu, wcpu = cpu_seconds([main]) - cpu0, cpu_seconds(workers) - wcpu0
    saved = trial_times(session.state, records)
    if len(saved) != n:
        raise BenchError(f"job {job_id}: {len(saved)} of {n} trials saved")
    train_s = [t.train_s for t in saved]
    return SentinelRun(n / search_seconds(records), cpu / n, cpu / elapsed, wcpu / n, train_s)


def meta_of(state: Path, artifact: str) -> Path:
    """The ``meta.json`` beside a saved model (it holds the worker's ``train_seconds``)."""
    return (state / artifact).parent / ml.artifacts.META_FILE


def optuna_rate(
    storage_kind: str,
    sampler: str,
    n: int,
    prepared: ml.Prepared,
    threads: int,
    folder: Path,
    train_s: list[float],
) -> float:
    """Optuna's ``study.optimize`` over the same training function, one process."""
    from optuna.storages import JournalStorage, RDBStorage
    from optuna.storages.journal import JournalFileBackend

    folder.mkdir(parents=True)
    storage: optuna.storages.BaseStorage
    if storage_kind == "sqlite":
        storage = RDBStorage(f"sqlite:///{folder / 'optuna.db'}")
    else:
        storage = JournalStorage(JournalFileBackend(str(folder / "optuna.log")))
    samp = (
        optuna.samplers.RandomSampler(seed=SEED)
        if sampler == "random"
        else optuna.samplers.TPESampler(seed=SEED)
    )
    study = optuna.create_study(storage=storage, direction="maximize", sampler=samp)
    space = resolve_space("xgboost", NEAR_EMPTY)

    def objective(trial: optuna.Trial) -> float:
        params = suggest(trial, "xgboost", space)
        result = ml.train_trial("xgboost", params, prepared, n_threads=threads)
        train_s.append(result.train_seconds)
        return result.metrics["roc_auc"]

    t0 = time.perf_counter()
    study.optimize(objective, n_trials=n)
    elapsed = time.perf_counter() - t0
    if isinstance(storage, RDBStorage):
        storage.engine.dispose()
    return n / elapsed


def rate_rows(rates: dict[str, float], sampler: str) -> list[Row]:
    ours, sqlite, journal = rates["sentinel"], rates["sqlite"], rates["journal"]
    return [
        Row(
            f"trials/s near-empty, {sampler}, 1 worker vs Optuna+SQLite",
            rate(ours),
            f"Optuna+SQLite {rate(sqlite)}",
            f"{ours / sqlite:.2f}x",
            f">= {MIN_RATE_RATIO:.2f}x Optuna+SQLite",
            ours / sqlite >= MIN_RATE_RATIO,
        ),
        Row(
            f"trials/s near-empty, {sampler}, 1 worker vs Optuna+journal",
            rate(ours),
            f"Optuna+journal {rate(journal)}",
            f"{ours / journal:.2f}x",
            "reference",
            None,
        ),
    ]


# ---- 4. restart -----------------------------------------------------------------------

OPTUNA_LOAD = r"""
import json, sys, warnings
import optuna
from optuna.distributions import json_to_distribution
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
optuna.logging.set_verbosity(optuna.logging.WARNING)
warnings.simplefilter("ignore")
path, spec = sys.argv[1], json.loads(sys.argv[2])
storage = JournalStorage(JournalFileBackend(path))
studies = [
    optuna.load_study(study_name=name, storage=storage,
                      sampler=optuna.samplers.TPESampler(seed=i + spec["seed"]))
    for i, name in enumerate(spec["studies"])
]
loaded = sum(len(s.get_trials(deepcopy=False)) for s in studies)
dists = {k: json_to_distribution(v) for k, v in spec["distributions"].items()}
studies[0].ask(dists)
print("ready", loaded, flush=True)
"""

RESTART_MODELS = ("xgboost", "lightgbm")
RESTART_SPACE = {"xgboost": NEAR_EMPTY, "lightgbm": {"n_estimators": [1, 1], "num_leaves": [2, 2]}}


def build_restart_state(root: Path, tiny: Data, n_trials: int) -> tuple[Path, Path, int, dict]:
    """A state dir with one running job of ``n_trials`` ended trials, and the same trials
    as an Optuna journal; returns (state, journal, last seq, spec for the loader)."""
    state = root / "restart-state"
    data_dir = state / "data"
    shutil.copytree(tiny.transactions.parent, data_dir)
    data = Data(data_dir / tiny.transactions.name, data_dir / tiny.identity.name)
    per_model = n_trials // len(RESTART_MODELS)
    doc = job_doc(
        "bench-restart",
        data,
        models=RESTART_MODELS,
        n_trials=2 * per_model,  # budget left: the job is still searching
        sampler="tpe",
        pruner="median",
        space=RESTART_SPACE,
    )
    job_file = root / "bench-restart.json"
    job_file.write_bytes(job_bytes(doc))
    parsed = parse_job_file(job_file, data_roots=[data_dir.resolve()], base_dir=state)
    job_id = JobId(parsed.job_id)
    prep = run_prepare(
        PrepareRequest(
            data=TrialData(
                transactions=data.transactions,
                identity=data.identity,
                cache_dir=state / "cache",
                test_fraction=0.2,
                valid_fraction=0.2,
            )
        )
    )
    prepared = ml.prepare(data.transactions, data.identity, state / "cache",
                          test_fraction=0.2, valid_fraction=0.2)  # fmt: skip
    # One real model per kind; every trial.saved names it (only ingest and validate read it).
    artifacts: dict[str, tuple[str, str, dict[str, float]]] = {}
    spaces = {m: resolve_space(m, RESTART_SPACE[m]) for m in RESTART_MODELS}
    for i, model in enumerate(RESTART_MODELS):
        params = {k: s.low for k, s in spaces[model].items() if s.kind != "choice"}
        params = {k: int(v) if spaces[model][k].kind == "int" else v for k, v in params.items()}
        result = ml.train_trial(model, params, prepared, n_threads=1)
        saved = ml.save_model(result, model, state / "jobs" / job_id / "trials" / str(i) / "1-w0")
        artifacts[model] = (
            saved.path.relative_to(state).as_posix(),
            saved.sha256,
            dict(result.metrics),
        )
    # The trials: params drawn from the job's own spaces, the same for the log and Optuna.
    rng = random.Random(SEED)
    studies = {
        m: optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(SEED))
        for m in RESTART_MODELS
    }
    events: list[Event] = [
        DaemonStarted(pid=os.getpid(), version=__version__),
        JobSubmitted(job_id=job_id, name=doc["name"], spec=parsed.raw,
                     file="claimed/bench-restart.json", file_sha256=parsed.sha256),
        StageStarted(job_id=job_id, stage=Stage.PREPARE),
        StageCompleted(job_id=job_id, stage=Stage.PREPARE, outputs=prep),
        StageStarted(job_id=job_id, stage=Stage.SEARCH),
    ]  # fmt: skip
    for number in range(2 * per_model):
        model = RESTART_MODELS[number % 2]
        study = studies[model]
        trial = study.ask()
        params = suggest(trial, model, spaces[model])
        value = rng.uniform(0.6, 0.9)
        study.tell(trial, value)
        artifact, sha, metrics = artifacts[model]
        events.append(
            TrialStarted(
                job_id=job_id,
                trial=TrialNumber(number),
                model=ModelKind(model),
                params=params,
                attempt=1,
            )
        )
        events.append(TrialSaved(job_id=job_id, trial=TrialNumber(number), model=ModelKind(model),
                                 value=value, metrics={**metrics, "roc_auc": value},
                                 artifact=artifact, sha256=sha,
                                 duration_s=round(rng.uniform(0.02, 0.05), 6)))  # fmt: skip
    events.append(DaemonStopped(pid=os.getpid(), version=__version__, reason="bench"))
    store = Store.open(state)
    try:
        for i in range(0, len(events), 2000):
            store.append(events[i : i + 2000])
        last_seq = store.state.last_seq
    finally:
        store.close()  # writes the snapshot
    (state / "jobs" / job_id / "job.json").write_bytes(job_file.read_bytes())
    # The same trials in an Optuna journal: two studies, as the daemon keeps them.
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    journal = root / "restart-journal.log"
    storage = JournalStorage(JournalFileBackend(str(journal)))
    for model in RESTART_MODELS:
        target = optuna.create_study(study_name=model, storage=storage, direction="maximize")
        target.add_trials(studies[model].get_trials(deepcopy=False))
    dists = {
        k: optuna.distributions.distribution_to_json(v)
        for k, v in distributions(spaces["xgboost"]).items()
    }
    spec = {"studies": list(RESTART_MODELS), "seed": SEED, "distributions": dists}
    return state, journal, last_seq, spec


def bench_restart(procs: Processes, root: Path, tiny: Data, sizes: Sizes, report: Report) -> None:
    progress(f"restart: writing a log of {sizes.restart_trials:,} ended trials and the journal")
    state, journal, last_seq, spec = build_restart_state(root, tiny, sizes.restart_trials)
    log_size = sum(p.stat().st_size for p in (state / EVENTS_DIR).glob("*.jsonl"))
    ours: list[float] = []
    to_started: list[float] = []
    busy: list[float] = []  # the daemon's CPU, in cores, just after the restart
    ready: list[float] = []  # the daemon's own account: replay and recovery, in seconds
    base: list[float] = []
    for rep in range(sizes.restart_repeats):
        progress(f"restart {rep + 1}/{sizes.restart_repeats}")
        # Optuna: a fresh process that loads the journal and asks for the next trial (on a
        # copy: the ask is written to the journal, and every repeat must load the same).
        copy = journal.with_name(f"{journal.stem}-{rep}.log")
        shutil.copyfile(journal, copy)
        t0 = time.perf_counter()
        loader = subprocess.Popen(
            [sys.executable, "-c", OPTUNA_LOAD, str(copy), orjson.dumps(spec).decode()],
            stdout=subprocess.PIPE,
            start_new_session=True,
        )
        procs.others.append(loader)
        assert loader.stdout is not None
        line = loader.stdout.readline().decode().split()
        elapsed = time.perf_counter() - t0
        loader.wait(60)
        if line[:1] != ["ready"] or int(line[1]) != 2 * (sizes.restart_trials // 2):
            raise BenchError(f"the Optuna loader answered {line!r}")
        base.append(elapsed)
        # Sentinel: process start to the first new trial.started.
        daemon = procs.daemon(state, 1, root, root / f"daemon-restart-{rep}.log")
        follower = event_follower(state)
        follower.poll()
        start = len(follower.items)
        with running(procs, daemon, "restart"):
            t0 = daemon.started_at
            seen_started, _, _ = follower.wait_for(
                lambda r, after=last_seq: r["type"] == "daemon.started" and r["seq"] > after,
                sizes.timeout_s, "daemon.started", start, alive=daemon.check_alive,
            )  # fmt: skip
            seen, _, _ = follower.wait_for(
                lambda r: r["type"] == "trial.started" and r["trial"] >= sizes.restart_trials,
                sizes.timeout_s, "the first new trial.started", start, alive=daemon.check_alive,
            )  # fmt: skip
            ours.append(seen - t0)
            to_started.append(seen_started - t0)
            # The daemon's CPU while the big job runs (its loop looks at every trial a turn).
            main = psutil.Process(daemon.proc.pid) if daemon.proc else None
            c0, w0 = cpu_seconds([main] if main else []), time.perf_counter()
            time.sleep(sizes.cpu_window_s)
            c1 = cpu_seconds([main] if main else [])
            busy.append((c1 - c0) / (time.perf_counter() - w0))
        ready.extend(
            float(line["seconds"])
            for line in map(orjson.loads, daemon.log_path.read_bytes().splitlines())
            if line.get("event") == "daemon.ready"
        )
        follower.close()
        last_seq = max(last_seq, *(r["seq"] for _, r in follower.items))
    med, med_base = statistics.median(ours), statistics.median(base)
    imports = {
        what: import_seconds(modules, sizes.restart_repeats) for what, modules in IMPORTS.items()
    }
    report.rows += [
        Row(
            f"restart, {sizes.restart_trials:,} trials: process start -> next trial.started",
            f"{med:.3f} s",
            f"Optuna journal load+ask {med_base:.3f} s",
            f"{med / med_base:.2f}x",
            f"< {MAX_RESTART_S:.0f} s ({ANCHOR_RESTART})",
            med < MAX_RESTART_S,
        ),
    ]
    between = [a - b for a, b in zip(ours, to_started, strict=True)]
    report.notes.append(
        f"restart: median of {len(ours)}, range {min(ours):.3f}..{max(ours):.3f} s; process "
        f"start -> daemon.started record (interpreter, imports, lock, snapshot + tail) "
        f"{statistics.median(to_started):.3f} s, then -> trial.started (studies rebuilt from "
        f"the state, workers spawned, the first ask) {statistics.median(between):.3f} s; the "
        f"daemon's own daemon.ready 'seconds' {statistics.median(ready):.3f} s; "
        + ", ".join(f"{what} {sec:.3f} s" for what, sec in imports.items())
        + f" (fresh interpreters); the daemon then used {100 * statistics.median(busy):.0f}% "
        f"of a core for {sizes.cpu_window_s:g} s while the job ran (one trial in flight at a "
        f"time); log {log_size / 2**20:.1f} MiB; Optuna journal "
        f"{journal.stat().st_size / 2**20:.1f} MiB, loader range {min(base):.3f}..{max(base):.3f} s"
    )


IMPORTS = {
    "import sentinel_daemon.cli+daemon": "sentinel_daemon.cli, sentinel_daemon.daemon.service",
    "import xgboost+lightgbm+sklearn alone": "xgboost, lightgbm, sklearn",
}


def import_seconds(modules: str, repeats: int) -> float:
    """Seconds to import ``modules`` in a fresh interpreter (median of ``repeats``)."""
    code = f"import time; t = time.perf_counter(); import {modules}; print(time.perf_counter() - t)"
    runs = [
        float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True).stdout)
        for _ in range(repeats)
    ]  # fmt: skip
    return statistics.median(runs)


# ---- the run --------------------------------------------------------------------------


def bench(root: Path, sizes: Sizes, procs: Processes, report: Report) -> None:
    threads = max(1, (os.cpu_count() or 1) // 1)  # what the supervisor gives one worker
    progress("generating data")
    state = root / "state"  # its data/ is inside the daemon's default data roots
    tiny = make_data(state / "data" / "tiny", sizes.tiny_rows, seed=1)
    bench_cache = root / "bench-cache"
    if sizes.calibrate:
        progress("calibrating a ~1 s trial")
        mid, mid_rows = calibrate(state / "data" / "mid", bench_cache, threads, 1.0, report)
    else:
        mid, mid_rows = make_data(state / "data" / "mid", sizes.tiny_rows, seed=2), sizes.tiny_rows
    prepared_tiny = prepare(tiny, bench_cache)
    # The pickups' jobs end (cancelled) and each ended job gets a report child process;
    # a daemon of their own, stopped after them, keeps that work out of the later figures.
    daemon = procs.daemon(root / "pickup-state", 1, root, root / "daemon-pickup.log")
    with running(procs, daemon, "pickup"):
        session = Session(daemon, sizes)
        session.wait_ready()
        progress(
            f"pickup latency: {sizes.pickups} renames per gap, alternating with a bare watcher"
        )
        bench_pickup(session, procs, root, tiny, sizes, report)
        session.log.close()
    cancelled = len(PICKUP_GAPS_S) * sizes.pickups
    report.notes.append(
        f"pickup: the daemon queued a job report for each of the {cancelled} cancelled "
        f"jobs (one child process at a time) and finished {count_reports(daemon)} of them while "
        f"the pickups ran: one was being written through most of them"
    )
    daemon = procs.daemon(state, 1, root, root / "daemon.log")
    rates: dict[tuple[str, str], list[float]] = {}
    runs: list[SentinelRun] = []
    optuna_train_s: list[float] = []
    idle_cpu: list[tuple[float, float]] = []
    with running(procs, daemon, "main"):
        session = Session(daemon, sizes)
        session.wait_ready()
        progress(f"overhead: {sizes.overhead_trials + 1} trials of ~1 s, 1 worker")
        bench_overhead(session, mid, mid_rows, sizes, report)
        for r in range(sizes.rate_rounds):
            for sampler in ("random", "tpe"):
                session.quiesce()
                progress(f"trial rate {r + 1}/{sizes.rate_rounds}: Sentinel, {sampler}")
                run = sentinel_rate(session, tiny, sampler, sizes.rate_trials, str(r))
                rates.setdefault((sampler, "sentinel"), []).append(run.rate)
                runs.append(run)
            # Optuna in this process; the daemon stays up, idle, and its CPU is counted.
            session.quiesce()
            main, workers = daemon_and_workers(daemon)
            cpu0, t0 = cpu_seconds([main, *workers]), time.perf_counter()
            for sampler in ("random", "tpe"):
                for kind in ("sqlite", "journal"):
                    progress(f"trial rate {r + 1}/{sizes.rate_rounds}: Optuna + {kind}, {sampler}")
                    got = optuna_rate(
                        kind, sampler, sizes.rate_trials, prepared_tiny, threads,
                        root / f"optuna-{kind}-{sampler}-{r}", optuna_train_s,
                    )  # fmt: skip
                    rates.setdefault((sampler, kind), []).append(got)
            idle_cpu.append((cpu_seconds([main, *workers]) - cpu0, time.perf_counter() - t0))
        session.log.close()
    for sampler in ("random", "tpe"):
        med = {k: statistics.median(rates[(sampler, k)]) for k in ("sentinel", "sqlite", "journal")}
        report.rows += rate_rows(med, sampler)
        report.notes.append(
            f"trial rate, {sampler}: per round "
            + "; ".join(
                f"{k} " + " ".join(rate(x) for x in rates[(sampler, k)])
                for k in ("sentinel", "sqlite", "journal")
            )
        )
    idle_share = sum(c for c, _ in idle_cpu) / sum(t for _, t in idle_cpu)
    if sizes.quiesce:
        report.notes.append(
            f"reports: before each measured job and Optuna block the benchmark waited for the "
            f"daemon's job-report child to finish ({count_reports(daemon)} reports, "
            f"{session.quiesced_s:.0f} s of waiting); each ended job gets one"
        )
    worker_train = [t for run in runs for t in run.train_s]
    report.notes.append(
        f"trial rate: {sizes.rate_rounds} alternating rounds of {sizes.rate_trials} trials per "
        f"run (medians), {sizes.tiny_rows:,} rows, {threads} training threads on both sides; "
        f"Sentinel from the first trial.started to the search's stage.completed (record ts), "
        f"Optuna around study.optimize"
    )
    report.notes.append(
        f"trial rate: train_seconds of a near-empty trial, median (p90): in Sentinel's worker "
        f"{ms(statistics.median(worker_train))} ({ms(p90(worker_train))}), in Optuna's process "
        f"{ms(statistics.median(optuna_train_s))} ({ms(p90(optuna_train_s))}); CPU per Sentinel "
        f"trial (whole job, its prepare and validate stages' waits included): daemon "
        f"{ms(statistics.median(r.daemon_cpu for r in runs))}, worker (training included) "
        f"{ms(statistics.median(r.worker_cpu for r in runs))}; the daemon used "
        f"{100 * statistics.median(r.daemon_share for r in runs):.0f}% of a core while its "
        f"jobs ran; the idle daemon and worker {100 * idle_share:.1f}% while Optuna ran"
    )
    bench_restart(procs, root, tiny, sizes, report)


# ---- main ---------------------------------------------------------------------------------


def header(args: argparse.Namespace, root: Path) -> list[str]:
    dev, fstype = filesystem_of(root)
    same = root.stat().st_dev == REPO.stat().st_dev
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    mode = "quick: tiny sizes, figures mean nothing" if args.quick else "full"
    return [
        f"Sentinel daemon benchmark ({mode})",
        f"command : {shlex.join([sys.executable, *sys.argv])}",
        f"machine : nproc={os.cpu_count()} (usable {affinity}), Python {platform.python_version()} "
        f"({platform.python_implementation()}), {platform.platform()}",
        f"libs    : sentinel {__version__}, optuna {optuna.__version__}, xgboost "
        f"{xgboost.__version__}, lightgbm {lightgbm.__version__}, orjson {orjson.__version__}",
        f"dir     : {root} on {dev} ({fstype}), "
        f"{'same filesystem as the repo' if same else 'NOT the repo filesystem'}",
    ]


def print_table(rows: list[Row]) -> None:
    print_rows(
        ("what", "Sentinel", "baseline", "ratio", "target", "result"),
        [(r.what, r.measured, r.baseline, r.ratio, r.target, r.result) for r in rows],
        (False, True, True, True, False, False),
    )


@contextlib.contextmanager
def bench_session(prefix: str, args: argparse.Namespace, procs: Processes) -> Iterator[Path]:
    """The run's work folder (``args.dir``, ``args.keep``); every process in ``procs`` is
    stopped at the end, and SIGTERM ends the run the way Ctrl-C does."""

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt  # so that the finally below stops every process

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        with work_root(prefix, args.dir, args.keep) as root:
            try:
                yield root
            finally:
                procs.stop_all()
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    args = bench_arguments(__doc__, argv, keep=True)
    sizes = QUICK if args.quick else FULL
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)

    t_start = time.perf_counter()
    report = Report()
    procs = Processes()
    with bench_session("sentinel-bench-daemon-", args, procs) as root:
        for line in header(args, root):
            print(line)
        print(flush=True)
        bench(root, sizes, procs, report)

    print_table(report.rows)
    print_notes_and_summary(report, t_start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
