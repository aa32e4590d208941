"""GPU and CPU workers side by side: the thread budget, routing by model, the queue's lanes.

Pure functions (the plan, the routing rules) and the queue directory on real files.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sentinel_daemon.daemon.dispatch.plan import WorkerSpec, plan_workers
from sentinel_daemon.queue.maildir import PutOutcome, Queue
from sentinel_daemon.queue.messages import TrialCommand, TrialData
from sentinel_daemon.queue.routing import Device, lane_for, lanes_in_use, wanted_device
from sentinel_daemon.settings import ModelSettings

# ---- the thread budget ------------------------------------------------------------------


@pytest.mark.parametrize("cores", [1, 2, 3, 4, 7, 16, 64])
@pytest.mark.parametrize("gpus", [[], [0], [0, 1], list(range(8))])
@pytest.mark.parametrize("per_gpu", [1, 2, 4])
def test_automatic_workers_never_take_more_threads_than_the_cores(
    cores: int, gpus: list[int], per_gpu: int
) -> None:
    plan = plan_workers(cores=cores, gpus=gpus, per_gpu=per_gpu, cpu=None, count=None)
    assert all(w.threads >= 1 for w in plan.workers)
    if len(gpus) < cores:  # one GPU worker a GPU at the least, each with a thread
        assert plan.threads <= cores and not plan.oversubscribed
    assert plan.count("gpu") >= len(gpus)
    assert {w.gpu for w in plan.workers if w.gpu is not None} == set(gpus)


def test_the_issue_host_gets_two_workers_on_its_gpu_and_cpu_workers_on_the_rest() -> None:
    plan = plan_workers(cores=16, gpus=[0], per_gpu=2, cpu=None, count=None)
    assert plan.workers[:2] == (WorkerSpec(0, 1), WorkerSpec(0, 1))
    assert plan.workers[2:] == (WorkerSpec(None, 2),) * 7
    assert plan.threads == 16 and plan.lanes == {"gpu", "cpu"}


def test_a_two_core_host_with_a_pinned_gpu_runs_one_gpu_and_one_cpu_worker() -> None:
    plan = plan_workers(cores=2, gpus=[0], per_gpu=2, cpu=None, count=None)
    assert plan.workers == (WorkerSpec(0, 1), WorkerSpec(None, 1))


def test_a_cpu_only_host_keeps_its_workers_as_before() -> None:
    # Two cores, no GPU: one worker with both cores, as before GPU workers had a budget.
    assert plan_workers(cores=2, gpus=[], per_gpu=2, cpu=None, count=None).workers == (
        WorkerSpec(None, 2),
    )
    # --workers N: N CPU workers sharing the cores (cores // N each, at least one).
    assert plan_workers(cores=8, gpus=[], per_gpu=2, cpu=None, count=3).workers == (
        (WorkerSpec(None, 2),) * 3
    )
    assert plan_workers(cores=2, gpus=[], per_gpu=2, cpu=None, count=0).workers == ()


def test_a_worker_count_fills_the_gpus_first_then_cpu_workers() -> None:
    plan = plan_workers(cores=16, gpus=[0, 1], per_gpu=2, cpu=0, count=6)
    assert [w.gpu for w in plan.workers] == [0, 1, 0, 1, None, None]
    assert [w.threads for w in plan.workers] == [1, 1, 1, 1, 6, 6]
    only_gpu = plan_workers(cores=16, gpus=[0], per_gpu=2, cpu=None, count=1)
    assert only_gpu.workers == (WorkerSpec(0, 1),) and only_gpu.lanes == frozenset()


def test_explicit_cpu_workers_share_the_cores_left_and_zero_means_none() -> None:
    plan = plan_workers(cores=16, gpus=[0], per_gpu=2, cpu=3, count=None)
    assert plan.workers[2:] == (WorkerSpec(None, 4),) * 3 and plan.threads == 14
    none = plan_workers(cores=16, gpus=[0], per_gpu=2, cpu=0, count=None)
    assert none.workers == (WorkerSpec(0, 1), WorkerSpec(0, 1)) and none.lanes == frozenset()


def test_more_workers_asked_for_than_cores_is_flagged_oversubscribed() -> None:
    plan = plan_workers(cores=2, gpus=[], per_gpu=2, cpu=5, count=None)
    assert len(plan.workers) == 5 and plan.oversubscribed


# ---- routing ------------------------------------------------------------------------------


def test_xgboost_needs_a_gpu_worker_and_lightgbm_a_cpu_worker_by_default() -> None:
    models = ModelSettings()
    assert wanted_device("xgboost", models) == "gpu"
    assert wanted_device("lightgbm", models) == "cpu"


@pytest.mark.parametrize(
    ("xgboost", "lightgbm", "expected"),
    [
        ("cpu", "cpu", ("cpu", "cpu")),
        ("gpu", "cuda", ("gpu", "gpu")),
        ("gpu", "opencl", ("gpu", "gpu")),
    ],
)
def test_the_model_settings_choose_the_kind_of_worker(
    xgboost: str, lightgbm: str, expected: tuple[Device, Device]
) -> None:
    models = ModelSettings.model_validate(
        {"xgboost": {"device": xgboost}, "lightgbm": {"device": lightgbm}}
    )
    assert (wanted_device("xgboost", models), wanted_device("lightgbm", models)) == expected


def test_lanes_exist_only_when_both_kinds_of_worker_run() -> None:
    assert lanes_in_use({"gpu", "cpu"}) == {"gpu", "cpu"}
    for kinds in [set(), {"gpu"}, {"cpu"}]:
        lanes = lanes_in_use(kinds)  # type: ignore[arg-type]
        assert lanes == frozenset()
        # No lane: the shared pending/, which every worker serves; nothing waits forever.
        assert lane_for("gpu", lanes) is None and lane_for("cpu", lanes) is None
    assert lane_for(None, frozenset({"gpu", "cpu"})) is None  # an old command


# ---- the queue's lanes -------------------------------------------------------------------


def command(trial: int, model: str, device: Device | None, attempt: int = 1) -> TrialCommand:
    return TrialCommand(
        job_id="fraud-1",
        trial=trial,
        attempt=attempt,
        model=model,
        params={"n_estimators": 10},
        data=TrialData(
            transactions=Path("/srv/data/t.csv"),
            identity=None,
            cache_dir=Path("/srv/cache"),
            test_fraction=0.2,
            valid_fraction=0.2,
        ),
        artifact_dir="jobs/fraud-1/trials/0",
        report_every=10,
        device=device,
    )


@pytest.fixture
def laned(tmp_path: Path) -> Queue:
    return Queue(tmp_path / "queue", lanes=frozenset({"gpu", "cpu"}))


def test_a_gpu_worker_takes_only_gpu_trials_and_a_cpu_worker_only_cpu_trials(
    laned: Queue,
) -> None:
    laned.put(command(0, "xgboost", "gpu"))
    laned.put(command(1, "lightgbm", "cpu"))
    laned.put(command(2, "xgboost", "gpu"))
    assert (laned.root / "pending-gpu" / "fraud-1.0.1.json").exists()
    assert (laned.root / "pending-cpu" / "fraud-1.1.1.json").exists()
    first = laned.claim("w0", lane="gpu")
    second = laned.claim("w0", lane="gpu")
    assert first and second and [first.command.trial, second.command.trial] == [0, 2]
    assert laned.claim("w0", lane="gpu") is None  # the CPU trial waits for a CPU worker
    cpu = laned.claim("w1", lane="cpu")
    assert cpu is not None and cpu.command.model == "lightgbm"


def test_old_commands_without_a_device_go_to_pending_and_any_worker_takes_them_in_order(
    laned: Queue,
) -> None:
    laned.put(command(0, "lightgbm", None))
    laned.put(command(1, "xgboost", "gpu"))
    assert (laned.pending / "fraud-1.0.1.json").exists()
    # Oldest first across the worker's lane and pending/.
    claimed = [laned.claim("w0", lane="gpu"), laned.claim("w0", lane="gpu")]
    assert [c.command.trial for c in claimed if c] == [0, 1]
    raw = command(2, "xgboost", None).model_dump(mode="json")
    del raw["device"]  # written before the field existed
    assert TrialCommand.model_validate(raw).device is None


def test_duplicates_withdrawal_and_in_flight_see_every_lane(laned: Queue) -> None:
    gpu, cpu = command(0, "xgboost", "gpu"), command(1, "lightgbm", "cpu")
    assert laned.put(gpu) is PutOutcome.QUEUED and laned.put(cpu) is PutOutcome.QUEUED
    assert laned.put(gpu) is PutOutcome.ALREADY_PENDING
    # A queue opened without lanes (a worker's, the Dask dispatcher's) sees them too.
    plain = Queue(laned.root)
    assert plain.put(cpu) is PutOutcome.ALREADY_PENDING
    assert plain.in_flight() == {gpu.command_id: None, cpu.command_id: None}
    assert laned.withdraw(cpu.command_id) and not laned.withdraw(cpu.command_id)
    claimed = laned.claim("w0", lane="gpu")
    assert claimed is not None and laned.in_flight() == {gpu.command_id: "w0"}
    assert laned.put(gpu) is PutOutcome.ALREADY_CLAIMED
    assert [c.command_id for c in laned.take_back("w0")] == [gpu.command_id]


def test_relane_moves_pending_commands_where_the_current_workers_serve_them(
    laned: Queue,
) -> None:
    laned.put(command(0, "xgboost", "gpu"))
    laned.put(command(1, "lightgbm", "cpu"))
    # Restarted with GPU workers only: the lanes close, their commands go to pending/.
    single = Queue(laned.root, lanes=frozenset())
    assert single.relane() == 2
    assert sorted(p.name for p in single.pending.iterdir()) == [
        "fraud-1.0.1.json",
        "fraud-1.1.1.json",
    ]
    claimed = single.claim("w0", lane="gpu")
    assert claimed is not None and claimed.command.trial == 0
    # Restarted with both kinds again: the one left goes back to its lane; a second call
    # moves nothing.
    again = Queue(laned.root, lanes=frozenset({"gpu", "cpu"}))
    assert again.relane() == 1 and again.relane() == 0
    assert (again.root / "pending-cpu" / "fraud-1.1.1.json").exists()
