"""Crash states: every state a power cut could leave while the daemon's durable paths run.

A scripted workload does what the daemon and a worker do for a small job, through the
real code: :meth:`Store.append` (segments rotating, snapshots every few records),
:meth:`Queue.put`, a worker's ``claim``, :func:`save_model` and an :class:`Outbox` post,
``finish``, the daemon's ``results``/``ack``, and the promotion (:func:`export_best`).
:mod:`tests.faults.crashfs` records every file-system change it makes and builds, seeded,
the states a power cut could leave (writes not yet fsynced lost or torn at a sector,
entries in folders not yet fsynced undone). Each state is materialised and opened with
:meth:`Store.open` and :class:`Queue`, and must either recover with the invariants:

- every acknowledged record (its ``append`` returned) is there, at its seq, byte-equal;
  nothing is there that was not being written; seq is contiguous; the state equals a
  full replay of the log;
- every ``trial.saved`` and ``model.promoted`` artifact exists and matches its sha256;
  every saved model (``save_model`` returned) is there, whole; no model file anywhere
  is half-written;
- every command put and every result posted is there and readable, unless the workload
  had already consumed it; nothing is moved aside as malformed;

or refuse to start with a clear error (a :class:`SentinelError` naming the file). For a
sample, a real daemon (``sentinel run``) is started on the state and must reach READY or
exit non-zero saying why, and the log's invariants must hold after it stops.
"""

from __future__ import annotations

import hashlib
import shutil
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import yaml

from sentinel_daemon.core.events import (
    JobCompleted,
    JobSubmitted,
    ModelPromoted,
    StageCompleted,
    StageStarted,
    TrialSaved,
    TrialStarted,
)
from sentinel_daemon.core.state import fold
from sentinel_daemon.daemon.stages import export_best
from sentinel_daemon.errors import SentinelError
from sentinel_daemon.jobfile import parse_job_file
from sentinel_daemon.log.segments import LogScan
from sentinel_daemon.log.store import Store, decode_record
from sentinel_daemon.ml.artifacts import save_model
from sentinel_daemon.queue.maildir import Outbox, Queue
from sentinel_daemon.queue.messages import Saved, TrialCommand, TrialData
from tests.daemonkit import DaemonProcess, job_doc
from tests.faults import crashfs
from tests.faults.crashfs import Ack, Crash, Recorder
from tests.faults.faultkit import FAULT_SETTINGS, MakeDaemon, rng, violations
from tests.faults.record import full, record
from tests.helpers import wait_for

TRIALS = 5 if full() else 3
STATES = 1500 if full() else 160
DAEMON_SAMPLES = 6 if full() else 1
WORKER = "w0"


# ---- the workload ---------------------------------------------------------------------------


@dataclass
class Run:
    """A recorded workload: its ops, what it acknowledged, and every record it appended."""

    workspace: Path
    recorder: Recorder
    acks: list[Ack]
    appended: dict[int, dict[str, Any]] = field(default_factory=dict)  # seq -> payload
    models: dict[str, str] = field(default_factory=dict)  # sha256 -> path, every model saved
    final: dict[str, bytes] = field(default_factory=dict)  # what was on disk at the end

    @property
    def ops(self) -> list[crashfs.Op]:
        return self.recorder.ops

    def acked(self, cut: int, what: str) -> list[Ack]:
        return [a for a in self.acks if a.at <= cut and a.what == what]


def _boosters(n: int) -> list[Any]:
    import xgboost as xgb

    r = np.random.RandomState(7)
    x = r.rand(200, 4)
    y = (x[:, 0] + r.rand(200) * 0.3 > 0.6).astype(int)
    data = xgb.DMatrix(x, label=y)
    params = {"max_depth": 3, "nthread": 1, "objective": "binary:logistic", "seed": 1}
    return [xgb.train(params, data, num_boost_round=4 + 3 * i) for i in range(n)]


def run_workload(workspace: Path, trials: int) -> Run:
    """The daemon's and a worker's durable steps for one job, recorded."""
    state = workspace / "state"
    state.mkdir(mode=0o750)  # made by systemd (StateDirectory=): already durable
    job_file = workspace / "crash.yaml"
    job_file.write_text(
        yaml.safe_dump(job_doc("crash", n_trials=trials, models=("xgboost",)), sort_keys=False)
    )
    parsed = parse_job_file(job_file, data_roots=[workspace], base_dir=workspace)
    job = parsed.job_id
    boosters = _boosters(trials)
    recorder = Recorder(state)
    run = Run(workspace, recorder, [])

    def ack(what: str, **data: Any) -> None:
        run.acks.append(Ack(len(recorder.ops), what, data))

    with recorder.installed():
        store = Store.open(state, segment_bytes=1200, snapshot_every=7)
        queue = Queue(state / "queue")
        ack("open")

        def append(*events: Any) -> None:
            records = store.append(list(events))
            for r in records:
                run.appended[r.seq] = r.payload
            ack("append", seqs=[r.seq for r in records])

        append(
            JobSubmitted(
                job_id=job,
                name=parsed.spec.name,
                spec=parsed.raw,
                file="claimed/crash.yaml",
                file_sha256=parsed.sha256,
            )
        )
        append(StageStarted(job_id=job, stage="prepare"))
        append(StageCompleted(job_id=job, stage="prepare", outputs={"rows": 2000}))
        append(StageStarted(job_id=job, stage="search"))
        outbox = Outbox(queue, WORKER)
        best: tuple[float, int, str, str] | None = None
        for t in range(trials):
            params = {"max_depth": 2 + t % 3, "learning_rate": 0.1}
            append(TrialStarted(job_id=job, trial=t, model="xgboost", params=params, attempt=1))
            command = TrialCommand(
                job_id=job,
                trial=t,
                attempt=1,
                model="xgboost",
                params=params,
                data=TrialData(
                    transactions=Path(parsed.spec.data.transactions),
                    identity=None,
                    cache_dir=Path("cache"),
                    test_fraction=0.2,
                    valid_fraction=0.2,
                ),
                artifact_dir=f"jobs/{job}/trials/{t}",
                report_every=10,
            )
            queue.put(command)
            ack("put", command=command.command_id)
            claimed = queue.claim(WORKER)  # the worker
            assert claimed is not None
            ack("claim", command=command.command_id)
            saved = save_model(
                boosters[t], "xgboost", state / command.artifact_dir / f"1-{WORKER}", {"trial": t}
            )
            rel = saved.path.relative_to(state).as_posix()
            run.models[saved.sha256] = rel
            ack("save", path=rel, sha256=saved.sha256)
            value = 0.6 + 0.05 * ((t * 7) % 5)
            outbox.send(
                Saved,
                command.command_id,
                artifact=rel,
                sha256=saved.sha256,
                metrics={"roc_auc": value},
                value=value,
                train_seconds=0.1,
                duration_s=0.2,
            )
            posted = sorted(p.name for p in (state / "queue" / "results").iterdir())
            ack("post", names=posted)
            queue.finish(WORKER, command.command_id)
            ack("finish", command=command.command_id)
            for path, message in queue.results():  # the daemon ingests it
                assert isinstance(message, Saved)
                append(
                    TrialSaved(
                        job_id=job,
                        trial=t,
                        model="xgboost",
                        value=message.value,
                        metrics=message.metrics,
                        artifact=message.artifact,
                        sha256=message.sha256,
                        duration_s=message.duration_s,
                    )
                )
                queue.ack(path)
                ack("ack", name=path.name)
                if best is None or message.value > best[0]:
                    best = (message.value, t, message.artifact, message.sha256)
        assert best is not None
        value, trial, artifact, sha = best
        append(StageCompleted(job_id=job, stage="search", outputs={}))
        card = {"job_id": job, "trial": trial, "sha256": sha, "value": value}
        promoted = export_best(state, state / "jobs" / job, artifact, sha, card)
        ack("export", path=promoted, sha256=sha)
        append(
            ModelPromoted(
                job_id=job, trial=trial, model="xgboost", artifact=promoted, sha256=sha, value=value
            )
        )
        append(JobCompleted(job_id=job, best_trial=trial, best_value=value, promoted=True))
        store.close()
        ack("close")
    run.final = {
        p.relative_to(state).as_posix(): p.read_bytes() for p in state.rglob("*") if p.is_file()
    }
    return run


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory, dataset_copy: Path) -> Run:
    return run_workload(dataset_copy, TRIALS)


@pytest.fixture(scope="module")
def dataset_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The recording's working folder (a data root) with the tiny data set in data/."""
    from tests.daemonkit import DATASET_ROWS, copy_dataset, make_dataset

    data = make_dataset(tmp_path_factory.mktemp("crash-data"), rows=DATASET_ROWS)
    workspace = tmp_path_factory.mktemp("crash-workspace")
    copy_dataset(data, workspace / "data")
    return workspace


# ---- checking one state ------------------------------------------------------------------------


def _sha(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def check_state(run: Run, crash: Crash, state: Path) -> tuple[str, list[str]]:
    """``("recovered" | "refused", problems)`` for the state materialised at ``state``."""
    try:
        store = Store.open(state)
    except SentinelError as exc:
        if str(state) not in str(exc):
            return "refused", [f"refused without naming the file: {exc}"]
        return "refused", []
    except Exception as exc:  # anything else is unclear, hence the finding
        return "refused", [f"start-up raised {type(exc).__name__}: {exc}"]
    try:
        store_state = store.state
    finally:
        store.close(snapshot=False)
    problems = _log_problems(run, crash, state, store_state)
    problems += _artifact_problems(run, crash, state)
    problems += _queue_problems(run, crash, state)
    return "recovered", problems


def _log_problems(run: Run, crash: Crash, state: Path, store_state: Any) -> list[str]:
    records = list(LogScan(state / "events"))
    found = []
    by_seq = {r.seq: r for r in records}
    for a in run.acked(crash.cut, "append"):
        for seq in a.data["seqs"]:
            got = by_seq.get(seq)
            if got is None:
                found.append(f"acknowledged record seq {seq} is lost")
            elif got.payload != run.appended[seq]:
                found.append(f"acknowledged record seq {seq} differs: {got.payload}")
    for r in records:
        if r.payload.get("type") == "log.repaired" and r.seq == records[-1].seq:
            continue
        if run.appended.get(r.seq) != r.payload:
            found.append(f"seq {r.seq} holds a record nobody wrote: {r.payload}")
    if store_state != fold([decode_record(r) for r in records]):
        found.append("the recovered state differs from a full replay of the log")
    for r in records:
        kind = r.payload.get("type")
        if kind in ("trial.saved", "model.promoted") and (
            _sha(state / r.payload["artifact"]) != r.payload["sha256"]
        ):
            found.append(f"{kind} seq {r.seq}: {r.payload['artifact']} missing or not its sha256")
    return found


def _artifact_problems(run: Run, crash: Crash, state: Path) -> list[str]:
    found = []
    for a in run.acked(crash.cut, "save") + run.acked(crash.cut, "export"):
        path = state / a.data["path"]
        if _sha(path) != a.data["sha256"]:
            found.append(f"{a.what} returned, but {a.data['path']} is missing or not whole")
            continue
        meta = path.with_name("meta.json")
        try:
            if orjson.loads(meta.read_bytes())["sha256"] != a.data["sha256"]:
                found.append(f"{meta} names another model")
        except (OSError, orjson.JSONDecodeError, KeyError) as exc:
            found.append(f"{a.data['path']}: meta.json unreadable ({exc})")
    for model in (state / "jobs").rglob("model.ubj") if (state / "jobs").is_dir() else []:
        if ".tmp" in model.as_posix():
            continue
        if _sha(model) not in run.models:
            found.append(f"{model.relative_to(state)} is half-written (matches no saved model)")
    return found


def _queue_problems(run: Run, crash: Crash, state: Path) -> list[str]:
    if not (state / "queue").is_dir():
        return [] if not run.acked(crash.cut, "put") else ["queue/ is gone with acknowledged puts"]
    queue = Queue(state / "queue", on_bad=lambda bad: None)
    queue.recover(older_than_s=0)
    results = {path.name for path, _ in queue.results()}
    found = []
    bad = [p.name for p in queue.bad.iterdir() if not p.name.endswith(".reason")]
    if bad:
        found.append(f"files moved aside as malformed (half-written?): {bad}")
    held: set[str] = set()
    for folder in [queue.pending, *[p for p in queue.workers.iterdir() if p.is_dir()]]:
        for f in folder.glob("*.json"):
            if f.name == "heartbeat.json":
                continue
            try:
                held.add(TrialCommand.model_validate_json(f.read_bytes()).command_id)
            except ValueError as exc:
                found.append(f"{f.relative_to(state)} does not load: {exc}")
    for a in run.acked(crash.cut, "put"):
        cid = a.data["command"]
        # A claim is a rename nobody fsyncs (queue.py: a power cut may undo it, and the
        # daemon queues again every trial running in its log but queued nowhere), so a
        # put's promise ends when a worker starts to claim the command.
        if cid not in held and not _consumed_before(run, crash, "claim", "command", cid):
            found.append(f"command {cid} was put (acknowledged) but is gone")
    for a in run.acked(crash.cut, "post"):
        for name in a.data["names"]:
            if name not in results and not _consumed_before(run, crash, "ack", "name", name):
                found.append(f"result {name} was posted (acknowledged) but is gone")
    return found


def _consumed_before(run: Run, crash: Crash, what: str, key: str, value: str) -> bool:
    """Whether the workload consumed ``value`` (finish, ack) with an op before the cut."""
    for i, a in enumerate(run.acks):
        if a.what == what and a.data.get(key) == value:
            started = run.acks[i - 1].at if i else 0
            return started < crash.cut
    return False


# ---- the sweep --------------------------------------------------------------------------------


def test_every_crash_state_recovers_with_the_invariants_or_refuses_clearly(
    recorded: Run, tmp_path: Path
) -> None:
    run = recorded
    crashes = crashfs.every_cut(run.ops) + crashfs.plan_crashes(
        run.ops, rng("crash-states"), STATES
    )
    counts = {"recovered": 0, "refused": 0}
    problems: list[str] = []
    styles: dict[str, int] = {}
    where = tmp_path / "crash"
    for crash in crashes:
        shutil.rmtree(where, ignore_errors=True)
        crashfs.crash_state(run.recorder.base, run.ops, crash).materialize(where)
        outcome, found = check_state(run, crash, where)
        styles[crash.style] = styles.get(crash.style, 0) + 1
        if found:
            problems.append(f"{crash.describe(run.ops)}:\n    " + "\n    ".join(found))
        else:
            counts[outcome] += 1
    kinds = {op.kind for op in run.ops}
    record(
        "crash states",
        "power cut after any recorded op: unsynced writes lost or torn, unsynced entries undone",
        cases=len(crashes),
        recovered=counts["recovered"],
        refused=counts["refused"],
        violations=len(problems),
        note=f"{len(run.ops)} ops recorded ({', '.join(sorted(kinds))}) over a job of "
        f"{TRIALS} trials; states by kind: {styles}",
    )
    assert not problems, f"{len(problems)} states broke an invariant:\n" + "\n".join(problems[:8])


def test_the_recorder_sees_every_durable_step_of_the_workload(
    recorded: Run, tmp_path: Path
) -> None:
    """Guards the guard: if the recorder missed a write path, the sweep would prove nothing."""
    ops = recorded.ops
    paths = " ".join(op.path for op in ops)
    for fragment in ("events/", "snapshot.json", "queue/pending/", "queue/results/",
                     "model.ubj", "meta.json", "best", "msg_seq"):  # fmt: skip
        assert fragment in paths, f"no op touched {fragment}"
    assert sum(op.kind == "fsync" for op in ops) > 20
    assert sum(op.kind == "write" for op in ops) > 20
    # Replaying every op gives what was on disk at the end, byte for byte.
    replayed = tmp_path / "replayed"
    crashfs.crash_state(recorded.recorder.base, ops, Crash(len(ops))).materialize(replayed)
    got = {
        p.relative_to(replayed).as_posix(): p.read_bytes()
        for p in replayed.rglob("*")
        if p.is_file()
    }
    assert got == recorded.final


# ---- the bugs the sweep found, one by one -----------------------------------------------------


def _durable_only_after(recorder: Recorder, at: int, where: Path) -> Path:
    """Materialise the harshest power cut right after op ``at`` into ``where``."""
    crash = Crash(at, frozenset(crashfs.volatile(recorder.ops, at)), style="only-durable")
    shutil.rmtree(where, ignore_errors=True)
    crashfs.crash_state(recorder.base, recorder.ops, crash).materialize(where)
    return where


def test_a_power_cut_before_the_first_snapshot_keeps_the_event_log_folder(
    tmp_path: Path,
) -> None:
    """The bug: Store.open made events/ and fsynced the segments' entries in it, but not
    events/'s own entry in the state directory (only the first snapshot's rename fsynced
    that, 10,000 records later by default): a power cut could take every record."""
    state = tmp_path / "state"
    state.mkdir()
    recorder = Recorder(state)
    with recorder.installed():
        store = Store.open(state)
        store.append([StageStarted(job_id="j-0000aaaa", stage="prepare")])
        acked = len(recorder.ops)
        store.close(snapshot=False)
    after = _durable_only_after(recorder, acked, tmp_path / "after-cut")
    records = list(LogScan(after / "events"))
    assert [r.payload["type"] for r in records] == ["stage.started"]


def test_a_power_cut_after_a_put_keeps_the_queue_folders_and_the_command(
    tmp_path: Path,
) -> None:
    """The bug: Queue() made queue/ and its folders without fsyncing their entries; put
    fsynced pending/ (the file's entry) but pending/ itself could vanish with it."""
    state = tmp_path / "state"
    state.mkdir()
    recorder = Recorder(state)
    command = TrialCommand(
        job_id="j-0000aaaa",
        trial=0,
        attempt=1,
        model="xgboost",
        params={},
        data=TrialData(
            transactions=Path("d.csv"),
            identity=None,
            cache_dir=Path("cache"),
            test_fraction=0.2,
            valid_fraction=0.2,
        ),
        artifact_dir="jobs/j/trials/0",
        report_every=1,
    )
    with recorder.installed():
        Queue(state / "queue").put(command)
        acked = len(recorder.ops)
    after = _durable_only_after(recorder, acked, tmp_path / "after-cut")
    assert Queue(after / "queue").in_flight() == {command.command_id: None}


# ---- a real daemon on a sample of the states ----------------------------------------------


def test_a_real_daemon_reaches_ready_or_refuses_on_sampled_crash_states(
    recorded: Run, daemons: MakeDaemon
) -> None:
    run = recorded
    r = rng("crash-daemon")
    crashes = crashfs.plan_crashes(run.ops, r, 40)
    picked = [c for c in crashes if c.style != "process-kill" and c.lost]
    picked = picked[:DAEMON_SAMPLES]
    state = run.workspace / "state"
    outcomes = {"recovered": 0, "refused": 0}
    problems: list[str] = []
    for crash in picked:
        shutil.rmtree(state, ignore_errors=True)
        crashfs.crash_state(run.recorder.base, run.ops, crash).materialize(state)
        daemon = daemons(
            run.workspace, settings={**FAULT_SETTINGS, "SENTINEL_SHUTDOWN__GRACE_S": "1"}
        )
        found, outcome = _run_daemon_once(run, crash, daemon)
        if found:
            problems.append(f"{crash.describe(run.ops)}: {'; '.join(found)}")
        else:
            outcomes[outcome] += 1
    record(
        "crash states",
        "a real daemon (sentinel run) started on a sampled crash state",
        cases=len(picked),
        recovered=outcomes["recovered"],
        refused=outcomes["refused"],
        violations=len(problems),
    )
    assert not problems, "\n".join(problems)


def _run_daemon_once(run: Run, crash: Crash, daemon: DaemonProcess) -> tuple[list[str], str]:
    daemon.start()

    def ready_or_gone() -> bool:
        started = any(e["type"] == "daemon.started" for e in daemon.events())
        return started or not daemon.running()

    wait_for(ready_or_gone, timeout=60, what="the daemon to reach READY or exit")
    if not daemon.running():
        code = daemon.wait(10)
        if code == 0:
            return [f"the daemon exited 0 without starting: {daemon.log_text()[-500:]}"], ""
        if "event log" not in daemon.log_text():
            return [f"exited {code} without saying why: {daemon.log_text()[-500:]}"], ""
        return [], "refused"
    daemon.send_signal(signal.SIGTERM)
    daemon.wait(90)
    found = violations(daemon.state_dir, require_promoted=False)
    records = {e["seq"]: e for e in daemon.events()}
    for a in run.acked(crash.cut, "append"):
        for seq in a.data["seqs"]:
            got = records.get(seq)
            want = run.appended[seq]
            if got is None or {k: got.get(k) for k in want} != want:
                found.append(f"acknowledged record seq {seq} lost or changed")
    return found, "recovered"
