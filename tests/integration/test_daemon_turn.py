"""The core loop's turn, driven by hand in-process where its order of steps matters."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.daemonkit import (
    in_process_daemon,
    job_id_of,
    make_dataset,
    of_type,
    read_events,
    write_job,
)
from tests.helpers import wait_for


def test_a_command_taken_back_in_the_turn_of_the_orphan_check_fails_for_the_workers_loss(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A lost worker's commands are taken out of its folder, then recorded as lost later in
    # the same turn. The check for commands that left the queue without a result must not
    # run in between: it would fail the trial for the wrong reason (CI saw exactly that).
    make_dataset(tmp_path / "data", rows=500)
    daemon = in_process_daemon(tmp_path, monkeypatch)
    job_file = write_job(tmp_path / "jobs", "orphan")
    job_id = job_id_of(job_file)
    command_id = f"{job_id}.0.1"

    def scenario() -> None:
        os.rename(job_file, tmp_path / "state" / "inbox" / job_file.name)

        def dispatched() -> bool:
            daemon.turn(time.monotonic())
            return (daemon.queue.pending / f"{command_id}.json").exists()

        wait_for(dispatched, 120, "trial 0 to be dispatched")
        # A worker no daemon started (sentinel-worker@) claims it and is never heard from.
        claimed = daemon.queue.claim("ext0")
        assert claimed is not None and claimed.command.command_id == command_id
        daemon._next_external_check = daemon._next_orphan_check = 0.0  # both due this turn
        daemon.turn(time.monotonic())
        daemon.stop_state.signals = 1

    monkeypatch.setattr(daemon, "_serve", scenario)
    daemon.run()

    events = read_events(tmp_path / "state")
    (lost,) = of_type(events, "worker.lost", worker="ext0")
    (failed,) = of_type(events, "trial.failed", job_id=job_id, trial=0)
    assert failed["seq"] > lost["seq"] and failed["attempt"] == 1 and failed["retry"] is True
    assert "external worker: no heartbeat" in failed["error"], failed["error"]
