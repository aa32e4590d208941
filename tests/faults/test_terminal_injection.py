"""Issue 13, class 6 (terminal injection) against a real daemon (``sentinel run``).

File names, data paths and the errors about them hold ESC, BEL, CR, LF and C1 controls;
the daemon records them (a rejected file, a rejected job, a job that fails on its data).
``sentinel tail`` (also ``-f``), ``status``, ``wait`` and their error messages print each
of them escaped, one record a line; ``--json`` keeps the exact text.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import orjson
import yaml

from tests.daemonkit import TRANSACTIONS, job_doc, job_id_of
from tests.faults.faultkit import FAULT_SETTINGS, MakeDaemon, violations
from tests.faults.record import record
from tests.helpers import wait_for

#: What must never reach a terminal raw: C0 controls (but the newline that ends a line),
#: DEL and C1 controls.
RAW_CONTROL = {chr(c) for c in (*range(0x20), 0x7F, *range(0x80, 0xA0))} - {"\n"}
EVIL = "\x1b[2J\x1b]0;pwned\x07\r\x9b31m"


def _sentinel(args: list[str], cwd: Path, **kw: object) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENTINEL_")}
    return subprocess.run(
        [sys.executable, "-m", "sentinel_daemon.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        errors="surrogateescape",
        timeout=60,
        env=env,
        **kw,  # type: ignore[arg-type]
    )


def _raw_controls(text: str) -> list[str]:
    return sorted({repr(c) for c in text if c in RAW_CONTROL})


def test_values_from_outside_are_printed_escaped_by_tail_status_and_wait(
    daemons: MakeDaemon, workspace: Path
) -> None:
    daemon = daemons(settings=FAULT_SETTINGS).start()
    daemon.wait_for_event(lambda e: e["type"] == "daemon.started", what="daemon.started")
    state = str(daemon.state_dir)
    # A data file whose name holds the escapes, with an unterminated quote in its third
    # row: accepted (it is a file under a root), then the job fails on it, naming it.
    evil_csv = workspace / "data" / f"tx{EVIL}.csv"
    rows = (workspace / "data" / TRANSACTIONS).read_bytes().split(b"\n")
    rows[3] = b'"' + rows[3]
    evil_csv.write_bytes(b"\n".join(rows))
    doc = job_doc("evil-data", n_trials=1)
    doc["data"] = {"transactions": f"data/{evil_csv.name}"}
    job_file = workspace / "evil-data.yaml"
    job_file.write_text(yaml.safe_dump(doc))
    job_id = daemon.submit(job_file)
    assert job_id == job_id_of(job_file)
    daemon.drop(f"named{EVIL.replace(chr(13), '')}.yaml", b"name: [\n")  # a rejected file
    end = daemon.wait_for_event(
        lambda e: e["type"] in ("job.failed", "job.completed") and e.get("job_id") == job_id,
        timeout=120,
        what="the job on the evil data file to end",
    )
    daemon.wait_for_event(lambda e: e["type"] == "job.rejected", what="the evil name rejected")
    recorded = [e for e in daemon.events() if "\x1b" in orjson.dumps(e).decode("unicode_escape")]
    assert recorded, "no record holds the escapes: the test would prove nothing"
    assert end["type"] == "job.failed", end

    problems: list[str] = []
    outputs = {
        "tail": _sentinel(["tail", "--all", "--state-dir", state], workspace),
        "status": _sentinel(["status", "--state-dir", state], workspace),
        "status JOB": _sentinel(["status", "--state-dir", state, job_id], workspace),
        "wait": _sentinel(["wait", "--state-dir", state, job_id, "--timeout", "5"], workspace),
        "unknown job": _sentinel(["status", "--state-dir", state, f"x{EVIL}"], workspace),
    }
    lines: list[str] = []
    follower = subprocess.Popen(
        [sys.executable, "-m", "sentinel_daemon.cli", "tail", "-f", "--all", "--state-dir", state],
        cwd=workspace,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors="surrogateescape",
    )
    assert follower.stdout is not None and follower.stderr is not None
    reader = threading.Thread(target=lambda: lines.extend(follower.stdout or ()), daemon=True)
    reader.start()
    try:
        wait_for(lambda: len(lines) > 0, timeout=30, what="tail -f to print the past")
        daemon.drop(f"late{EVIL.replace(chr(13), '')}.yaml", b"name: [\n")
        wait_for(
            lambda: any("late" in line for line in lines),
            timeout=30,
            what="tail -f to print the late rejection",
        )
    finally:
        follower.send_signal(signal.SIGTERM)
        follower.wait(timeout=30)
        reader.join(timeout=30)
    err = follower.stderr.read()
    outputs["tail -f"] = subprocess.CompletedProcess(follower.args, 0, "".join(lines), err)
    for what, done in outputs.items():
        for stream, text in (("stdout", done.stdout), ("stderr", done.stderr)):
            if found := _raw_controls(text):
                problems.append(f"{what} printed raw {found} on {stream}")
            if "Traceback" in text:
                problems.append(f"{what} printed a traceback: {text[-500:]}")
    if "\\x1b[2J" not in outputs["tail"].stdout:
        problems.append("tail does not show the escape visibly")
    if "\\x1b[2J" not in outputs["wait"].stderr or outputs["wait"].returncode != 1:
        problems.append(f"wait: {outputs['wait'].returncode} {outputs['wait'].stderr!r}")
    if "late\\\\x1b" not in outputs["tail -f"].stdout:  # escaped in the event, again here
        problems.append(f"tail -f did not show the late record: {outputs['tail -f'].stdout!r}")

    # --json keeps the exact text.
    as_json = _sentinel(["tail", "--all", "--json", "--state-dir", state], workspace)
    exact = [orjson.loads(line) for line in as_json.stdout.splitlines()]
    if not any("\x1b[2J" in str(e.get("reason", "")) for e in exact if e["type"] == "job.failed"):
        problems.append("tail --json lost the exact text")
    status_json = orjson.loads(
        _sentinel(["status", "--json", "--state-dir", state, job_id], workspace).stdout
    )
    if EVIL[:4] not in orjson.dumps(status_json).decode("unicode_escape"):
        problems.append("status --json lost the exact text")

    assert daemon.running(), "the daemon exited"
    assert daemon.stop() == 0
    problems += violations(daemon.state_dir)
    record(
        "terminal injection",
        "ESC, BEL, CR and C1 in a data file name, its error and rejected names; "
        "tail, tail -f, status, wait, errors",
        cases=len(outputs),
        recovered=len(outputs) - len(problems),
        refused=0,
        violations=len(problems),
    )
    assert not problems, "\n".join(problems)
