"""The fuzzer: hostile inputs fed to a real daemon, which must never exit.

One ``sentinel run`` (its state directory on a small tmpfs, so that the disk can be filled)
gets, in a seeded random order (``SENTINEL_FAULTS_SEED``, else
:data:`~tests.faults.fuzzkit.DEFAULT_SEED`, so ``make test`` replays one run):

- job files under hostile names (random bytes, not UTF-8, control characters, up to
  NAME_MAX, dots, a leading ``-``...), and names the inbox ignores by contract;
- job files generated from the job schema with fields past what they allow
  (:func:`~tests.faults.fuzzkit.schema_cases`: every field, every search-space parameter
  of both models);
- job files mutated byte by byte (test_hostile_input's Hypothesis strategy, seeded);
- jobs whose data files are mutated before submission (truncated, unbalanced quotes, NUL
  bytes, a huge field, wrong types...) or changed after acceptance (a FIFO, a link out of
  the data roots, removed, a folder, truncated);
- the state directory's disk filled at random moments, with files landing in the inbox
  while it is full;
- and beside them a good job, which must complete.

The invariants: the daemon process never exits; every input ends as a rejection (the file
in ``rejected/`` with its ``.reason``) or as a job that ended (``job.completed``,
``job.failed`` or ``job.cancelled`` with a reason, read back with the log's own reader), or,
for a name the inbox ignores by contract, is left where it was; the good job completes; the
daemon stops cleanly, starts again on the same state directory and stays up; and ``sentinel
log verify`` passes. Every kind is a row of the fault table. The short run (``make test``)
is a few dozen inputs; ``SENTINEL_FAULTS_SCALE=full`` (``make test-faults``) runs rounds for
:data:`FULL_SECONDS` (``SENTINEL_FUZZ_SECONDS`` changes it).

``SENTINEL_FUZZ_SKIP`` (comma-separated kinds or name kinds) leaves kinds out while
iterating on a fix; the test then fails, so a committed run covers every kind.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import random
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from sentinel_daemon.errors import SentinelError
from sentinel_daemon.log.segments import LogScan
from sentinel_daemon.log.store import decode_record, read_state
from sentinel_daemon.tools.cancel import request_cancel
from tests.daemonkit import (
    IDENTITY,
    TRANSACTIONS,
    DaemonProcess,
    job_doc,
    make_dataset,
    write_job,
)
from tests.diskkit import fill, small_tmpfs
from tests.faults import fuzzkit
from tests.faults.faultkit import FAULT_SETTINGS, EventTail, MakeDaemon, violations
from tests.faults.fuzzkit import Input
from tests.faults.record import full, record
from tests.faults.test_hostile_input import mutated

FULL_SECONDS = float(os.environ.get("SENTINEL_FUZZ_SECONDS", "600"))
TMPFS_SIZE = "1g" if full() else "96m"
#: Inputs of each kind per round.
ROUND = {
    "names": 12 if full() else 9,  # 9: each name kind once
    "schema": 12 if full() else 8,
    "mutants": 4 if full() else 3,
    "data before": 4 if full() else 13,  # 13: each mutation once
    "data after": 4 if full() else 5,  # each change once (at a moment drawn for each)
    "disk full": 1,  # episodes; each drops a few files while the disk is full
}
KIND_NAMES = "inbox file names (random bytes)"
KIND_SCHEMA = "job fields past the schema's range"
KIND_MUTANT = "job files mutated byte by byte (Hypothesis)"
KIND_DATA = "data files mutated before submission"
KIND_AFTER = "data files changed after acceptance"
KIND_FULL = "files landing while the disk is full"
KINDS = (KIND_NAMES, KIND_SCHEMA, KIND_MUTANT, KIND_DATA, KIND_AFTER, KIND_FULL)
SKIP = {s.strip() for s in os.environ.get("SENTINEL_FUZZ_SKIP", "").split(",") if s.strip()}
SETTINGS = {
    **FAULT_SETTINGS,
    "SENTINEL_INBOX__SETTLE_SECONDS": "0.1",
    "SENTINEL_INBOX__RESCAN_SECONDS": "0.3",
}
#: After this many exits in a row within a few seconds of a start, the daemon is down for
#: good (the finding); the run stops feeding it.
MAX_RESTARTS = 3


@pytest.fixture
def state_tmpfs(workspace: Path) -> Iterator[str]:
    """``workspace/state`` on a tmpfs of :data:`TMPFS_SIZE`, so that the disk-full kind can
    fill it; "" when it is, else why not (mounting needs root: the kind is then left out)."""
    with small_tmpfs(workspace / "state", TMPFS_SIZE) as why_not:
        yield why_not


def collect(strategy: st.SearchStrategy[Any], n: int, seed: int) -> list[Any]:
    """``n`` examples of a Hypothesis strategy, the same ones for the same seed."""
    found: list[Any] = []

    @hypothesis_seed(seed)
    @settings(
        max_examples=n,
        database=None,
        phases=[Phase.generate],
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def draw(example: Any) -> None:
        found.append(example)

    draw()
    return found[:n]


# ---- the run -----------------------------------------------------------------------------------


class Fuzz:
    """One daemon fed hostile inputs; tracks what each became, and the daemon's exits."""

    def __init__(self, daemon: DaemonProcess, workspace: Path, seed: int, outside: Path) -> None:
        self.daemon = daemon
        self.workspace = workspace
        self.state = daemon.state_dir
        self.inbox = self.state / "inbox"
        self.seed = seed
        self.rng = fuzzkit.rng_for(seed, "fuzzer")
        self.outside = outside
        self.inputs: list[Input] = []
        self.by_sha: dict[str, Input] = {}
        self.by_job: dict[str, Input] = {}
        self.tail = EventTail(self.state)
        self.exits: list[str] = []
        self.restarts_in_a_row = 0
        self.down = False
        self.pending_cancels: list[str] = []
        self.good_jobs: list[str] = []
        self.schema_cases = fuzzkit.schema_cases()
        self.dataset = {
            TRANSACTIONS: (workspace / "data" / TRANSACTIONS).read_bytes(),
            IDENTITY: (workspace / "data" / IDENTITY).read_bytes(),
        }
        self.outside_rows = 1777
        self.episodes = 0
        self.n = 0
        self.name_kinds = fuzzkit.Deck(self.rng, [k for k in fuzzkit.NAME_KINDS if k not in SKIP])
        self.mutations = fuzzkit.Deck(self.rng, sorted(fuzzkit.DATA_MUTATIONS))
        self.afters = fuzzkit.Deck(self.rng, fuzzkit.AFTER_ACCEPTANCE)
        #: Why the disk cannot be filled here ("" when it can).
        self.no_fill = ""

    # -- inputs --------------------------------------------------------------------------

    def _next(self) -> int:
        self.n += 1
        return self.n

    def add(self, inp: Input) -> Input:
        assert inp.sha256 not in self.by_sha or inp.content == b"", "inputs must be unique"
        self.inputs.append(inp)
        if inp.content:
            self.by_sha[inp.sha256] = inp
        return inp

    def name_input(self) -> Input:
        n = self._next()
        kind = self.name_kinds.draw()
        used = {i.name for i in self.inputs}
        name = fuzzkit.hostile_name(self.rng, kind)
        while name in used or name in (b".", b".."):
            name = fuzzkit.hostile_name(self.rng, kind)
        suffix = b".json" if name.lower().endswith(b".json") else b".yaml"
        valid = self.rng.random() < 0.5
        doc = job_doc(f"fz-name-{n}", n_trials=1 if valid else 0)
        ignored = kind == "ignored by contract"
        return self.add(
            Input(
                n,
                KIND_NAMES,
                kind,
                name,
                fuzzkit.render(doc, suffix, n),
                expect="ignored" if ignored else "end",
                cancel=True,
            )
        )

    def schema_input(self) -> Input:
        n = self._next()
        label, doc = fuzzkit.schema_doc(self.rng, n, self.schema_cases)
        suffix = self.rng.choice((b".yaml", b".json"))
        name = f"fz-schema-{n}".encode() + suffix
        content = fuzzkit.render(doc, suffix, n)
        return self.add(Input(n, KIND_SCHEMA, label, name, content, expect="reject", cancel=True))

    def mutant_inputs(self, count: int) -> list[Input]:
        made = []
        seed = fuzzkit.rng_for(self.seed, f"mutants-{self.n}").randrange(1 << 31)
        for suffix, content in collect(mutated(), count, seed):
            n = self._next()
            tail = fuzzkit.unique_tail(n, suffix.encode())
            name = f"fz-mutant-{n}{suffix}".encode()
            made.append(
                self.add(Input(n, KIND_MUTANT, "mutated", name, content + tail, cancel=True))
            )
        return made

    def data_input(self, after: bool) -> Input:
        n = self._next()
        folder = f"data/fz/{n:05d}"
        files = dict(self.dataset)
        if self.rng.random() < 0.15:
            del files[IDENTITY]
        if after:
            label, when = self.afters.draw(), self.rng.choice(fuzzkit.AFTER_WHEN)
            mutation = None
        else:
            label, files = fuzzkit.mutate_data(self.rng, files, self.mutations.draw())
            mutation = label
        fuzzkit.place(self.workspace / folder, files)
        name, content = fuzzkit.data_job(self.rng, n, folder, files)
        inp = Input(
            n,
            KIND_AFTER if after else KIND_DATA,
            label,
            name,
            content,
            data_dir=folder,
            mutation=mutation,
            after=label if after else None,
        )
        if after:
            inp.after_at = when
            inp.label = f"{label} (at {when})"
        return self.add(inp)

    def full_inputs(self, count: int) -> list[Input]:
        made = []
        for _ in range(count):
            n = self._next()
            what = self.rng.choice(["empty", "invalid", "valid"])
            if what == "empty":
                name, content = f"fz-full-{n}.yaml".encode(), b""
            else:
                doc = job_doc(f"fz-full-{n}", n_trials=1 if what == "valid" else 0)
                name = f"fz-full-{n}.yaml".encode()
                content = fuzzkit.render(doc, b".yaml", n)
            # A valid one is cancelled once accepted: the good job is the one that runs
            # through the full disk (and a short run stays short).
            made.append(self.add(Input(n, KIND_FULL, f"{what} file", name, content, cancel=True)))
        return made

    # -- dropping ------------------------------------------------------------------------

    def stage(self, inp: Input) -> Path:
        """Write the input under a dot-name (ignored by the inbox), ready to be renamed in."""
        tmp = self.inbox / f".fz-{inp.n}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, inp.content)
            os.fsync(fd)
        finally:
            os.close(fd)
        return tmp

    def drop(self, inp: Input, staged: Path | None = None) -> None:
        tmp = staged or self.stage(inp)
        os.rename(bytes(tmp), os.path.join(bytes(self.inbox), inp.name))
        inp.dropped = True

    # -- watching ------------------------------------------------------------------------

    def pump(self) -> None:
        """Read new events, act on them (cancels, changes after acceptance), and restart
        the daemon if it exited (counted)."""
        for e in self.tail.poll():
            if e["type"] == "job.submitted":
                inp = self.by_sha.get(e["file_sha256"])
                if inp is None:
                    continue
                inp.job_id = e["job_id"]
                self.by_job[e["job_id"]] = inp
                if inp.cancel:
                    self.pending_cancels.append(e["job_id"])
                self._after(inp, "job.submitted")
            elif e["type"] == "stage.started" and e["job_id"] in self.by_job:
                self._after(self.by_job[e["job_id"]], e["stage"])
        self._cancel()
        if not self.daemon.running() and not self.down:
            self._exited()

    def _cancel(self) -> None:
        if not self.pending_cancels:
            return
        try:
            state = read_state(self.state)
        except (OSError, SentinelError):
            return
        for job_id in list(self.pending_cancels):
            try:
                request_cancel(self.state, job_id, state, now=datetime.now(UTC))
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    continue  # the disk is full: ask again once it is not
                raise
            except SentinelError:
                pass  # ended already
            self.pending_cancels.remove(job_id)

    def _after(self, inp: Input, moment: str) -> None:
        if inp.after is None or inp.done_after or inp.after_at != moment:
            return
        inp.done_after = True
        assert inp.data_dir is not None
        path = self.workspace / inp.data_dir / TRANSACTIONS
        if inp.after == "truncated":
            os.truncate(path, path.stat().st_size // 2)
            return
        path.unlink()
        if inp.after == "a FIFO":
            os.mkfifo(path)
        elif inp.after == "a link out of the data roots":
            path.symlink_to(self.outside / TRANSACTIONS)
        elif inp.after == "a folder":
            path.mkdir()
        elif inp.after == "removed":
            (self.workspace / inp.data_dir / IDENTITY).unlink(missing_ok=True)

    def _exited(self) -> None:
        code = self.daemon.proc.returncode if self.daemon.proc else None
        last = self.daemon.log_text().splitlines()[-6:]
        self.exits.append(f"exit code {code}; log ends: " + " | ".join(x[:300] for x in last))
        self.restarts_in_a_row += 1
        if self.restarts_in_a_row > MAX_RESTARTS:
            self.down = True
            return
        self.daemon.start()

    def wait(self, done: Any, timeout: float, what: str) -> bool:
        """Pump until ``done()`` or the deadline; whether it came true."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.pump()
            if done():
                if self.daemon.running():
                    self.restarts_in_a_row = 0
                return True
            if self.down:
                return False
            time.sleep(0.02)
        print(f"fuzzer: timed out after {timeout}s waiting for {what}")
        return False

    # -- disk full -----------------------------------------------------------------------

    def disk_full(self, count: int) -> None:
        """At a random moment (after a random number of new events), fill the state dir's
        disk, rename files into the inbox, hold it full for a while, then free it."""
        inputs = self.full_inputs(count)
        staged = [self.stage(i) for i in inputs]
        self.episodes += 1
        start = len(self.tail.events)
        wanted = self.rng.randint(1, 25)
        self.wait(lambda: len(self.tail.events) - start >= wanted, 20, "a random moment")
        filler = fill(self.state)
        try:
            for inp, tmp in zip(inputs, staged, strict=True):
                self.drop(inp, tmp)
            hold = self.rng.uniform(0.5, 4.0)
            deadline = time.monotonic() + hold
            self.wait(lambda: time.monotonic() >= deadline, hold + 1, "the disk to stay full")
        finally:
            filler.unlink()

    # -- rounds --------------------------------------------------------------------------

    def round(self) -> None:
        good = write_job(self.workspace / "jobs", f"fz-good-{self._next()}", n_trials=2)
        self.good_jobs.append(self.daemon.submit(good))
        plan: list[Any] = []
        kinds = {
            KIND_NAMES: lambda: self.name_input(),
            KIND_SCHEMA: lambda: self.schema_input(),
            KIND_DATA: lambda: self.data_input(after=False),
            KIND_AFTER: lambda: self.data_input(after=True),
        }
        counts = dict(
            zip(
                kinds,
                (ROUND["names"], ROUND["schema"], ROUND["data before"], ROUND["data after"]),
                strict=True,
            )
        )
        for kind, make in kinds.items():
            if kind not in SKIP:
                plan += [make() for _ in range(counts[kind])]
        if KIND_MUTANT not in SKIP:
            plan += self.mutant_inputs(ROUND["mutants"])
        if KIND_FULL not in SKIP and not self.no_fill:
            plan += ["disk full"] * ROUND["disk full"]
        self.rng.shuffle(plan)
        for item in plan:
            if self.down:
                return
            if item == "disk full":
                self.disk_full(self.rng.randint(2, 4))
            else:
                self.drop(item)
            self.pump()

    def settled(self) -> bool:
        """Every input dropped has an outcome in the live log, and the good jobs ended."""
        events = self.tail.events
        ended = {e["job_id"] for e in events if e["type"] in END_TYPES}
        if any(j not in ended for j in self.good_jobs):
            return False
        if any(i.job_id and i.job_id not in ended for i in self.inputs):
            return False
        waiting = [i for i in self.inputs if i.dropped and i.expect != "ignored"]
        decided = sum(1 for e in events if e["type"] in ("job.submitted", "job.rejected"))
        return decided >= len(waiting) + len(self.good_jobs) and not self.pending_cancels


END_TYPES = ("job.completed", "job.failed", "job.cancelled")
#: A reason that says how a process ended but not why (issue 13, class 5): not a reason.
VAGUE = re.compile(r"ended with (exit code -?\d+|signal \d+[^:]*)$")


# ---- the verdict -------------------------------------------------------------------------------


def judge(fz: Fuzz) -> None:
    """Give each input its outcome from the log (its own reader) and ``rejected/``."""
    events = [decode_record(r) for r in LogScan(fz.state / "events")]
    submitted = {e.file_sha256: e for e in events if e.type == "job.submitted"}
    ends = {e.job_id: e for e in events if e.type in END_TYPES}  # type: ignore[union-attr]
    prepared = {
        e.job_id: e.outputs  # type: ignore[union-attr]
        for e in events
        if e.type == "stage.completed" and e.stage == "prepare"  # type: ignore[union-attr]
    }
    rejected_dir = os.path.join(bytes(fz.state), b"rejected")
    rejected: dict[bytes, bytes] = {}
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(rejected_dir):
            if not name.endswith(b".reason"):
                with open(os.path.join(rejected_dir, name), "rb") as fh:
                    rejected[name] = fh.read()
    by_content: dict[str, bytes] = {}
    for name, data in rejected.items():
        if data:
            by_content[hashlib.sha256(data).hexdigest()] = name
    reasons = [(e.file, e.reason) for e in events if e.type == "job.rejected"]  # type: ignore[union-attr]
    n_rejected_events = len(reasons)
    for inp in fz.inputs:
        if not inp.dropped:
            inp.outcome = "not dropped"
            continue
        if inp.expect == "ignored":
            here = os.path.lexists(os.path.join(bytes(fz.inbox), inp.name))
            inp.outcome = "ignored (left in the inbox)" if here else "ignored file went missing"
            if not here:
                inp.problems.append("a name the inbox ignores by contract was taken")
            continue
        sub = submitted.get(inp.sha256) if inp.content else None
        if sub is not None:
            end = ends.get(sub.job_id)  # type: ignore[union-attr]
            if end is None:
                inp.outcome = "accepted, never ended"
                inp.problems.append(f"job {sub.job_id} never ended")  # type: ignore[union-attr]
                continue
            inp.outcome = end.type
            inp.detail = getattr(end, "reason", "")
            if end.type != "job.completed" and not inp.detail.strip():
                inp.problems.append(f"{end.type} without a reason")
            elif VAGUE.search(inp.detail):
                inp.problems.append(f"{end.type} without saying why: {inp.detail!r}")
            if inp.expect == "reject":
                inp.problems.append(f"accepted a job file past the schema: {inp.label}")
            rows = prepared.get(sub.job_id, {}).get("rows")  # type: ignore[union-attr]
            if inp.after == "a link out of the data roots" and rows == fz.outside_rows:
                inp.problems.append("read a data file outside the data roots")
            continue
        name = inp.name if inp.name in rejected else None
        if name is None and inp.content:
            name = by_content.get(inp.sha256)
        if name is None:
            inp.outcome = "no outcome"
            where = [
                d
                for d in ("inbox", "claimed")
                if os.path.lexists(os.path.join(bytes(fz.state), d.encode(), inp.name))
            ]
            inp.problems.append(f"never rejected nor accepted (still in: {where or 'nowhere'})")
            continue
        inp.outcome = "rejected"
        reason = os.path.join(rejected_dir, name + b".reason")
        try:
            with open(reason, "rb") as fh:
                inp.detail = fh.read().decode("utf-8", "replace").strip()
        except FileNotFoundError:
            # On a full disk the .reason may not be writable: the reason is then in the
            # log only (job.rejected), which is where it must be.
            said = [r for r in reasons if r[0].endswith("/" + inp.name.decode(errors="replace"))]
            if inp.kind == KIND_FULL and said and said[0][1].strip():
                inp.outcome = "rejected (reason in the log only: the disk was full)"
                inp.detail = said[0][1]
            else:
                inp.problems.append("rejected without a .reason beside it")
        if not inp.detail and not inp.problems:
            inp.problems.append("rejected with an empty reason")
    matched = sum(1 for i in fz.inputs if i.outcome.startswith("rejected"))
    if n_rejected_events < matched:
        fz.inputs[0].problems.append(
            f"{matched} files in rejected/ but {n_rejected_events} job.rejected events"
        )


def record_rows(fz: Fuzz, extra: dict[str, list[str]]) -> list[str]:
    """One fault-table row per kind and the run's own rows; every problem, as lines."""
    problems: list[str] = []
    for kind in KINDS:
        mine = [i for i in fz.inputs if i.kind == kind and i.dropped]
        outcomes = Counter(i.outcome for i in mine)
        labels = Counter(i.label for i in mine)
        bad = [i for i in mine if i.problems]
        problems += [f"{kind} #{i.n} {i.label} {i.name!r}: {'; '.join(i.problems)}" for i in bad]
        ok = [i for i in mine if not i.problems]
        refused = sum(1 for i in ok if i.outcome.startswith("rejected"))
        note = f"{kind} (seed {fz.seed}): outcomes {dict(outcomes)}"
        if kind in (KIND_NAMES, KIND_DATA, KIND_AFTER, KIND_FULL):
            note += f"; by kind {dict(labels)}"
        completed = sorted({i.label for i in mine if i.outcome == "job.completed"})
        if kind in (KIND_DATA, KIND_AFTER) and completed:
            note += f"; completed: {completed}"
        if kind == KIND_FULL:
            note += f"; {fz.episodes} disk-full episodes"
        if kind in SKIP:
            problems.append(f"{kind}: left out by SENTINEL_FUZZ_SKIP")
        if kind == KIND_FULL and fz.no_fill:
            note += f"; left out: {fz.no_fill}"
        record(
            "fuzzer",
            kind,
            cases=len(mine),
            recovered=len(ok) - refused,
            refused=refused,
            violations=len(bad),
            note=note,
        )
    for what, found in extra.items():
        record(
            "fuzzer",
            what,
            cases=1,
            recovered=0 if found else 1,
            violations=len(found),
            note=f"{what}: {'; '.join(found)[:400]}" if found else "",
        )
        problems += [f"{what}: {f}" for f in found]
    return problems


def log_verify(state: Path) -> tuple[int, str]:
    done = subprocess.run(
        [sys.executable, "-m", "sentinel_daemon.cli", "log", "verify", "--state-dir", str(state)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.returncode, (done.stdout + done.stderr).strip()


@pytest.mark.timeout(2400 if full() else 300)
def test_hostile_inputs_never_stop_the_daemon_and_each_ends_with_a_reason(
    state_tmpfs: str,
    daemons: MakeDaemon,
    workspace: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    seed = fuzzkit.fuzz_seed()
    print(
        f"fuzzer seed {seed} (rerun with {fuzzkit.SEED_ENV}={seed}), scale "
        f"{'full' if full() else 'short'}"
    )
    outside = make_dataset(tmp_path_factory.mktemp("outside-the-roots"), rows=1777, seed=3)
    daemon = daemons(settings=SETTINGS).start()
    daemon.wait_for_event(lambda e: e["type"] == "daemon.started", what="daemon.started")
    fz = Fuzz(daemon, workspace, seed, outside)
    fz.no_fill = state_tmpfs
    started = time.monotonic()
    rounds = 0
    while not fz.down:
        fz.round()
        rounds += 1
        if not full() or time.monotonic() - started > FULL_SECONDS:
            break
        # Let the round's jobs drain a little before the next, so the queue stays bounded.
        fz.wait(fz.settled, 120, "the round to settle")
    settled = fz.wait(fz.settled, 600 if full() else 150, "every input to end")
    fed_s = time.monotonic() - started

    extra: dict[str, list[str]] = {"daemon process: exits while fuzzed": list(fz.exits)}
    if not settled and not fz.down:
        extra["daemon process: exits while fuzzed"].append("inputs still open at the deadline")
    good = []
    events = daemon.events()
    for job in fz.good_jobs:
        end = next((e for e in events if e["type"] in END_TYPES and e["job_id"] == job), None)
        if end is None or end["type"] != "job.completed" or VAGUE.search(end.get("reason", "")):
            said = f"{end['type']}: {end['reason']}" if end else "no end"
            good.append(f"good job {job}: {said}")
    extra["a good job beside them completes"] = good

    restart: list[str] = []
    if daemon.running():
        code = daemon.stop()
        if code != 0:
            restart.append(f"stopped with exit code {code}")
    starts = sum(1 for e in daemon.events() if e["type"] == "daemon.started")
    daemon.start()
    up = fz.wait(
        lambda: sum(1 for e in daemon.events() if e["type"] == "daemon.started") > starts,
        60,
        "the restarted daemon",
    )
    if up:
        daemon.drop("fz-probe.yaml", b"name: [\n")
        if not fz.wait(
            lambda: any(
                e["type"] == "job.rejected" and "fz-probe" in e["file"] for e in daemon.events()
            ),
            30,
            "the probe to be rejected",
        ):
            restart.append("the restarted daemon did not reject a probe")
    else:
        restart.append("the daemon did not start again on the same state directory")
    if daemon.running():
        code = daemon.stop()
        if code != 0:
            restart.append(f"the restarted daemon stopped with exit code {code}")
    else:
        restart.append(f"the restarted daemon exited: {fz.exits[-1:] or daemon.log_text()[-500:]}")
    rc, out = log_verify(daemon.state_dir)
    if rc != 0:
        restart.append(f"sentinel log verify exit {rc}: {out[-500:]}")
    restart += violations(daemon.state_dir, require_promoted=False)
    extra["restart on the same state dir, then sentinel log verify"] = restart

    judge(fz)
    problems = record_rows(fz, extra)
    outcomes = Counter(i.outcome for i in fz.inputs if i.dropped)
    print(
        f"fuzzer: seed {seed}, {rounds} rounds, {sum(i.dropped for i in fz.inputs)} inputs in "
        f"{fed_s:.0f}s, {fz.episodes} disk-full episodes, outcomes {dict(outcomes)}, "
        f"daemon exits {len(fz.exits)}"
    )
    summary = {
        "seed": seed,
        "rounds": rounds,
        "seconds": round(fed_s),
        "episodes": fz.episodes,
        "by_kind": {
            k: Counter(i.outcome for i in fz.inputs if i.kind == k and i.dropped) for k in KINDS
        },
        "exits": fz.exits,
    }
    print("fuzzer summary: " + orjson.dumps(summary).decode())
    assert not problems, "\n".join(problems[:40])


def test_collect_is_the_same_for_the_same_seed() -> None:
    """The mutated job files a seed gives do not change from one run to the next."""
    assert collect(mutated(), 5, 7) == collect(mutated(), 5, 7)
    rng_a, rng_b = random.Random(3), random.Random(3)
    names = [fuzzkit.hostile_name(rng_a, k) for k in fuzzkit.NAME_KINDS]
    assert names == [fuzzkit.hostile_name(rng_b, k) for k in fuzzkit.NAME_KINDS]
    assert all(0 < len(n) <= fuzzkit.NAME_MAX and b"/" not in n and b"\0" not in n for n in names)


def test_every_data_mutation_applies_to_both_files(dataset: Path) -> None:
    files = {name: (dataset / name).read_bytes() for name in (TRANSACTIONS, IDENTITY)}
    for label, mutation in fuzzkit.DATA_MUTATIONS.items():
        for data in files.values():
            for seed in range(3):
                assert mutation(random.Random(seed), data) != data or label == "CRLF line ends"


def test_every_schema_case_is_refused_by_the_job_check(tmp_path: Path) -> None:
    """The schema generator's cases are all invalid (so "rejected" is the only right
    outcome in the daemon), and they reach every field and every search-space parameter."""
    from sentinel_daemon.core.jobspec import JobSpecError
    from sentinel_daemon.core.space import MODELS, default_space
    from sentinel_daemon.jobfile import parse_job_file

    (tmp_path / "data").mkdir()
    for name in (TRANSACTIONS, IDENTITY):
        (tmp_path / "data" / name).write_text("TransactionID\n1\n")
    cases = fuzzkit.schema_cases()
    accepted = []
    for i, case in enumerate(cases):
        label, doc = fuzzkit.schema_doc(random.Random(i), i, [case])
        for suffix in (b".yaml", b".json"):
            path = tmp_path / f"case-{i}{suffix.decode()}"
            path.write_bytes(fuzzkit.render(doc, suffix, i))
            try:
                parse_job_file(path, data_roots=[tmp_path], base_dir=tmp_path)
            except JobSpecError:
                continue
            accepted.append(f"{label} ({suffix.decode()})")
    assert not accepted, accepted
    labels = " ".join(c.label for c in cases)
    leaves = [leaf.path for leaf in fuzzkit.schema_leaves()]
    assert {"name", "data.transactions", "search.n_trials", "quality_gate.min_test_auc"} <= set(
        leaves
    )
    for leaf in leaves:
        assert f"{leaf}:" in labels, f"no case for {leaf}"
    for model in MODELS:
        for param in default_space(model):
            for what in ("below its bounds", "above its bounds", "NaN", "reversed", "empty list"):
                assert f"search.space.{model}.{param}: {what}" in labels
