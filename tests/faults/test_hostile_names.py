"""Issue 13, class 2 (file names) against a real daemon (``sentinel run``).

Inbox file names that are not UTF-8, too long for what the daemon adds to them, or holding
control characters are rejected under a safe name with a ``.reason`` beside it; the event
records the name escaped; the daemon stays up, also when such a file was left in
``claimed/`` by an older version before a restart; ``sentinel submit`` refuses such names
with a clear error and no traceback. A valid job runs to the end beside them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from sentinel_daemon.layout import MAX_JOB_NAME_BYTES, inbox_name_problem
from tests.daemonkit import job_doc, of_type, write_job
from tests.faults.faultkit import FAULT_SETTINGS, MakeDaemon, violations
from tests.faults.record import record
from tests.helpers import wait_for

#: name (bytes) -> why the inbox refuses it.
HOSTILE_NAMES: dict[bytes, str] = {
    b"caf\xe9.yaml": "is not UTF-8",
    b"n" * 250 + b".yaml": "bytes long",
    b"x" * (MAX_JOB_NAME_BYTES - 3) + b".yml": "bytes long",
    b"clear-\x1b[2J-screen.yaml": "control characters",
    b"forged\nline.json": "control characters",
    b"bell\x07\x9b.yaml": "control characters",
}


def _drop(inbox: Path, name: bytes, data: bytes) -> None:
    """Rename a file into the inbox under the raw ``name`` (the contract's way)."""
    tmp = inbox / ".hostile.tmp"
    tmp.write_bytes(data)
    os.rename(os.fsencode(tmp), os.path.join(os.fsencode(inbox), name))


def _sentinel(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sentinel_daemon.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        errors="surrogateescape",
        timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("SENTINEL_")},
    )


def test_hostile_file_names_are_rejected_under_safe_names_and_never_stop_the_daemon(
    daemons: MakeDaemon, workspace: Path
) -> None:
    daemon = daemons(settings=FAULT_SETTINGS).start()
    daemon.wait_for_event(lambda e: e["type"] == "daemon.started", what="daemon.started")
    inbox = daemon.state_dir / "inbox"
    body = yaml.safe_dump(job_doc("hostile-named", n_trials=1)).encode()
    for name in HOSTILE_NAMES:
        _drop(inbox, name, body)
    daemon.wait_for_event(
        lambda e: len(of_type(daemon.events(), "job.rejected")) >= len(HOSTILE_NAMES),
        timeout=60,
        what=f"{len(HOSTILE_NAMES)} job.rejected events",
    )
    problems: list[str] = []
    rejected = of_type(daemon.events(), "job.rejected")
    for event in rejected:
        shown = event["file"]
        if any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 or 0xD800 <= ord(c) < 0xE000 for c in shown):
            problems.append(f"the event's file is not escaped: {shown!r}")
    reasons = " ".join(e["reason"] for e in rejected)
    for why in set(HOSTILE_NAMES.values()):
        if why not in reasons:
            problems.append(f"no rejection says the name {why}")
    folder = daemon.state_dir / "rejected"
    wait_for(
        lambda: len(os.listdir(folder)) >= 2 * len(HOSTILE_NAMES),
        timeout=30,
        what="each rejected file with its .reason",
    )
    kept = [n for n in os.listdir(os.fsencode(folder)) if not n.endswith(b".reason")]
    if len(kept) != len(HOSTILE_NAMES):
        problems.append(f"rejected/ holds {kept!r}")
    for name in kept:
        text = os.fsdecode(name)
        if inbox_name_problem(text) is not None:
            problems.append(f"kept under an unsafe name: {name!r}")
        if not os.path.exists(os.path.join(os.fsencode(folder), name + b".reason")):
            problems.append(f"no .reason beside {name!r}")
    if os.listdir(inbox) or os.listdir(daemon.state_dir / "claimed"):
        problems.append("files left in inbox/ or claimed/")

    # A file an older version claimed under a bad name must not stop the next start.
    assert daemon.stop() == 0
    claimed = os.path.join(os.fsencode(daemon.state_dir / "claimed"), b"old-\xff\x1b.yaml")
    Path(os.fsdecode(claimed)).write_bytes(body)
    daemon.start()
    daemon.wait_for_event(
        lambda e: e["type"] == "job.rejected" and "old-" in e["file"],
        timeout=60,
        what="the claimed file rejected at start-up",
    )

    # `sentinel submit` refuses such a name, without a traceback.
    bad = Path(os.fsdecode(os.path.join(os.fsencode(workspace), b"sub\xe9\x1b[2J.yaml")))
    bad.write_bytes(body)
    out = _sentinel("submit", "--state-dir", str(daemon.state_dir), str(bad), cwd=workspace)
    if out.returncode != 1 or "Traceback" in out.stderr or "not UTF-8" not in out.stderr:
        problems.append(f"submit of a bad name: {out.returncode} {out.stderr!r}")
    if "\x1b" in out.stderr:
        problems.append(f"submit printed a raw escape: {out.stderr!r}")

    # And a valid job still runs to the end.
    job_id = daemon.submit(write_job(workspace / "jobs", "after-names", n_trials=1))
    daemon.wait_for_job(job_id, timeout=120)
    if not daemon.running():
        problems.append("the daemon exited")
    assert daemon.stop() == 0
    problems += violations(daemon.state_dir)
    record(
        "hostile input",
        "inbox names not UTF-8, too long, with control characters; one left in claimed/",
        cases=len(HOSTILE_NAMES) + 2,
        recovered=0,
        refused=len(HOSTILE_NAMES) + 2,
        violations=len(problems),
    )
    assert not problems, "\n".join(problems)
