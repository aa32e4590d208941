"""A stage process that cannot write its result on a full disk says so in its exit code.

Found by the fuzzer (tests/faults/test_fuzzer.py): with the state directory's disk full, a
job's prepare process could not write its result (not even the error), exited 1, and the
job failed with "the prepare process ended with exit code 1": no reason, and the daemon
could not tell a full disk (a host condition: the stage is run again) from the job's own
failure. The stages folder is on a real, full tmpfs.
"""

from __future__ import annotations

from pathlib import Path

from sentinel_daemon.daemon.hostpause import host_condition
from sentinel_daemon.daemon.stages import PrepareRequest, StageProcess
from sentinel_daemon.queue.messages import TrialData
from tests.helpers import wait_for
from tests.integration.test_disk_full import (
    fill,
    small_disk,  # noqa: F401  (a fixture, used by name)
)


def test_a_stage_whose_result_cannot_be_written_on_a_full_disk_says_the_disk_is_full(
    tmp_path: Path,
    small_disk: Path,  # noqa: F811
) -> None:
    data = TrialData(
        transactions=tmp_path / "missing.csv",  # fails at once: the error result is written
        identity=None,
        cache_dir=small_disk / "cache",
        test_fraction=0.2,
        valid_fraction=0.2,
    )
    stage = StageProcess(small_disk, small_disk / "stages", PrepareRequest(data=data), "prepare")
    fill(small_disk)  # after the request is written, before the result is
    try:
        outcome = wait_for(stage.poll, timeout=60, what="the stage process to end")
    finally:
        stage.kill()
    assert not outcome.ok
    assert outcome.error == (
        "the prepare process could not write its result: [Errno 28] No space left on device"
    )
    assert host_condition(outcome.error)  # so the job's actor runs the stage again
