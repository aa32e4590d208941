"""The operator commands' pure parts: job summaries, the status table, the progress line,
job-id checks, the cancel request and ``wait``'s grace, on states folded from events."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from sentinel_daemon.core.events import Event, JobSubmitted, TrialStarted, WorkerExited
from sentinel_daemon.core.ids import check_job_id
from sentinel_daemon.core.state import JobStatus, fold
from sentinel_daemon.errors import AmbiguousJob, BadJobId, JobAlreadyEnded, UnknownJob
from sentinel_daemon.layout import CONTROL_DIR
from sentinel_daemon.log.store import Store
from sentinel_daemon.tools.cancel import cancel_request_path, request_cancel
from sentinel_daemon.tools.status import (
    claimed_commands,
    job_summary,
    render_status,
    status_report,
)
from sentinel_daemon.tools.wait import Outcome, find_pending, progress_line, wait_for_job
from tests.jobevents import failed, finish, running, worker


def test_a_running_job_reports_its_stage_trials_per_model_and_best_saved_trial() -> None:
    job = fold(running("j1")).jobs["j1"]
    summary = job_summary(job)
    assert summary["status"] == "running"
    assert summary["stage"] == {"name": "search", "completed": False}
    assert summary["models"] == [
        {"model": "xgboost", "ended": 2, "n_trials": 2, "running": 0, "queued": 0},
        {"model": "lightgbm", "ended": 0, "n_trials": 2, "running": 1, "queued": 0},
    ]
    assert (summary["trials_ended"], summary["trials_total"], summary["trials_running"]) == (
        2,
        4,
        1,
    )
    assert (summary["best_trial"], summary["best_value"]) == (1, 0.9)
    assert summary["promoted"] is None and summary["reason"] == ""


def test_a_completed_job_counts_its_compacted_trials_and_names_the_promoted_model() -> None:
    job = fold([*running("j1"), *finish("j1")]).jobs["j1"]
    assert job.trials == {}  # compacted: only counts are left
    summary = job_summary(job)
    assert summary["status"] == "completed"
    assert [m["ended"] for m in summary["models"]] == [2, 2]
    assert summary["stage"] == {"name": "search", "completed": True}
    assert (summary["best_trial"], summary["best_value"]) == (1, 0.9)
    assert summary["promoted"]["artifact"] == "jobs/j1/model"


def test_a_spec_without_models_or_budget_shows_the_models_seen_and_an_unknown_total() -> None:
    state = fold(
        [
            JobSubmitted(job_id="j1", name="x", spec={}, file="f.yaml", file_sha256="0" * 64),
            TrialStarted(job_id="j1", trial=0, model="lightgbm", params={}, attempt=1),
        ]
    )
    summary = job_summary(state.jobs["j1"])
    assert summary["models"] == [
        {"model": "lightgbm", "ended": 0, "n_trials": None, "running": 1, "queued": 0}
    ]
    assert summary["trials_total"] is None and summary["stage"] is None
    assert "0/? trials" in progress_line("j1", summary)


def test_status_lists_alive_workers_only_and_asks_whether_the_daemon_pid_lives() -> None:
    state = fold(
        [
            *running("j1"),
            *failed("j2", "data file gone"),
            worker("w0", 100, gpu=0),
            worker("w1", 101),
            WorkerExited(worker="w0", pid=100, gpu=0, exit_code=0),
        ]
    )
    state.daemon_pid = 4242
    report = status_report(state, Path("st"), gpus=[0, 1], pid_alive=lambda pid: pid == 4242)
    assert report["daemon"] == {"pid": 4242, "alive": True, "health": None}
    assert report["workers"] == [
        {"worker": "w1", "pid": 101, "gpu": None, "device": "cpu", "threads": None}
    ]
    assert [j["job_id"] for j in report["jobs"]] == ["j1", "j2"]
    assert report["last_seq"] == state.last_seq and report["gpus"] == [0, 1]
    one = status_report(state, Path("st"), job_id="j2")
    assert [j["job_id"] for j in one["jobs"]] == ["j2"] and one["daemon"]["alive"] is False


def test_status_shows_each_worker_s_gpu_and_threads_from_its_heartbeat() -> None:
    state = fold([worker("w0-1-1", 100, gpu=0), worker("w1-1-1", 101), worker("w2-1-1", 102)])
    beats = {
        "w0-1-1": {"gpu": 0, "lane": "gpu", "threads": 1},
        "w1-1-1": {"gpu": None, "lane": "cpu", "threads": 7},
    }  # w2 has not beaten yet: its kind from its GPU, its threads unknown
    report = status_report(state, Path("st"), beats=beats)
    rows = {w["worker"]: (w["gpu"], w["device"], w["threads"]) for w in report["workers"]}
    assert rows == {
        "w0-1-1": (0, "gpu", 1),
        "w1-1-1": (None, "cpu", 7),
        "w2-1-1": (None, "cpu", None),
    }
    text = render_status(report)
    assert "w0-1-1 (pid 100, gpu 0, 1 thread)" in text
    assert "w1-1-1 (pid 101, cpu, 7 threads)" in text and "w2-1-1 (pid 102, cpu)" in text


def test_status_of_an_unknown_job_names_it() -> None:
    with pytest.raises(UnknownJob, match="nope") as err:
        status_report(fold(running("j1")), Path("st"), job_id="nope")
    assert "sentinel status" in str(err.value)


def test_the_status_table_shows_each_job_on_a_row_and_reasons_below() -> None:
    state = fold([*running("j1"), *failed("j2", "data file gone"), worker("w1", 101, gpu=3)])
    text = render_status(status_report(state, Path("st"), gpus=[]))
    lines = text.splitlines()
    assert lines[0].startswith("daemon: not running")
    assert lines[1].split() == [
        "JOB",
        "NAME",
        "STATUS",
        "STAGE",
        "TRIALS",
        "RUN",
        "BEST",
        "PROMOTED",
    ]
    assert "search" in lines[2] and "xgboost 2/2, lightgbm 0/2" in lines[2]
    assert "0.9000 (#1)" in lines[2]
    assert lines[3].split()[:3] == ["j2", "fraud", "failed"]
    assert "  j2: data file gone" in lines
    assert "workers: w1 (pid 101, gpu 3)" in lines
    assert lines[-1] == "gpus: none (workers train on CPU)"


def test_an_empty_state_renders_without_a_table() -> None:
    text = render_status(status_report(fold([]), Path("st")))
    assert "no jobs" in text and "workers: none alive" in text


def test_the_progress_line_shows_stage_bar_trials_and_best_within_the_width() -> None:
    summary = job_summary(fold(running("j1")).jobs["j1"])
    line = progress_line("j1", summary)
    assert line == "j1 running search [##########..........] 2/4 trials best 0.9000"
    assert "not in the log yet" in progress_line("j1", None)


def test_the_progress_line_fits_any_width_and_never_cuts_a_number() -> None:
    job_id = "ieee-fraud-1a2b3c4d"
    summary = job_summary(fold(running(job_id)).jobs[job_id]) | {"best_value": 0.9419}
    full = progress_line(job_id, summary, width=500)
    assert full.endswith("2/4 trials best 0.9419")
    whole_words = set(full.split(" "))
    for width in range(4, 120):
        line = progress_line(job_id, summary, width)
        assert len(line) <= width, (width, line)
        for word in line.split(" "):
            # Every word is one of the full line's, or a narrower bar: nothing cut short.
            assert word in whole_words or set(word) <= set("[#.]"), (width, line)
        if width >= len("2/4 best 0.9419"):
            assert "0.9419" in line and "2/4" in line, (width, line)
    assert progress_line(job_id, summary, 75).startswith(f"{job_id} running search [")


@pytest.mark.parametrize("bad", ["", "../etc", "a/b", ".hidden", "-x", "x" * 129, "a\nb"])
def test_job_ids_that_could_escape_or_hide_a_path_are_refused(bad: str) -> None:
    with pytest.raises(BadJobId):
        check_job_id(bad)
    with pytest.raises(BadJobId):
        cancel_request_path(Path("st"), bad)


def test_the_cancel_request_lives_in_the_control_folder() -> None:
    assert check_job_id("fraud-1a2b3c4d") == "fraud-1a2b3c4d"
    assert cancel_request_path(Path("st"), "fraud-1a2b3c4d") == Path(
        "st", CONTROL_DIR, "cancel.fraud-1a2b3c4d"
    )


def test_a_cancel_request_records_job_time_and_pid(tmp_path: Path) -> None:
    now = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    path = request_cancel(tmp_path, "j1", fold(running("j1")), now=now, pid=77)
    assert path == tmp_path / "control" / "cancel.j1"
    assert orjson.loads(path.read_bytes()) == {
        "job_id": "j1",
        "requested_at": "2024-05-06T07:08:09.123456Z",
        "pid": 77,
    }
    assert [p.name for p in path.parent.iterdir()] == ["cancel.j1"]  # no temporary left


def test_cancelling_an_ended_or_unknown_job_is_refused_and_writes_nothing(tmp_path: Path) -> None:
    state = fold([*running("j1"), *finish("j1"), *failed("j2", "boom")])
    now = datetime.now(UTC)
    with pytest.raises(JobAlreadyEnded) as ended:
        request_cancel(tmp_path, "j1", state, now=now)
    assert ended.value.status is JobStatus.COMPLETED
    with pytest.raises(JobAlreadyEnded, match="boom"):
        request_cancel(tmp_path, "j2", state, now=now)
    with pytest.raises(UnknownJob, match="sentinel status"):
        request_cancel(tmp_path, "j3", state, now=now)
    assert not (tmp_path / "control").exists()


class FakeClock:
    """A clock that moves only when ``wait_for_job`` sleeps."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_waiting_for_a_job_never_submitted_gives_up_at_the_deadline(tmp_path: Path) -> None:
    clock = FakeClock()
    polls: list[object] = []
    result = wait_for_job(
        tmp_path,
        "j1",
        timeout=1.0,
        grace=5.0,
        clock=clock,
        sleep=clock.sleep,
        on_poll=lambda job, pending: polls.append(job),
    )
    assert (result.outcome, result.job) == (Outcome.TIMED_OUT, None)
    assert clock.now == pytest.approx(1.0) and len(polls) == 6  # at 0, 0.2, ..., 1.0


def test_an_id_found_nowhere_ends_the_wait_as_unknown_after_the_grace(tmp_path: Path) -> None:
    clock = FakeClock()
    result = wait_for_job(
        tmp_path, "j1-0badc0de", timeout=None, grace=2.0, clock=clock, sleep=clock.sleep
    )
    assert result.outcome is Outcome.UNKNOWN
    assert clock.now == pytest.approx(2.0)


def job_file(folder: Path, text: str) -> tuple[Path, str]:
    """A job file in ``folder`` and the id the daemon will give it."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "job.yaml"
    path.write_text(text)
    return path, f"fraud-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


@pytest.mark.parametrize("folder", ["inbox", "claimed"])
def test_a_job_whose_file_waits_in_the_inbox_or_claimed_is_waited_for_past_the_grace(
    tmp_path: Path, folder: str
) -> None:
    path, job_id = job_file(tmp_path / folder, "name: fraud\n")
    (tmp_path / folder / "other.yaml").write_text("name: other\n")
    pending = find_pending(tmp_path, job_id)
    assert pending is not None and (pending.where, pending.path) == (folder, path)
    clock = FakeClock()
    result = wait_for_job(tmp_path, job_id, timeout=30.0, grace=1.0, clock=clock, sleep=clock.sleep)
    assert result.outcome is Outcome.TIMED_OUT and result.detail == str(path)
    assert clock.now == pytest.approx(30.0)
    line = progress_line(job_id, None, 80, pending)
    assert line.startswith(job_id) and "job.yaml" in line


def test_a_rejected_job_file_ends_the_wait_at_once_with_its_reason(tmp_path: Path) -> None:
    path, job_id = job_file(tmp_path / "rejected", "name: fraud\nmodels: [svm]\n")
    path.with_name("job.yaml.reason").write_text("models: 'svm' is not a model\n")
    clock = FakeClock()
    result = wait_for_job(
        tmp_path, job_id, timeout=None, grace=10.0, clock=clock, sleep=clock.sleep
    )
    assert result.outcome is Outcome.REJECTED and clock.now == 0.0
    assert result.detail == f"{path}: models: 'svm' is not a model"


# ---- what RUN counts, and jobs named by name ----------------------------------------------


def test_run_counts_only_trials_a_worker_holds_and_the_rest_are_queued() -> None:
    job = fold(running("j1")).jobs["j1"]  # lightgbm trial 2, attempt 1, started
    queued = job_summary(job, claimed=set())
    assert (queued["trials_running"], queued["trials_queued"]) == (0, 1)
    held = job_summary(job, claimed={"j1.2.1", "other.0.1"})
    assert (held["trials_running"], held["trials_queued"]) == (1, 0)
    assert job_summary(job, claimed={"j1.2.2"})["trials_running"] == 0  # another attempt's
    report = status_report(fold(running("j1")), Path("st"), claimed=set())
    row = render_status(report).splitlines()[2].split()
    assert row[:2] == ["j1", "fraud"] and row[row.index("0/2") + 1] == "0"  # RUN


def test_claimed_commands_are_read_from_the_workers_folders_without_creating_any(
    tmp_path: Path,
) -> None:
    assert claimed_commands(tmp_path) == set()
    assert list(tmp_path.iterdir()) == []  # a status must not make the queue
    worker_dir = tmp_path / "queue" / "workers" / "w0-1-1"
    worker_dir.mkdir(parents=True)
    for name in ("j1.2.1.json", "heartbeat.json", ".j1.3.1.json.tmp", "prune.j1.2.1"):
        (worker_dir / name).write_text("{}")
    (tmp_path / "queue" / "workers" / "dask-0").mkdir()
    (tmp_path / "queue" / "workers" / "dask-0" / "j2.0.1.json").write_text("{}")
    assert claimed_commands(tmp_path) == {"j1.2.1", "j2.0.1"}


def test_status_takes_a_name_that_one_job_alone_has_and_refuses_a_shared_one() -> None:
    one = fold(running("fraud-1a2b3c4d"))
    (summary,) = status_report(one, Path("st"), job_id="fraud")["jobs"]
    assert summary["job_id"] == "fraud-1a2b3c4d"
    two = fold([*running("fraud-1a2b3c4d"), *failed("fraud-99999999", "gone")])
    with pytest.raises(AmbiguousJob) as err:
        status_report(two, Path("st"), job_id="fraud")
    assert err.value.job_ids == ["fraud-99999999", "fraud-1a2b3c4d"]  # newest first
    assert "give the job id" in str(err.value) and "fraud-1a2b3c4d" in str(err.value)
    with pytest.raises(UnknownJob):
        status_report(one, Path("st"), job_id="fraud-nightly")


def write_log(state_dir: Path, events: list[Event]) -> None:
    store = Store.open(state_dir)
    try:
        store.append(events)
    finally:
        store.close()


def test_wait_takes_a_job_name_and_refuses_a_shared_one_at_once(tmp_path: Path) -> None:
    write_log(tmp_path, [*running("fraud-1a2b3c4d"), *finish("fraud-1a2b3c4d")])
    clock = FakeClock()
    result = wait_for_job(tmp_path, "fraud", timeout=60, clock=clock, sleep=clock.sleep)
    assert result.outcome is Outcome.ENDED and clock.now == 0.0
    assert result.job is not None and result.job["job_id"] == "fraud-1a2b3c4d"
    write_log(tmp_path, running("fraud-99999999"))
    with pytest.raises(AmbiguousJob):
        wait_for_job(tmp_path, "fraud", timeout=60, clock=clock, sleep=clock.sleep)
    assert clock.now == 0.0  # at once, not after the timeout


def test_the_status_of_a_dask_daemon_counts_the_cluster_and_names_the_slots() -> None:
    state = fold([*running("j1"), worker("dask-0", 0)])
    state.daemon_pid = 7
    report = status_report(state, Path("st"), pid_alive=lambda pid: True)
    report["daemon"]["health"] = {
        "status": "degraded",
        "reason": "dispatch blocked (no_capacity): no Dask worker offers a whole unit of GPU",
        "dispatch": {"backend": "dask", "scheduler": "tcp://s:8786", "connected": True,
                     "workers": 1, "offering": 0, "resource": "GPU", "slots": 0, "running": 0},
    }  # fmt: skip
    lines = render_status(report).splitlines()
    assert lines[1].startswith("DEGRADED: dispatch blocked (no_capacity)")
    assert "1 workers (0 offer GPU), 0 slots" in lines[2]
    assert "workers: on the Dask cluster; slots used: dask-0" in lines
    assert not any("none alive" in line for line in lines)
