"""The Dask backend's pure parts: the shared-storage check a worker runs, what the cluster
offers, and its settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from sentinel_daemon.daemon.dispatch.dask_cluster import ClusterView, no_capacity
from sentinel_daemon.daemon.dispatch.dask_task import check_paths
from sentinel_daemon.errors import ConfigError
from sentinel_daemon.settings import load_settings


def test_a_worker_that_sees_the_daemons_state_directory_and_files_has_no_problem(
    tmp_path: Path,
) -> None:
    (tmp_path / "dispatch-id").write_text("abc\n")
    data = tmp_path / "t.csv"
    data.write_text("x")
    marker = str(tmp_path / "dispatch-id")
    assert check_paths(marker, "abc", [str(data)], [str(tmp_path / "a/b")]) == []
    assert not (tmp_path / "a").exists()  # checked, not created


def test_an_empty_folder_at_the_state_path_is_not_the_daemons_state_directory(
    tmp_path: Path,
) -> None:
    (problem,) = check_paths(str(tmp_path / "dispatch-id"), "abc", [], [])
    assert "does not see the daemon's state directory" in problem and str(tmp_path) in problem
    (tmp_path / "dispatch-id").write_text("another daemon's")
    (problem,) = check_paths(str(tmp_path / "dispatch-id"), "abc", [], [])
    assert "another daemon" in problem


def test_data_that_is_no_file_and_folders_that_cannot_be_made_are_named(tmp_path: Path) -> None:
    # (Root reads and writes everything: a folder given as data, and a folder to be made
    # below a plain file, fail for any user.)
    (tmp_path / "dispatch-id").write_text("abc")
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder should be")
    problems = check_paths(
        str(tmp_path / "dispatch-id"), "abc", [str(tmp_path)], [str(blocker / "trials")]
    )
    assert problems == [
        f"cannot read {tmp_path}",
        f"cannot write into {blocker / 'trials'} ({blocker} is not a writable folder)",
    ]


def test_missing_data_is_named(tmp_path: Path) -> None:
    (tmp_path / "dispatch-id").write_text("abc")
    missing = tmp_path / "nope.csv"
    assert check_paths(str(tmp_path / "dispatch-id"), "abc", [str(missing)], []) == [
        f"cannot read {missing}"
    ]


def test_the_dask_backend_without_a_scheduler_is_refused_naming_the_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SENTINEL_DISPATCH__BACKEND", "dask")
    with pytest.raises(ConfigError, match=r"dispatch\.scheduler is required"):
        load_settings()
    monkeypatch.setenv("SENTINEL_DISPATCH__SCHEDULER", "tcp://10.0.0.5:8786")
    assert load_settings().dispatch.scheduler == "tcp://10.0.0.5:8786"


def test_capacity_counts_whole_units_of_the_resource_and_leaves_retired_workers_out() -> None:
    view = ClusterView(
        {
            "tcp://a:1": {"GPU": 2.0},
            "tcp://b:1": {"GPU": 0.5, "CPU": 8.0},
            "tcp://c:1": {"GPU": 1.0},
        }
    )
    assert view.units("GPU") == 3 and view.units("CPU") == 8 and view.units("TPU") == 0
    assert view.units("GPU", exclude={"tcp://a:1"}) == 1
    assert view.offering("GPU", exclude={"tcp://c:1"}) == ["tcp://a:1"]
    assert no_capacity("GPU", view) is None
    assert no_capacity("GPU", view, retired={"tcp://a:1", "tcp://c:1"}) is not None


def test_a_cluster_without_the_resource_is_named_with_the_workers_it_has() -> None:
    view = ClusterView({"tcp://10.0.0.7:4001": {}, "tcp://10.0.0.8:4001": {"GPU": 1.0}})
    reason = no_capacity("GPU", view, retired={"tcp://10.0.0.8:4001"})
    assert reason is not None
    assert "no Dask worker offers a whole unit of GPU (dispatch.resource)" in reason
    assert "2 worker(s): tcp://10.0.0.7:4001 (no resources)" in reason
    assert "tcp://10.0.0.8:4001 (retired: it fell silent)" in reason
    assert "--resources GPU=1" in reason
    many = ClusterView({f"tcp://h{i}:1": {"CPU": 4.0} for i in range(9)})
    text = no_capacity("GPU", many)
    assert text is not None and "(CPU=4)" in text and "and 4 more" in text
    assert "0 worker(s): no worker" in (no_capacity("GPU", ClusterView()) or "")
