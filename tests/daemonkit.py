"""A harness for tests that run the real daemon (``sentinel run``) as a process.

- :func:`make_dataset` writes a tiny synthetic IEEE-CIS data set once per session;
  :func:`copy_dataset` puts it where a test's daemon may read it (the daemon's working
  folder is a data root, and a data file must be inside a root after resolving links, so
  the files are copied, not linked).
- :func:`write_job` writes a job file whose trials train in well under a second.
- :class:`DaemonProcess` starts the daemon in its own process group with its output in a
  log file, submits job files the way the inbox contract says (``.name.tmp``, then a
  rename), stops it with a signal or kills it like a crash, and at the end kills whatever
  it left behind (the daemon, its workers and stage processes), found by the pids in its
  logs and by the state directory on their command lines.
- :func:`read_events`, :func:`wait_for_event` and :func:`check_invariants` read the event
  log as plain dicts and check DESIGN.md's "Contract: event log" invariants on it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import psutil
import pytest
import yaml

from tests.helpers import wait_for

if TYPE_CHECKING:
    from sentinel_daemon.daemon.service import Daemon

Event = dict[str, Any]
Predicate = Callable[[Event], bool]

TRANSACTIONS = "train_transaction.csv"
IDENTITY = "train_identity.csv"
DATASET_ROWS = 2000
#: Each trial trains a handful of small trees (well under a second on one core); the
#: learning rate is kept high enough that every model beats the quality gate's 0.5.
TINY_SPACE: dict[str, dict[str, list[int] | list[float]]] = {
    "xgboost": {"n_estimators": [10, 30], "max_depth": [2, 3], "learning_rate": [0.1, 0.3]},
    "lightgbm": {"n_estimators": [10, 30], "num_leaves": [4, 8], "learning_rate": [0.1, 0.3]},
}
#: With the ``slow`` fault every report waits 0.2 s; with ``trials.report_every: 1`` and
#: 15-20 rounds a slow trial lasts 3-4 s, long enough to kill something in the middle.
SLOW_SPACE: dict[str, dict[str, list[int] | list[float]]] = {
    model: {**space, "n_estimators": [15, 20]} for model, space in TINY_SPACE.items()
}
#: Settings every test daemon runs with (environment variables, see settings.py).
BASE_SETTINGS: dict[str, str] = {
    "SENTINEL_LOGGING__FORMAT": "json",
    "SENTINEL_INBOX__RESCAN_SECONDS": "0.5",
    "SENTINEL_WORKERS__HEARTBEAT_S": "0.3",
    "SENTINEL_WORKERS__RESTART_BACKOFF_MIN_S": "0.1",
    "SENTINEL_WORKERS__RESTART_BACKOFF_MAX_S": "1.0",
    "SENTINEL_SHUTDOWN__GRACE_S": "30",
    # Many test daemons run at once; each takes a free port for its metrics.
    "SENTINEL_METRICS__PORT": "0",
}


def in_process_daemon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Daemon:
    """A :class:`Daemon` built in this process (not started), for tests that drive its
    steps by hand: working folder ``tmp_path``, state in ``tmp_path/state``, no workers,
    no metrics server, :data:`BASE_SETTINGS` otherwise."""
    from sentinel_daemon.daemon.service import Daemon
    from sentinel_daemon.settings import load_settings

    monkeypatch.chdir(tmp_path)
    for key, value in BASE_SETTINGS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("SENTINEL_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("SENTINEL_METRICS__ENABLED", "false")
    return Daemon(load_settings(), workers=0)


ENDED_TYPES = ("trial.saved", "trial.pruned", "trial.failed")
#: The syslog priority a line starts with when stderr is the journal (sentinel_daemon/logs.py).
JOURNAL_PREFIX = re.compile(r"^<([0-7])>")


# ---- data and job files -----------------------------------------------------------------


def make_dataset(folder: Path, rows: int = DATASET_ROWS, seed: int = 7) -> Path:
    """Write the synthetic transaction and identity CSVs into ``folder``; return it."""
    from sentinel_daemon.ml.synth import generate

    generate(rows, folder, seed=seed)
    return folder


def copy_dataset(dataset: Path, folder: Path) -> Path:
    """Copy the data set's two CSVs into ``folder`` (created); return it."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in (TRANSACTIONS, IDENTITY):
        shutil.copyfile(dataset / name, folder / name)
    return folder


def job_doc(
    name: str,
    *,
    models: Iterable[str] = ("xgboost",),
    n_trials: int = 2,
    parallelism: int = 1,
    sampler: str = "random",
    pruner: str = "none",
    seed: int = 1,
    space: Mapping[str, Any] | None = None,
    data_dir: str = "data",
    **extra: Any,
) -> dict[str, Any]:
    """A job file's content as data; ``extra`` adds top-level keys (for invalid files)."""
    models = list(models)
    space = TINY_SPACE if space is None else space
    return {
        "name": name,
        "data": {
            "transactions": f"{data_dir}/{TRANSACTIONS}",
            "identity": f"{data_dir}/{IDENTITY}",
        },
        "models": models,
        "search": {
            "n_trials": n_trials,
            "parallelism": parallelism,
            "sampler": sampler,
            "pruner": pruner,
            "seed": seed,
            "space": {m: space[m] for m in models if m in space},
        },
        **extra,
    }


def write_job(folder: Path, name: str, **kwargs: Any) -> Path:
    """Write ``folder/<name>.yaml`` from :func:`job_doc` (same arguments); return its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(job_doc(name, **kwargs), sort_keys=False))
    return path


def job_id_of(job_file: Path) -> str:
    """The id the daemon gives a job file: ``<name>-<first 8 hex digits of its sha256>``."""
    data = job_file.read_bytes()
    return f"{yaml.safe_load(data)['name']}-{hashlib.sha256(data).hexdigest()[:8]}"


# ---- the event log ------------------------------------------------------------------------


def read_events(state_dir: Path) -> list[Event]:
    """Every record of ``STATE/events/*.jsonl`` in order, as dicts; a torn last line is left out.

    A line that cannot be parsed anywhere else fails the test: that is corruption.
    """
    segments = sorted((Path(state_dir) / "events").glob("*.jsonl"))
    events: list[Event] = []
    for i, segment in enumerate(segments):
        data = segment.read_bytes()
        lines = data.split(b"\n")
        for j, line in enumerate(lines):
            if not line:
                continue
            last = i == len(segments) - 1 and j == len(lines) - 1
            if last:
                break  # no newline after it: being written now, or torn by a crash
            try:
                events.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                pytest.fail(f"{segment.name} line {j + 1} is not JSON: {line[:200]!r}")
    return events


def of_type(events: Iterable[Event], *types: str, **fields: Any) -> list[Event]:
    """The events of one of ``types`` whose fields equal ``fields``."""
    return [
        e for e in events if e["type"] in types and all(e.get(k) == v for k, v in fields.items())
    ]


def wait_for_event(
    state_dir: Path, predicate: Predicate, timeout: float = 90.0, what: str = "an event"
) -> Event:
    """The first event that satisfies ``predicate``, waiting up to ``timeout`` s for it."""

    def found() -> Event | None:
        return next((e for e in read_events(state_dir) if predicate(e)), None)

    return wait_for(found, timeout=timeout, what=what)


def is_event(type_: str, **fields: Any) -> Predicate:
    """A predicate: an event of ``type_`` with these field values."""
    return lambda e: e["type"] == type_ and all(e.get(k) == v for k, v in fields.items())


def _sha256_file(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def check_invariants(state_dir: Path) -> list[Event]:
    """Assert the event log's invariants (DESIGN.md) on ``state_dir``; return the events.

    - ``seq`` runs 1, 2, 3... across segments;
    - each (job_id, trial) has at most one ``trial.saved``, and ends at most once;
    - every ``trial.saved`` artifact exists under STATE and matches its sha256;
    - a job with ``job.completed`` has exactly ``n_trials`` ended trials per model (saved,
      pruned, or failed with ``retry: false``) and no trial left unended;
    - a ``model.promoted`` artifact exists and matches its sha256;
    - nothing under ``STATE/jobs/*/best`` is a temporary file, and no ``.best.tmp`` is left
      behind by a completed job.
    """
    state_dir = Path(state_dir)
    events = read_events(state_dir)
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(1, len(events) + 1)), f"seq is not contiguous from 1: {seqs}"

    saved = Counter((e["job_id"], e["trial"]) for e in of_type(events, "trial.saved"))
    twice = {k: n for k, n in saved.items() if n > 1}
    assert not twice, f"trials saved more than once: {twice}"
    for e in of_type(events, "trial.saved"):
        digest = _sha256_file(state_dir / e["artifact"])
        assert digest is not None, f"trial.saved seq {e['seq']}: {e['artifact']} is missing"
        assert digest == e["sha256"], f"trial.saved seq {e['seq']}: {e['artifact']} sha256"

    ended: dict[tuple[str, int], list[Event]] = defaultdict(list)
    for e in of_type(events, *ENDED_TYPES):
        if e["type"] != "trial.failed" or not e["retry"]:
            ended[(e["job_id"], e["trial"])].append(e)
    many = {k: [e["seq"] for e in v] for k, v in ended.items() if len(v) > 1}
    assert not many, f"trials that ended more than once (seqs): {many}"

    specs = {e["job_id"]: e["spec"] for e in of_type(events, "job.submitted")}
    for done in of_type(events, "job.completed"):
        job = done["job_id"]
        spec = specs[job]
        started = {e["trial"]: e["model"] for e in of_type(events, "trial.started", job_id=job)}
        unended = sorted(t for t in started if (job, t) not in ended)
        assert not unended, f"{job} completed with trials never ended: {unended}"
        per_model = Counter(started[t] for (j, t) in ended if j == job)
        for model in spec["models"]:
            assert per_model[model] == spec["search"]["n_trials"], (
                f"{job}: {per_model[model]} ended {model} trials, "
                f"n_trials is {spec['search']['n_trials']}"
            )

    for e in of_type(events, "model.promoted"):
        digest = _sha256_file(state_dir / e["artifact"])
        assert digest is not None, f"model.promoted seq {e['seq']}: {e['artifact']} is missing"
        assert digest == e["sha256"], f"model.promoted seq {e['seq']}: {e['artifact']} sha256"

    completed = {e["job_id"] for e in of_type(events, "job.completed")}
    jobs_dir = state_dir / "jobs"
    for best in jobs_dir.glob("*/best"):
        temps = [p.name for p in best.rglob("*") if ".tmp" in p.name]
        assert not temps, f"{best} holds temporary files: {temps}"
    for job in completed:
        assert not (jobs_dir / job / ".best.tmp").exists(), f"{job} left .best.tmp behind"
    return events


# ---- the daemon process -------------------------------------------------------------------


class DaemonProcess:
    """``sentinel run`` over ``root/state`` with ``root`` as its working folder.

    Output (the daemon's and its workers', JSON lines) goes to ``root/daemon.log``.
    ``settings`` are environment variables added to :data:`BASE_SETTINGS`; ``faults`` is a
    fault plan (see ``sentinel_daemon.worker.faults._test_fault``) and turns fault injection on.
    :meth:`start` may be called again after the process ended (a restart).
    """

    def __init__(
        self,
        root: Path,
        *,
        workers: int | None = 1,
        settings: Mapping[str, object] | None = None,
        faults: Mapping[str, str] | None = None,
    ) -> None:
        self.root = Path(root)
        self.state_dir = self.root / "state"
        self.log_path = self.root / "daemon.log"
        self.workers = workers
        env = {k: v for k, v in os.environ.items() if not k.startswith("SENTINEL_")}
        env.update(BASE_SETTINGS)
        env.update({k: str(v) for k, v in (settings or {}).items()})
        if faults is not None:
            env["SENTINEL_TEST_FAULTS"] = "1"
            env["SENTINEL_TEST_FAULT_PLAN"] = orjson.dumps(dict(faults)).decode()
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.pids: list[int] = []  # every daemon pid this object started
        self.starts = 0

    # -- life cycle ----------------------------------------------------------------------

    def argv(self) -> list[str]:
        # workers=None: no --workers, so the settings (workers.gpus, per_gpu, cpu) decide.
        count = [] if self.workers is None else ["--workers", str(self.workers)]
        return [
            sys.executable, "-m", "sentinel_daemon.cli", "run",
            "--state-dir", str(self.state_dir), *count,
        ]  # fmt: skip

    def start(self) -> DaemonProcess:
        assert self.proc is None or self.proc.poll() is not None, "the daemon is running"
        self.starts += 1
        (self.state_dir / "inbox").mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"=== harness: start {self.starts} ===\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.argv(),
                cwd=self.root,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pids.append(self.proc.pid)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` to the daemon process only (not to its workers)."""
        assert self.proc is not None and self.proc.poll() is None, "the daemon is not running"
        os.kill(self.proc.pid, sig)

    def wait(self, timeout: float) -> int:
        """The daemon's exit code, waiting up to ``timeout`` s (fails the test after)."""
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the daemon (pid {self.proc.pid}) did not exit within {timeout}s")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 90.0) -> int:
        """Signal the daemon and return its exit code."""
        self.send_signal(sig)
        return self.wait(timeout)

    def kill(self) -> int:
        """SIGKILL the daemon alone, as a crash would; its workers are left to notice."""
        self.send_signal(signal.SIGKILL)
        return self.wait(30.0)

    # -- the inbox -----------------------------------------------------------------------

    def drop(self, name: str, data: bytes) -> Path:
        """Place ``data`` in the inbox as ``name`` the contract's way: ``.name.tmp``, rename."""
        inbox = self.state_dir / "inbox"
        inbox.mkdir(parents=True, exist_ok=True)
        tmp = inbox / f".{name}.tmp"
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.rename(tmp, inbox / name)
        return inbox / name

    def submit(self, job_file: Path) -> str:
        """Drop ``job_file`` into the inbox under its own name; return the job's id."""
        self.drop(job_file.name, job_file.read_bytes())
        return job_id_of(job_file)

    # -- reading -------------------------------------------------------------------------

    def events(self) -> list[Event]:
        return read_events(self.state_dir)

    def wait_for_event(
        self, predicate: Predicate, timeout: float = 90.0, what: str = "an event"
    ) -> Event:
        """Like :func:`wait_for_event`, but fail at once if the daemon exits meanwhile."""

        def found() -> Event | None:
            hit = next((e for e in self.events() if predicate(e)), None)
            if hit is None and not self.running():
                code = None if self.proc is None else self.proc.returncode
                pytest.fail(f"the daemon exited (code {code}) while waiting for {what}")
            return hit

        return wait_for(found, timeout=timeout, what=what)

    def wait_for_job(self, job_id: str, timeout: float = 120.0) -> Event:
        """The job's end event (completed, failed or cancelled); fails unless completed."""
        end = self.wait_for_event(
            lambda e: (
                e["type"] in ("job.completed", "job.failed", "job.cancelled")
                and e.get("job_id") == job_id
            ),
            timeout=timeout,
            what=f"job {job_id} to end",
        )
        assert end["type"] == "job.completed", f"job {job_id} did not complete: {end}"
        return end

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_records(self) -> list[dict[str, Any]]:
        """The JSON lines of the daemon's (and workers') structured log.

        A journald priority prefix (``<6>{...}``, written when ``JOURNAL_STREAM`` names the
        log file) is left out, as journald leaves it out; :func:`priority` reads it.
        """
        out = []
        for line in self.log_text().splitlines():
            line = JOURNAL_PREFIX.sub("", line, count=1)
            if line.startswith("{"):
                with contextlib.suppress(orjson.JSONDecodeError):
                    out.append(orjson.loads(line))
        return out

    def worker_pids(self) -> dict[str, int]:
        """Worker id -> pid, from every ``worker.started`` in the log."""
        return {e["worker"]: e["pid"] for e in of_type(self.events(), "worker.started")}

    def holder_of(self, command_id: str) -> str | None:
        """The worker that has claimed ``command_id`` (``queue/workers/<id>/<cid>.json``)."""
        workers = self.state_dir / "queue" / "workers"
        for path in workers.glob(f"*/{command_id}.json"):
            return path.parent.name
        return None

    # -- clean-up ------------------------------------------------------------------------

    def _ours(self, proc: psutil.Process) -> bool:
        """Whether ``proc`` is a daemon, worker or stage process of this state directory."""
        with contextlib.suppress(psutil.Error):
            argv = proc.cmdline()
            return any("sentinel_daemon" in a for a in argv) and str(self.state_dir) in argv
        return False

    def leftovers(self) -> list[psutil.Process]:
        """Live processes of this state directory: by the pids logged, then by command line."""
        pids = set(self.pids)
        with contextlib.suppress(Exception):  # the log may be unreadable after a failure
            pids |= set(self.worker_pids().values())
        for rec in self.log_records():
            if rec.get("event") in ("job.stage_process", "supervisor.worker_spawned"):
                pids.add(int(rec["pid"]))
        found: dict[int, psutil.Process] = {}
        for pid in pids:
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(pid)
                if self._ours(proc):
                    found[pid] = proc
        for proc in psutil.process_iter():
            if proc.pid not in found and proc.pid != os.getpid() and self._ours(proc):
                found[proc.pid] = proc
        alive = []
        for proc in found.values():
            with contextlib.suppress(psutil.Error):
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    alive.append(proc)
        return alive

    def cleanup(self) -> list[int]:
        """Kill everything left (each process's group, then itself); return their pids."""
        left = self.leftovers()
        for proc in left:
            with contextlib.suppress(OSError):
                if os.getpgid(proc.pid) == proc.pid:
                    os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(left, timeout=10)
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)
        return [p.pid for p in left]


def gone(pids: Iterable[int]) -> bool:
    """Whether none of ``pids`` is a live (non-zombie) process."""
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                return False
    return True


def summary(events: list[Event]) -> str:
    """One short line per event, for failure output."""
    keys = ("job_id", "trial", "attempt", "retry", "worker", "pid", "reason", "error", "file")
    lines = []
    for e in events:
        fields = " ".join(f"{k}={str(e[k])[:120]}" for k in keys if k in e)
        lines.append(f"{e['seq']:>4} {e['type']:<16} {fields}")
    return "\n".join(lines)
