"""A stage child process that dies of a signal is reported with what the signal means."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from sentinel_daemon.daemon.stages import PrepareRequest, StageOutcome, StageProcess
from sentinel_daemon.queue.messages import TrialData
from tests.helpers import wait_for


def _start(tmp_path: Path) -> StageProcess:
    missing = tmp_path / "never-written.csv"  # the child is killed before it reads anything
    data = TrialData(
        transactions=missing,
        identity=None,
        cache_dir=tmp_path / "cache",
        test_fraction=0.2,
        valid_fraction=0.2,
    )
    return StageProcess(
        tmp_path / "state", tmp_path / "stages", PrepareRequest(data=data), "prepare"
    )


def _killed_with(tmp_path: Path, signum: int) -> StageOutcome:
    stage = _start(tmp_path)
    try:
        os.killpg(stage.pid, signum)
        return wait_for(stage.poll, timeout=30, what="the stage process to end")
    finally:
        stage.kill()


def test_a_stage_killed_by_sigkill_names_the_out_of_memory_killer(tmp_path: Path) -> None:
    outcome = _killed_with(tmp_path, signal.SIGKILL)
    assert not outcome.ok
    assert outcome.error.startswith("the prepare process ended with signal 9 (SIGKILL)")
    assert "out-of-memory killer" in outcome.error and "journalctl -k" in outcome.error


def test_a_stage_ended_by_another_signal_names_only_the_signal(tmp_path: Path) -> None:
    outcome = _killed_with(tmp_path, signal.SIGTERM)
    assert outcome.error == "the prepare process ended with signal 15 (SIGTERM)"
