"""Shared pieces of the fault tests: the seed, an event-log tail, kills, and the checks.

- :func:`seed` is the session's seed (``SENTINEL_FAULTS_SEED``, else drawn and printed);
  each test derives its own :class:`random.Random` from it with :func:`rng`.
- :class:`EventTail` reads new records of ``STATE/events`` as they are appended, cheaply
  enough to poll every few milliseconds (kills keyed on events need that).
- :func:`violations` runs :func:`tests.daemonkit.check_invariants` and the checks it does not
  make (no trial trained again after it was saved, the promoted model loads and matches its
  sha256, ``best/`` holds it) and returns what broke instead of raising, so that a test can
  record the count before it fails.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import signal
from collections.abc import Callable
from pathlib import Path

import orjson
import psutil

from tests.daemonkit import DaemonProcess, Event, check_invariants, of_type, read_events

SEED_ENV = "SENTINEL_FAULTS_SEED"
MakeDaemon = Callable[..., DaemonProcess]
#: Settings every fault test's daemon runs with, on top of daemonkit's.
FAULT_SETTINGS: dict[str, str] = {"SENTINEL_METRICS__PORT": "0"}

_seed: list[int] = []


def seed() -> int:
    """The session's seed: ``SENTINEL_FAULTS_SEED`` or a random one, printed once."""
    if not _seed:
        raw = os.environ.get(SEED_ENV)
        _seed.append(int(raw) if raw else random.SystemRandom().randrange(1 << 31))
        print(f"\nfault suite seed: {_seed[0]} (rerun with {SEED_ENV}={_seed[0]})")
    return _seed[0]


def rng(name: str) -> random.Random:
    """A generator for one test, from the session seed and the test's name."""
    digest = hashlib.sha256(f"{seed()}:{name}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


# ---- the event log, as it grows -----------------------------------------------------------


class EventTail:
    """New complete records of ``STATE/events/*.jsonl`` since the last :meth:`poll`.

    Keeps a byte offset per segment. A segment that shrank (a torn tail cut at start-up)
    is read again from the start of its last whole record, which the cut keeps.
    """

    def __init__(self, state_dir: Path) -> None:
        self.folder = Path(state_dir) / "events"
        self.offsets: dict[str, int] = {}
        self.events: list[Event] = []
        self.seen: set[int] = set()

    def poll(self) -> list[Event]:
        new: list[Event] = []
        with contextlib.suppress(FileNotFoundError):
            names = sorted(p.name for p in self.folder.glob("*.jsonl"))
            for name in names:
                offset = self.offsets.get(name, 0)
                try:
                    with open(self.folder / name, "rb") as fh:
                        size = os.fstat(fh.fileno()).st_size
                        offset = min(offset, size)
                        fh.seek(offset)
                        data = fh.read()
                except FileNotFoundError:
                    continue
                end = data.rfind(b"\n")
                if end < 0:
                    self.offsets[name] = offset
                    continue
                self.offsets[name] = offset + end + 1
                for line in data[: end + 1].split(b"\n"):
                    if not line:
                        continue
                    event = orjson.loads(line)
                    if event["seq"] not in self.seen:  # a cut and rewritten tail
                        self.seen.add(event["seq"])
                        new.append(event)
        self.events += new
        return new


# ---- processes -------------------------------------------------------------------------------


def _cmdline(proc: psutil.Process) -> str:
    with contextlib.suppress(psutil.Error):
        return " ".join(proc.cmdline())
    return ""


def live_workers(daemon: DaemonProcess) -> list[psutil.Process]:
    """The running daemon's live worker processes."""
    if not daemon.running():
        return []
    try:
        children = psutil.Process(daemon.pid).children()
    except psutil.Error:
        return []
    found = []
    for child in children:
        with contextlib.suppress(psutil.Error):
            if "sentinel_daemon.worker" in _cmdline(child) and child.status() != "zombie":
                found.append(child)
    return found


def kill_group(pid: int, sig: int = signal.SIGKILL) -> None:
    """Signal ``pid``'s process group (a worker's or stage's own), or the process alone."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
            return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def kill_everything(daemon: DaemonProcess) -> int:
    """SIGKILL the daemon and every process of its state dir at once; how many died."""
    procs = daemon.leftovers()
    daemon_pid = daemon.pid if daemon.running() else None
    if daemon_pid is not None:
        os.kill(daemon_pid, signal.SIGKILL)  # the daemon first: nothing of it reacts
    for proc in procs:
        if proc.pid != daemon_pid:
            kill_group(proc.pid)
    if daemon_pid is not None:
        daemon.wait(30.0)
    psutil.wait_procs(procs, timeout=10)
    return len(procs)


# ---- the checks ------------------------------------------------------------------------------


def violations(
    state_dir: Path, *, require_promoted: bool = True, mid_crash: bool = False
) -> list[str]:
    """Everything that breaks DESIGN.md's invariants in ``state_dir`` (empty: all hold).

    Beyond :func:`check_invariants`: no ``trial.started`` of a trial after its
    ``trial.saved`` (a finished trial is never trained again); every trial model folder with
    a ``meta.json`` holds the whole model it describes (none half-written); every job with
    ``job.completed`` and ``promoted`` (when ``require_promoted``, every completed job) has
    one ``model.promoted`` whose file in ``best/`` loads, matches its sha256, and is the
    winner's trial model byte for byte.

    ``mid_crash``: the state a killed daemon left. The write-ahead rule (DESIGN.md) records
    ``model.promoted`` before ``best/`` is written, so a kill in between leaves a promotion
    whose file is not there yet; the restarted daemon writes it before ``job.completed``.
    :func:`check_invariants` fails on that; here it is allowed while the job has not
    completed its export and ``best/`` is absent (:func:`_pending_exports`).
    """
    state_dir = Path(state_dir)
    found: list[str] = []
    try:
        events = check_invariants(state_dir)
    except AssertionError as exc:
        if not (mid_crash and "model.promoted seq" in str(exc)):
            return [f"check_invariants: {exc}"]
        # Every check before the promoted one passed; do that one and the rest here.
        events = read_events(state_dir)
        found += _pending_exports(state_dir, events)
    saved_at = {(e["job_id"], e["trial"]): e for e in of_type(events, "trial.saved")}
    for e in of_type(events, "trial.started"):
        saved = saved_at.get((e["job_id"], e["trial"]))
        if saved is not None and e["seq"] > saved["seq"]:
            found.append(f"{e['job_id']} trial {e['trial']} started (seq {e['seq']}) after it "
                         f"was saved (seq {saved['seq']})")  # fmt: skip
    found += _half_written_models(state_dir)
    for done in of_type(events, "job.completed"):
        job = done["job_id"]
        promoted = of_type(events, "model.promoted", job_id=job)
        if not done.get("promoted"):
            if require_promoted:
                found.append(f"{job} completed without promoting a model: {done.get('reason')}")
            continue
        if len(promoted) != 1:
            found.append(f"{job}: {len(promoted)} model.promoted events, expected 1")
            continue
        found += _promoted_problems(state_dir, promoted[0], saved_at)
    return found


def _pending_exports(state_dir: Path, events: list[Event]) -> list[str]:
    """check_invariants' promotion and ``best/`` checks, allowing an export not yet done."""
    problems = []
    for e in of_type(events, "model.promoted"):
        job = e["job_id"]
        digest = _sha256(state_dir / e["artifact"])
        if digest == e["sha256"]:
            continue
        exported = of_type(events, "stage.completed", job_id=job, stage="export")
        done = of_type(events, "job.completed", job_id=job)
        best = state_dir / "jobs" / job / "best"
        if digest is None and not exported and not done and not best.exists():
            continue  # recorded, not yet acted on: the restarted daemon exports it
        what = "is missing" if digest is None else "does not match its sha256"
        problems.append(
            f"model.promoted seq {e['seq']}: {e['artifact']} {what} "
            f"(export completed: {bool(exported)}, best/ exists: {best.exists()})"
        )
    for best in state_dir.glob("jobs/*/best"):
        temps = [p.name for p in best.rglob("*") if ".tmp" in p.name]
        if temps:
            problems.append(f"{best} holds temporary files: {temps}")
    for done in of_type(events, "job.completed"):
        if (state_dir / "jobs" / done["job_id"] / ".best.tmp").exists():
            problems.append(f"{done['job_id']} completed and left .best.tmp behind")
    return problems


def _sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _half_written_models(state_dir: Path) -> list[str]:
    """Trial model folders whose ``meta.json`` is torn or whose model file is not whole.

    A worker writes the model file, then ``meta.json``, each atomically; a kill at any
    moment may leave a folder without ``meta.json``, never one whose files disagree.
    """
    problems = []
    for meta_path in sorted(state_dir.glob("jobs/*/trials/*/*/meta.json")):
        where = meta_path.parent.relative_to(state_dir)
        try:
            meta = orjson.loads(meta_path.read_bytes())
            model = meta_path.with_name(str(meta["model_file"]))
            digest = hashlib.sha256(model.read_bytes()).hexdigest()
        except (OSError, orjson.JSONDecodeError, KeyError, TypeError) as exc:
            problems.append(f"{where}: unreadable model or meta.json ({exc})")
            continue
        if digest != meta.get("sha256"):
            problems.append(f"{where}: {model.name} does not match meta.json's sha256")
    return problems


def _promoted_problems(
    state_dir: Path, promoted: Event, saved_at: dict[tuple[str, int], Event]
) -> list[str]:
    from sentinel_daemon.ml.artifacts import load_model

    job = promoted["job_id"]
    winner = saved_at.get((job, promoted["trial"]))
    if winner is None:
        return [f"{job}: model.promoted names trial {promoted['trial']}, which was never saved"]
    problems = []
    try:
        load_model(state_dir / promoted["artifact"], promoted["sha256"])
    except Exception as exc:  # any failure to load is the finding
        problems.append(f"{job}: the promoted model does not load: {exc}")
    if promoted["sha256"] != winner["sha256"]:
        problems.append(f"{job}: promoted sha256 differs from trial {winner['trial']}'s")
    card = state_dir / Path(promoted["artifact"]).parent / "model-card.json"
    try:
        if orjson.loads(card.read_bytes())["sha256"] != promoted["sha256"]:
            problems.append(f"{job}: the model card names another sha256")
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError) as exc:
        problems.append(f"{job}: no readable model card ({exc})")
    return problems


def ended_trials(events: list[Event], job_id: str) -> int:
    """Trials of ``job_id`` that ended for good (saved, pruned, failed without retry)."""
    return sum(
        1
        for e in of_type(events, "trial.saved", "trial.pruned", "trial.failed", job_id=job_id)
        if e["type"] != "trial.failed" or not e["retry"]
    )


def job_end(events: list[Event], job_id: str) -> Event | None:
    ends = of_type(events, "job.completed", "job.failed", "job.cancelled", job_id=job_id)
    return ends[0] if ends else None


def describe(found: list[str]) -> str:
    return "\n".join(f"- {v}" for v in found)


__all__ = [
    "FAULT_SETTINGS",
    "EventTail",
    "MakeDaemon",
    "describe",
    "ended_trials",
    "job_end",
    "kill_everything",
    "kill_group",
    "live_workers",
    "rng",
    "seed",
    "violations",
]
