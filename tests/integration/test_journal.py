"""The daemon's own log, as journald and an operator see it, from a real ``sentinel run``.

- Job outcomes are log lines at fitting levels, with journald priorities when stderr is
  the journal stream (``JOURNAL_STREAM`` names the log file here, as systemd would name
  the journal's socket), in the daemon's lines and in its workers'.
- The workers run with the daemon's settings, from a file and the environment alike.
- At ``SENTINEL_LOGGING__LEVEL=warning`` neither the daemon nor a worker writes ``info``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.daemonkit import (
    DATASET_ROWS,
    IDENTITY,
    JOURNAL_PREFIX,
    TRANSACTIONS,
    DaemonProcess,
    check_invariants,
    copy_dataset,
    make_dataset,
    of_type,
    summary,
    write_job,
)

#: syslog priorities: what ``journalctl -p warning`` shows is 4 and below.
PRIORITY = {"debug": 7, "info": 6, "warning": 4, "error": 3}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("journal-data"), rows=DATASET_ROWS)


@pytest.fixture
def workspace(tmp_path: Path, dataset: Path) -> Iterator[Path]:
    copy_dataset(dataset, tmp_path / "data")
    # A data set without the columns a job needs: its job fails in `prepare`.
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / TRANSACTIONS).write_text("TransactionID,TransactionDT\n1,10\n2,20\n")
    (bad / IDENTITY).write_text("TransactionID\n1\n")
    yield tmp_path


def finish(daemon: DaemonProcess) -> None:
    was_running = daemon.running()
    killed = daemon.cleanup()
    print("\n".join(daemon.log_text().splitlines()[-150:]))
    print(summary(daemon.events()))
    if killed and not was_running:
        pytest.fail(f"processes outlived their daemon: {killed}")


def lines(daemon: DaemonProcess) -> list[tuple[int | None, dict[str, Any]]]:
    """Each structured line of the daemon's output: its ``<N>`` priority (or None), and it."""
    out: list[tuple[int | None, dict[str, Any]]] = []
    for line in daemon.log_text().splitlines():
        match = JOURNAL_PREFIX.match(line)
        body = line[match.end() :] if match else line
        if body.startswith("{"):
            out.append((int(match[1]) if match else None, orjson.loads(body)))
    return out


def test_job_outcomes_reach_the_journal_at_their_priority_and_workers_share_the_settings(
    workspace: Path,
) -> None:
    log_file = workspace / "daemon.log"
    log_file.touch()  # the harness appends to it: the journal stream's device and inode
    st = os.stat(log_file)
    config = workspace / "sentinel.yaml"
    config.write_text("queue:\n  seq_block: 7\n")
    daemon = DaemonProcess(
        workspace,
        settings={
            "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}",
            "SENTINEL_CONFIG": str(config),
            "SENTINEL_QUEUE__POLL_INTERVAL_S": "0.02",
        },
    )
    try:
        daemon.start()
        good = daemon.submit(write_job(workspace / "jobs", "good", n_trials=2))
        daemon.wait_for_job(good)
        bad = daemon.submit(write_job(workspace / "jobs", "bad", data_dir="bad"))
        daemon.wait_for_event(
            lambda e: e["type"] == "job.failed" and e["job_id"] == bad, what="the bad job's end"
        )
        daemon.drop("Not A Name.yaml", b"name: Not A Name\n")
        daemon.wait_for_event(lambda e: e["type"] == "job.rejected", what="the rejection")
        assert daemon.stop() == 0
        check_invariants(daemon.state_dir)

        seen = lines(daemon)
        by_event: dict[str, list[tuple[int | None, dict[str, Any]]]] = {}
        for priority, record in seen:
            assert priority == PRIORITY[record["level"]], record  # every line, every process
            by_event.setdefault(record["event"], []).append((priority, record))
        ((prio, completed),) = by_event["job.completed"]
        assert (prio, completed["job_id"], completed["promoted"]) == (6, good, True)
        ((prio, failed),) = by_event["job.failed"]
        assert (prio, failed["job_id"], failed["stage"]) == (3, bad, "prepare")
        assert failed["reason"] == of_type(daemon.events(), "job.failed")[0]["reason"]
        ((prio, rejected),) = by_event["job.rejected"]
        assert prio == 4 and "Not A Name.yaml" in rejected["file"]
        # `journalctl -p warning`: what went wrong, and nothing of what went well.
        urgent = {record["event"] for priority, record in seen if priority is not None}
        urgent = {e for e in urgent if min(p for p, r in by_event[e] if p is not None) <= 4}
        assert {"job.failed", "job.rejected"} <= urgent
        assert not {"job.completed", "job.submitted", "worker.started"} & urgent

        # The worker logged in the daemon's format, with the daemon's settings...
        (ready,) = [r for _, r in seen if r["event"] == "daemon.ready"]
        workers = [r for _, r in seen if r["event"] == "worker.started" and "device" in r]
        assert workers and all(w["settings"] == ready["settings"] for w in workers), workers
        # ... its queue numbers reserved in blocks of the file's queue.seq_block.
        reserved = [int(p.read_text()) for p in daemon.state_dir.glob("queue/workers/*/msg_seq")]
        assert reserved and all(n % 7 == 0 for n in reserved), reserved
    finally:
        finish(daemon)


def test_at_level_warning_neither_the_daemon_nor_its_workers_write_info(workspace: Path) -> None:
    daemon = DaemonProcess(workspace, settings={"SENTINEL_LOGGING__LEVEL": "warning"})
    try:
        daemon.start()
        job = daemon.submit(write_job(workspace / "jobs", "quiet", n_trials=2))
        daemon.wait_for_job(job)
        bad = daemon.submit(write_job(workspace / "jobs", "loud", data_dir="bad"))
        daemon.wait_for_event(
            lambda e: e["type"] == "job.failed" and e["job_id"] == bad, what="the bad job's end"
        )
        assert daemon.stop() == 0
        events = check_invariants(daemon.state_dir)
        assert of_type(events, "worker.started") and of_type(events, "trial.saved")
        records = daemon.log_records()
        assert {r["level"] for r in records} <= {"warning", "error"}, sorted(
            {(r["level"], r["event"]) for r in records}
        )
        assert [r["job_id"] for r in records if r["event"] == "job.failed"] == [bad]
    finally:
        finish(daemon)
