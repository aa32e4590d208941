"""A worker over ``resources.worker_memory_max_bytes`` is killed and its trial retried.

The ``memory`` test fault makes the worker hold :data:`FAULT_MEMORY_BYTES` more at its
trial's first report. A normal worker (Python, XGBoost, LightGBM, the tiny data set)
peaks near 270 MiB resident here, so a 450 MiB ceiling leaves room on both sides.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from sentinel_daemon.daemon.service import EXIT_OK
from sentinel_daemon.worker.faults import FAULT_MEMORY_BYTES
from tests.daemonkit import (
    DATASET_ROWS,
    DaemonProcess,
    check_invariants,
    copy_dataset,
    make_dataset,
    of_type,
    summary,
    write_job,
)

MIB = 1 << 20
CEILING = 450 * MIB


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("ceiling-data"), rows=DATASET_ROWS)


@pytest.fixture
def daemon(tmp_path: Path, dataset: Path) -> Iterator[DaemonProcess]:
    copy_dataset(dataset, tmp_path / "data")
    made = DaemonProcess(
        tmp_path,
        settings={
            "SENTINEL_METRICS__PORT": "0",
            "SENTINEL_RESOURCES__WORKER_MEMORY_MAX_BYTES": CEILING,
            "SENTINEL_RESOURCES__SAMPLE_EVERY_S": "0.2",
        },
        faults={"0@1": "memory"},  # the first attempt only: the retry runs normally
    )
    yield made
    was_running = made.running()
    killed = made.cleanup()
    print("\n".join(made.log_text().splitlines()[-150:]))
    print(summary(made.events()))
    if killed and not was_running:
        pytest.fail(f"processes outlived their daemon: {killed}")


def test_a_worker_over_its_memory_ceiling_is_killed_and_its_trial_retried(
    daemon: DaemonProcess,
) -> None:
    assert FAULT_MEMORY_BYTES + 200 * MIB > CEILING  # the faulting worker goes over
    daemon.start()
    job_id = daemon.submit(write_job(daemon.root / "jobs", "hungry", n_trials=2))
    daemon.wait_for_job(job_id)
    events = check_invariants(daemon.state_dir)

    (lost,) = of_type(events, "worker.lost")  # the normal workers stayed under it
    assert "memory ceiling" in lost["reason"] and f"({CEILING} bytes)" in lost["reason"]
    assert lost["signal"] == signal.SIGKILL
    (failed,) = of_type(events, "trial.failed", job_id=job_id)
    assert failed["trial"] == 0 and failed["attempt"] == 1 and failed["retry"] is True
    assert "memory ceiling" in failed["error"] and "MiB" in failed["error"]
    (saved,) = of_type(events, "trial.saved", job_id=job_id, trial=0)
    assert "/2-" in saved["artifact"]  # the second attempt's model
    assert len(of_type(events, "worker.started")) == 2  # the slot was restarted
    killed = [
        r for r in daemon.log_records() if r.get("event") == "supervisor.worker_killed_on_request"
    ]
    assert [r["worker"] for r in killed] == [lost["worker"]]
    assert daemon.stop() == EXIT_OK
