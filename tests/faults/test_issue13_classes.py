"""Issue 13's classes 1, 4, 5, 7 and 8, each against a real daemon (``sentinel run``).

Classes 2 (file names) and 6 (terminal injection) have their own files
(``test_hostile_names.py``, ``test_terminal_injection.py``); class 3 (disk full) is
``tests/integration/test_disk_full.py`` (recorded by ``test_disk_full_recorded.py``).
RELIABILITY.md lists which test covers which class.

1. A job the search would refuse, recorded by an older version: it fails at start-up, the
   daemon stays up and runs the next job; ``submit`` and the inbox refuse such a file.
4. Data files swapped after acceptance for a FIFO or a link out of the data roots: the job
   fails naming the file, nothing blocks, the daemon stops promptly.
5. A CSV with an unterminated quote, and one with a 30 MB header field: the job fails with a
   ``DataError`` naming file and line, not "exit code 1".
7. A duplicated line in a record the snapshot covers, then a stray empty segment: the daemon
   runs, says the log is damaged (health.json, status, its log), never writes into the stray
   segment and starts again.
8. ``events/`` as a file, a segment that is a folder: start-up exits with a named error, no
   traceback.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
import yaml

from sentinel_daemon.core.events import JobSubmitted
from sentinel_daemon.jobfile import parse_job_file
from sentinel_daemon.log.store import Store
from tests.daemonkit import IDENTITY, TRANSACTIONS, job_doc, of_type, write_job
from tests.faults.faultkit import FAULT_SETTINGS, MakeDaemon, kill_everything, violations
from tests.faults.record import record
from tests.helpers import wait_for

ENDS = ("job.completed", "job.failed", "job.cancelled")


def _sentinel(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENTINEL_")}
    return subprocess.run(
        [sys.executable, "-m", "sentinel_daemon.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def _job_with_data(workspace: Path, name: str, folder: str, **kwargs: object) -> Path:
    """A job file reading ``data/<folder>/``, a copy of the data set of its own."""
    own = workspace / "data" / folder
    own.mkdir(parents=True, exist_ok=True)
    for f in (TRANSACTIONS, IDENTITY):
        (own / f).write_bytes((workspace / "data" / f).read_bytes())
    return write_job(workspace / "jobs", name, data_dir=f"data/{folder}", **kwargs)  # type: ignore[arg-type]


def test_class_1_a_recorded_job_the_search_refuses_fails_at_start_and_the_daemon_stays_up(
    daemons: MakeDaemon, workspace: Path
) -> None:
    state = workspace / "state"
    good = write_job(workspace / "jobs", "bounds-base", n_trials=1)
    parsed = parse_job_file(good, data_roots=[workspace], base_dir=workspace)
    raw = orjson.loads(orjson.dumps(parsed.raw))
    raw["name"] = "old-bounds"
    raw["search"]["space"] = {"xgboost": {"max_depth": [2, 500]}}
    old_id = "old-bounds-00000001"
    store = Store.open(state)  # what an older version recorded, before one validator
    store.append(
        [JobSubmitted(job_id=old_id, name="old-bounds", spec=raw, file="x", file_sha256="0" * 64)]
    )
    store.close()
    daemon = daemons(settings=FAULT_SETTINGS).start()
    failed = daemon.wait_for_event(
        lambda e: e["type"] == "job.failed" and e["job_id"] == old_id, what="the old job failed"
    )
    assert "leaves the bounds" in failed["reason"], failed
    # The one validator refuses such a file at submission and in the inbox.
    bad = workspace / "jobs" / "bounds.yaml"
    bad.write_text(yaml.safe_dump(job_doc("bounds", space={"xgboost": {"max_depth": [2, 500]}})))
    refused = _sentinel(["submit", "--state-dir", str(state), str(bad)], workspace)
    assert refused.returncode == 1 and "leaves the bounds" in refused.stderr, refused
    daemon.drop("bounds.yaml", bad.read_bytes())
    rejected = daemon.wait_for_event(
        lambda e: e["type"] == "job.rejected", what="the out-of-bounds file rejected"
    )
    assert "leaves the bounds" in rejected["reason"]
    daemon.wait_for_job(daemon.submit(write_job(workspace / "jobs", "after", n_trials=1)))
    assert daemon.stop() == 0
    daemon.start()  # and again: the failed job stays failed, the start stays up
    daemon.wait_for_event(lambda e: e["type"] == "daemon.started" and e["seq"] > 3)
    time.sleep(0.5)  # let it take a turn or two: it must still be running after them
    assert daemon.running()
    assert daemon.stop() == 0
    problems = violations(daemon.state_dir)
    record(
        "one validator",
        "a recorded job out of the search's bounds; the same file submitted and dropped",
        cases=3,
        recovered=0,
        refused=3,
        violations=len(problems),
    )
    assert not problems, problems


def test_classes_4_and_5_swapped_and_misread_data_fail_their_job_naming_the_file(
    daemons: MakeDaemon, workspace: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    outside = tmp_path_factory.mktemp("outside-roots") / "secret.csv"
    outside.write_bytes((workspace / "data" / TRANSACTIONS).read_bytes())
    jobs = {
        "fifo": _job_with_data(workspace, "fifo", "fifo", n_trials=2),
        "link": _job_with_data(workspace, "link", "link", n_trials=2),
    }
    quote = _job_with_data(workspace, "quote", "quote", n_trials=1)
    rows = (workspace / "data" / "quote" / TRANSACTIONS).read_bytes().split(b"\n")
    rows[3] = b'"' + rows[3]  # data row 3: an unterminated quote
    (workspace / "data" / "quote" / TRANSACTIONS).write_bytes(b"\n".join(rows))
    huge = _job_with_data(workspace, "huge", "huge", n_trials=1)
    header, rest = (workspace / "data" / "huge" / TRANSACTIONS).read_bytes().split(b"\n", 1)
    (workspace / "data" / "huge" / TRANSACTIONS).write_bytes(
        header + b",x" + b"y" * (30 << 20) + b"\n" + rest
    )
    daemon = daemons(settings=FAULT_SETTINGS).start()
    ids = {name: daemon.submit(path) for name, path in jobs.items()}
    wait_for(
        lambda: all(of_type(daemon.events(), "job.submitted", job_id=i) for i in ids.values()),
        timeout=60,
        what="both jobs recorded",
    )
    kill_everything(daemon)  # the files change while no daemon runs: accepted, then swapped
    assert not [e for e in daemon.events() if e["type"] in ENDS], "a job ended before the swap"
    fifo = workspace / "data" / "fifo" / TRANSACTIONS
    fifo.unlink()
    os.mkfifo(fifo)
    link = workspace / "data" / "link" / TRANSACTIONS
    link.unlink()
    link.symlink_to(outside)
    daemon.start()
    ids |= {"quote": daemon.submit(quote), "huge": daemon.submit(huge)}
    good = daemon.submit(write_job(workspace / "jobs", "beside", n_trials=1))
    daemon.wait_for_job(good, timeout=180)
    problems = []
    for name, job_id in ids.items():
        end = daemon.wait_for_event(
            lambda e, j=job_id: e["type"] in ENDS and e.get("job_id") == j,  # type: ignore[misc]
            timeout=120,
            what=f"job {name} to end",
        )
        reason = end.get("reason", "")
        if end["type"] != "job.failed" or TRANSACTIONS not in reason:
            problems.append(f"{name}: {end['type']} {reason!r}")
        if "exit code" in reason:
            problems.append(f"{name}: the reason is only an exit code: {reason!r}")
    for name, words in (("quote", "line 4"), ("huge", "line 1")):
        reason = of_type(daemon.events(), "job.failed", job_id=ids[name])[0]["reason"]
        if "DataError" not in reason or words not in reason:
            problems.append(f"{name}: {reason!r} names no {words}")
    t0 = time.monotonic()
    assert daemon.stop(timeout=60) == 0
    if time.monotonic() - t0 > 30:
        problems.append(f"stopping took {time.monotonic() - t0:.0f} s")
    problems += violations(daemon.state_dir)
    record(
        "hostile data",
        "data swapped for a FIFO / a link out of the roots after acceptance; an unterminated "
        "quote; a 30 MB header field; a good job beside",
        cases=4,
        recovered=0,
        refused=4,
        violations=len(problems),
    )
    assert not problems, "\n".join(problems)


def test_class_7_damage_under_the_snapshot_is_said_and_a_stray_segment_is_left_alone(
    daemons: MakeDaemon, workspace: Path
) -> None:
    daemon = daemons(settings=FAULT_SETTINGS).start()
    daemon.wait_for_job(daemon.submit(write_job(workspace / "jobs", "before", n_trials=1)))
    assert daemon.stop() == 0  # a snapshot at the clean stop covers every record
    events_dir = daemon.state_dir / "events"
    first = sorted(events_dir.glob("*.jsonl"))[0]
    lines = first.read_bytes().split(b"\n")
    lines.insert(2, lines[1])  # line 3 repeats line 2
    first.write_bytes(b"\n".join(lines))
    daemon.start()
    health = daemon.state_dir / "health.json"
    wait_for(
        lambda: b'"damage"' in health.read_bytes(), timeout=30, what="health.json to say damage"
    )
    said = orjson.loads(health.read_bytes())
    assert said["status"] == "degraded" and first.name in said["damage"][0], said
    assert "line 3" in said["damage"][0]
    status = _sentinel(["status", "--state-dir", str(daemon.state_dir)], workspace)
    assert "EVENT LOG DAMAGED" in status.stdout and first.name in status.stdout, status.stdout
    assert '"log.damaged"' in daemon.log_text()
    daemon.wait_for_job(daemon.submit(write_job(workspace / "jobs", "while", n_trials=1)))
    assert daemon.stop() == 0
    stray = events_dir / f"{10**7:020d}.jsonl"
    stray.touch()
    for _ in range(2):  # it runs, and starts again, never writing into the stray segment
        daemon.start()
        daemon.wait_for_event(lambda e: e["type"] == "daemon.started" and e["pid"] == daemon.pid)
        assert daemon.stop() == 0
    assert stray.stat().st_size == 0
    record(
        "log damage",
        "a duplicated line under the snapshot, a stray empty segment (real daemon)",
        cases=2,
        recovered=2,
    )


@pytest.mark.parametrize("damage", ["events-a-file", "segment-a-folder"])
def test_class_8_an_unusable_log_stops_start_up_with_a_named_error_no_traceback(
    daemons: MakeDaemon, workspace: Path, damage: str
) -> None:
    state = workspace / "state"
    state.mkdir()
    if damage == "events-a-file":
        (state / "events").write_bytes(b"not a folder\n")
        named = "events"
    else:
        (state / "events" / "00000000000000000001.jsonl").mkdir(parents=True)
        named = "00000000000000000001.jsonl"
    daemon = daemons(settings=FAULT_SETTINGS).start()
    code = daemon.wait(60)
    text = daemon.log_text()
    assert code not in (0, -signal.SIGKILL), code
    assert "Traceback" not in text, text[-2000:]
    assert named in text and "event log" in text, text[-2000:]
    if damage == "segment-a-folder":  # the harness reads the log at teardown
        (state / "events" / named).rmdir()
    record(
        "log damage",
        f"unusable log at start-up: {damage} (real daemon)",
        cases=1,
        recovered=0,
        refused=1,
    )
