"""Every shell and jq recipe in README.md, docs/*.md and events/README.md runs against a real
log of several segments, so that none can rot.

The log comes from real daemons on tiny jobs: a first run with the default segment size
(a completed job, a rejected file), then a second run with ``eventlog.segment_bytes`` at
its minimum, so the log rotates into several segments (a completed job and a failed one).
The daemons' own output stands in for the journal.

A recipe is a statement of a ``sh`` block that reads the event log or the journal: a block
one of whose statements calls ``jq`` or ``journalctl``, or names ``events/``, ``sentinel
tail`` or ``sentinel log verify`` (an assignment in it, ``line=$(...)``, is run before
each of its recipes). The other blocks (installing, systemctl) need a host and are not
run. Each recipe runs as written under ``bash -o pipefail``, with only these substitutions:

- ``/var/lib/sentinel`` is the test's state directory; so are ``$STATE``,
  ``SENTINEL_STATE_DIR`` and ``STATE`` (a link in the working folder);
- the example job ids (``ieee-fraud-87a58110``, ``ieee-fraud-1a2b3c4d``) are a real job's;
- ``journalctl`` is ``tests/journalcli.py`` over the daemons' output: the second daemon runs
  with ``JOURNAL_STREAM`` naming its log file, so its lines carry their ``<N>`` priorities
  as under systemd, and the stand-in filters (``-p``) and strips them as journald does;
- ``sentinel`` is this tree's, and ``jq`` is libjq behind ``tests/jqcli.py`` (always, so
  a machine without jq runs every recipe) and a jq binary where there is one.

A recipe must exit 0 with nothing on stderr and print something. One that follows the
log (``-f``, ``-F``) must print the records of a job appended after it printed the past.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sentinel_daemon.log.store import Store
from tests.daemonkit import (
    DaemonProcess,
    copy_dataset,
    is_event,
    make_dataset,
    read_events,
    write_job,
)
from tests.helpers import wait_for
from tests.jobevents import running

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "events" / "README.md"]
EXAMPLE_JOB_IDS = ("ieee-fraud-87a58110", "ieee-fraud-1a2b3c4d")
RECIPE = re.compile(r"\bjq\b|\bjournalctl\b|events/|\bsentinel tail\b|\bsentinel log verify\b")
FOLLOWS = re.compile(r"\btail\b[^|]*\s(-f|-F|--follow)(\s|$)")


# ---- the recipes ------------------------------------------------------------------------


@dataclass(frozen=True)
class Recipe:
    where: str  # file:line of its block
    command: str
    #: Assignments earlier in the same block that it may use (``line=$(...)``).
    setup: tuple[str, ...] = ()

    @property
    def follows(self) -> bool:
        return bool(FOLLOWS.search(self.command))


def statements(block: str) -> Iterator[str]:
    """The shell statements of a block: continued lines joined, quotes and heredocs whole."""
    lines = block.splitlines()
    i = 0
    while i < len(lines):
        text = lines[i]
        i += 1
        heredoc = re.search(r"<<-?\s*'?(\w+)'?", text)
        if heredoc:
            while i < len(lines) and lines[i].strip() != heredoc[1]:
                text += "\n" + lines[i]
                i += 1
            i += 1
        while (text.rstrip().endswith("\\") or text.count("'") % 2) and i < len(lines):
            text += "\n" + lines[i]
            i += 1
        if text.strip() and not text.lstrip().startswith("#"):
            yield text


def recipes() -> list[Recipe]:
    found = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for block in re.finditer(r"^```(sh|bash)\n(.*?)^```$", text, flags=re.M | re.S):
            where = f"{doc.relative_to(REPO)}:{text[: block.start()].count(chr(10)) + 1}"
            parts = list(statements(block[2]))
            if not any(RECIPE.search(part) for part in parts):
                continue  # a block for a host (installing, systemctl): not run here
            setup: list[str] = []
            for statement in parts:
                if re.match(r"^\w+=", statement):
                    setup.append(statement)
                else:
                    found.append(Recipe(where, statement, tuple(setup)))
    return found


RECIPES = recipes()


def test_the_docs_hold_the_recipes_this_test_is_meant_to_run() -> None:
    per_doc: dict[str, int] = {}
    for recipe in RECIPES:
        doc = recipe.where.split(":")[0]
        per_doc[doc] = per_doc.get(doc, 0) + 1
    assert per_doc.get("README.md", 0) >= 4, per_doc
    assert per_doc.get("docs/install.md", 0) >= 6, per_doc
    assert per_doc.get("events/README.md", 0) >= 15, per_doc
    assert sum(r.follows for r in RECIPES) >= 4
    assert any("gzip -c" in r.command for r in RECIPES)
    # Every statement that pipes into jq is a recipe here: none is left out unnoticed.
    for doc in DOCS:
        for block in re.findall(r"^```(?:sh|bash)\n(.*?)^```$", doc.read_text(), re.M | re.S):
            for statement in statements(block):
                if "jq" in statement:
                    assert any(r.command == statement for r in RECIPES), statement


# ---- a real log of several segments -----------------------------------------------------


@dataclass(frozen=True)
class Site:
    state_dir: Path
    journal: Path
    job_id: str


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("recipes")
    copy_dataset(make_dataset(tmp_path_factory.mktemp("recipes-data")), root / "data")
    bad = root / "data" / "bad"
    bad.mkdir()
    for name in ("train_transaction.csv", "train_identity.csv"):
        (bad / name).write_text("TransactionID,isFraud\n1,0\n2,1\n")  # no TransactionDT
    jobs = root / "jobs"
    first_file = write_job(jobs, "fraud", models=("xgboost", "lightgbm"), n_trials=2)
    second_file = write_job(jobs, "fraud-nightly", n_trials=3, seed=2)
    broken_file = write_job(jobs, "fraud-broken", n_trials=1, data_dir="data/bad")
    log_file = root / "daemon.log"
    log_file.touch()  # both daemons append to it: the second one's journal stream
    st = os.stat(log_file)
    daemons = [
        DaemonProcess(root),
        DaemonProcess(
            root,
            settings={
                "SENTINEL_EVENTLOG__SEGMENT_BYTES": "4096",
                "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}",
            },
        ),
    ]
    try:
        first = daemons[0].start()
        job_id = first.submit(first_file)
        first.drop("typo.yaml", b"name: Fraud Model\nmodels: [svm]\n")
        first.wait_for_event(is_event("job.rejected"), what="the bad file rejected")
        first.wait_for_job(job_id)
        assert first.stop() == 0
        second = daemons[1].start()
        second.wait_for_job(second.submit(second_file))
        broken = second.submit(broken_file)
        second.wait_for_event(is_event("job.failed", job_id=broken), what="the broken job failed")
        assert second.stop() == 0
        state_dir = root / "state"
        segments = sorted((state_dir / "events").glob("*.jsonl"))
        assert len(segments) >= 3, segments
        assert len(segments[0].read_text().splitlines()) >= 24  # events/README.md's sed -n 24p
        journal = root / "journal.txt"
        output = daemons[1].log_text().splitlines()
        journal.write_text(
            "\n".join(line for line in output if not line.startswith("=== harness:")) + "\n"
        )
        yield Site(state_dir, journal, job_id)
    finally:
        for daemon in daemons:
            daemon.cleanup()


@dataclass
class Shell:
    """Where recipes run: a copy of the site's state (followers append to it)."""

    cwd: Path
    state_dir: Path
    env: dict[str, str]
    job_id: str

    def script(self, recipe: Recipe) -> str:
        lines = [*recipe.setup, recipe.command]
        text = "\n".join(lines).replace("/var/lib/sentinel", str(self.state_dir))
        for example in EXAMPLE_JOB_IDS:
            text = text.replace(example, self.job_id)
        return "set -o pipefail\n" + text


@pytest.fixture
def shell(site: Site, jq_dir: Path, tmp_path: Path) -> Shell:
    state_dir = tmp_path / "state"
    shutil.copytree(site.state_dir / "events", state_dir / "events")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "STATE").symlink_to(state_dir)
    journalctl = jq_dir / "journalctl"  # the stand-in, first on PATH beside jq
    journalctl.write_text(
        f'#!/bin/sh\nexec "{sys.executable}" "{REPO / "tests" / "journalcli.py"}" "$@"\n'
    )
    journalctl.chmod(0o755)
    path = os.pathsep.join([str(jq_dir), str(Path(sys.executable).parent), os.environ["PATH"]])
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENTINEL_")}
    env |= {
        "PATH": path,
        "STATE": str(state_dir),
        "SENTINEL_STATE_DIR": str(state_dir),
        "JOURNAL": str(site.journal),
    }
    return Shell(cwd, state_dir, env, site.job_id)


def run_once(shell: Shell, recipe: Recipe) -> None:
    done = subprocess.run(
        ["bash", "-c", shell.script(recipe)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=shell.cwd,
        env=shell.env,
    )
    what = f"{recipe.where}: {recipe.command}"
    assert done.returncode == 0, f"{what}\nexit {done.returncode}: {done.stderr}"
    assert done.stderr == "", f"{what}\n{done.stderr}"
    assert done.stdout.strip(), f"{what}\nprinted nothing"
    if re.search(r"journalctl\b.*-p warning", recipe.command):  # what needs a person, alone
        levels = {json.loads(line)["level"] for line in done.stdout.splitlines()}
        assert levels and levels <= {"warning", "error", "critical"}, (what, levels)
    if "gzip -c" in recipe.command or "jq -r .crc" in recipe.command:
        assert re.fullmatch(r"[0-9a-f]{8}\n", done.stdout), (what, done.stdout)


def test_the_two_ways_to_read_a_records_crc_agree(shell: Shell) -> None:
    """events/README.md computes a line's CRC-32 with gzip and reads it with jq: the same."""
    (gzip_way,) = [r for r in RECIPES if "gzip -c" in r.command]
    (jq_way,) = [r for r in RECIPES if "jq -r .crc" in r.command]
    outputs = [
        subprocess.run(
            ["bash", "-c", shell.script(r)],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=shell.cwd,
            env=shell.env,
            check=True,
        ).stdout
        for r in (gzip_way, jq_way)
    ]
    assert outputs[0] == outputs[1] and re.fullmatch(r"[0-9a-f]{8}\n", outputs[0]), outputs


def append_job(state_dir: Path, job: str) -> None:
    """A running job's records (two trials saved), appended as the daemon would."""
    store = Store.open(state_dir, segment_bytes=1 << 20)  # no rotation: see tail -F
    try:
        store.append(running(job))
    finally:
        store.close(snapshot=False)


def run_following(shell: Shell, recipe: Recipe) -> None:
    """A follower prints the records of a job appended while it runs.

    A first job is appended before it starts: once its records are printed, the follower
    has read the past and is following; the records of a second job, appended then, can
    only reach it by following.
    """
    append_job(shell.state_dir, "before-start")
    proc = subprocess.Popen(
        ["bash", "-c", shell.script(recipe)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=shell.cwd,
        env=shell.env,
        start_new_session=True,
    )
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.extend(iter(proc.stdout.readline, "")))  # type: ignore[union-attr]
    reader.start()
    what = f"{recipe.where}: {recipe.command}"

    def printed(job: str) -> bool:
        if proc.poll() is not None:
            pytest.fail(f"{what}\nit ended: {proc.stderr.read()}")  # type: ignore[union-attr]
        return any(job in line for line in list(out))

    try:
        wait_for(lambda: printed("before-start"), timeout=30, what=f"{what} to print the past")
        append_job(shell.state_dir, "while-following")
        wait_for(lambda: printed("while-following"), timeout=30, what=f"{what} to follow")
    finally:
        with contextlib.suppress(ProcessLookupError):  # it may have ended on its own
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        reader.join(timeout=30)
        err = proc.stderr.read() if proc.stderr else ""
        for stream in (proc.stdout, proc.stderr):
            if stream:
                stream.close()
    assert err == "", f"{what}\n{err}"


@pytest.mark.parametrize("recipe", RECIPES, ids=[f"{r.where} {r.command[:40]}" for r in RECIPES])
def test_the_recipe_runs_on_a_real_multi_segment_log(shell: Shell, recipe: Recipe) -> None:
    if recipe.follows:
        run_following(shell, recipe)
    else:
        run_once(shell, recipe)


def test_the_log_under_test_has_many_segments_and_every_kind_of_ending(site: Site) -> None:
    events = read_events(site.state_dir)
    types = {e["type"] for e in events}
    assert {"job.completed", "job.failed", "job.rejected", "model.promoted"} <= types
    assert [e["type"] for e in events].count("daemon.started") == 2
