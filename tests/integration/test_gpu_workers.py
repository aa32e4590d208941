"""GPU and CPU workers side by side, on a machine without a GPU: ``workers.gpus: [0]``.

A real ``sentinel run`` with a pinned GPU starts a GPU worker and a CPU worker; XGBoost
trials go to the GPU worker (which, finding no CUDA device here, trains on the CPU and
says so) and LightGBM trials to the CPU worker; the workers' threads sum to at most the
cores; ``sentinel status`` and the metrics say which worker has which GPU and threads.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sentinel_daemon.ml.devices import discover_gpus
from tests.daemonkit import (
    DATASET_ROWS,
    DaemonProcess,
    check_invariants,
    copy_dataset,
    make_dataset,
    of_type,
    write_job,
)
from tests.helpers import wait_for

#: One GPU worker on "GPU 0" and one CPU worker, whatever the cores of the test machine.
SIDE_BY_SIDE = {
    "SENTINEL_WORKERS__GPUS": "[0]",
    "SENTINEL_WORKERS__PER_GPU": "1",
    "SENTINEL_WORKERS__CPU": "1",
}


@pytest.fixture
def daemon(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    dataset = make_dataset(tmp_path_factory.mktemp("gpu-workers-data"), rows=DATASET_ROWS)
    copy_dataset(dataset, tmp_path / "data")
    made = DaemonProcess(tmp_path, workers=None, settings=SIDE_BY_SIDE)
    yield made
    made.cleanup()


def _worker_of(artifact: str) -> str:
    """The worker id in ``jobs/J/trials/N/<attempt>-<worker>/model...``."""
    return PurePosixPath(artifact).parent.name.split("-", 1)[1]


def test_xgboost_trials_run_on_the_gpu_worker_and_lightgbm_on_the_cpu_worker(
    daemon: DaemonProcess,
) -> None:
    daemon.start()
    job_id = daemon.submit(
        write_job(
            daemon.root / "jobs", "sides", models=("xgboost", "lightgbm"), n_trials=2, parallelism=2
        )
    )
    daemon.wait_for_job(job_id, timeout=180)
    events = check_invariants(daemon.state_dir)

    started = {e["worker"]: e for e in of_type(events, "worker.started")}
    kinds = {w: (e["gpu"], e["device"]) for w, e in started.items()}
    assert sorted(kinds.values(), key=str) == sorted([(0, "gpu"), (None, "cpu")], key=str)
    assert all(e["v"] == 2 for e in started.values())
    # Every worker's threads together: at most the cores this daemon may use.
    assert sum(e["threads"] for e in started.values()) <= len(os.sched_getaffinity(0))
    gpu_worker = next(w for w, e in started.items() if e["device"] == "gpu")
    cpu_worker = next(w for w, e in started.items() if e["device"] == "cpu")
    assert started[gpu_worker]["threads"] == 1

    saved = of_type(events, "trial.saved", job_id=job_id)
    assert len(saved) == 4
    by_model = {(e["model"], _worker_of(e["artifact"])) for e in saved}
    assert by_model == {("xgboost", gpu_worker), ("lightgbm", cpu_worker)}

    # The GPU worker found no CUDA device here, said so once, and trained on the CPU.
    if not discover_gpus():
        (line,) = [
            r
            for r in daemon.log_records()
            if r.get("event") == "worker.started" and r.get("worker") == gpu_worker
        ]
        assert line["cuda"] is False and "train on the CPU" in line["note"]
        assert line["threads"] == 1 and line["lane"] == "gpu"

    # sentinel status: each worker with its GPU (or none) and threads.
    status = subprocess.run(
        [sys.executable, "-m", "sentinel_daemon.cli", "status", "--json"],
        env={**daemon.env, "SENTINEL_STATE_DIR": str(daemon.state_dir)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert status.returncode == 0, status.stderr
    rows = {w["worker"]: w for w in json.loads(status.stdout)["workers"]}
    assert rows[gpu_worker]["gpu"] == 0 and rows[gpu_worker]["device"] == "gpu"
    assert rows[gpu_worker]["threads"] == 1
    assert rows[cpu_worker]["device"] == "cpu" and rows[cpu_worker]["threads"] >= 1

    # The metrics: workers and threads by device.
    port = wait_for(
        lambda: next(
            (r["port"] for r in daemon.log_records() if r.get("event") == "metrics.serving"),
            None,
        ),
        what="the metrics port",
    )

    def series() -> dict[tuple[str, str], float] | None:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        found = {
            (s.name, s.labels.get("device", "")): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name in ("sentinel_workers", "sentinel_worker_threads")
        }
        return found if found.get(("sentinel_workers", "gpu")) == 1 else None

    got = wait_for(series, what="the workers' series sampled")
    assert got[("sentinel_workers", "cpu")] == 1
    assert got[("sentinel_worker_threads", "gpu")] == 1
    assert got[("sentinel_worker_threads", "cpu")] == rows[cpu_worker]["threads"]
    assert daemon.stop() == 0
