"""The fault suite: the ``faults`` marker, shared fixtures, and the table printed at the end.

``make test-faults`` runs ``pytest tests/faults -m faults`` with ``SENTINEL_FAULTS_SCALE=full``
(the long versions); ``make test`` runs the same files at the default ``short`` scale. Every
test under this folder gets the ``faults`` marker. Tests record what they injected and how
the daemon came through with :func:`tests.faults.record.record`; at the end of the session
the rows are printed as one table (and kept beside this file as ``.results-<scale>.jsonl``
and ``.results-<scale>.md``, git-ignored, for RELIABILITY.md).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.daemonkit import DATASET_ROWS, DaemonProcess, copy_dataset, make_dataset, summary
from tests.faults import faultkit
from tests.faults.record import RESULTS_ENV, read, scale, table

HERE = Path(__file__).resolve().parent
_durations: dict[str, float] = {}
_failed: list[str] = []
_session: dict[str, Any] = {}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "faults: fault injection (kills, crashes, damaged logs, hostile input); "
        "long versions with SENTINEL_FAULTS_SCALE=full (`make test-faults`)",
    )
    # One results file per session (several engineers run suites on this tree at once).
    path = os.environ.get(RESULTS_ENV)
    if not path:
        fd, path = tempfile.mkstemp(prefix="sentinel-faults-", suffix=".jsonl")
        os.close(fd)
        os.environ[RESULTS_ENV] = path
        _session["own"] = True
    Path(path).write_bytes(b"")
    _session["path"] = Path(path)


def pytest_unconfigure(config: pytest.Config) -> None:
    if _session.get("own"):
        Path(_session["path"]).unlink(missing_ok=True)
        os.environ.pop(RESULTS_ENV, None)


@pytest.hookimpl(tryfirst=True)  # before -m deselects
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.faults)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _durations[report.nodeid] = _durations.get(report.nodeid, 0.0) + report.duration
    if report.failed and report.nodeid not in _failed:
        _failed.append(report.nodeid)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    path = _session.get("path")
    rows = read(path) if path else []
    if not rows and not _failed:
        return
    lines = table(rows, _durations)
    if _failed:
        lines += ["", f"fault tests that FAILED ({len(_failed)}):"]
        lines += [f"- {nodeid}" for nodeid in _failed]
    tr = terminalreporter
    tr.write_sep("=", f"fault table ({scale()} scale, seed {faultkit.seed()})")
    for line in lines:
        tr.write_line(line)
    if path and rows:
        shutil.copyfile(path, HERE / f".results-{scale()}.jsonl")
        (HERE / f".results-{scale()}.md").write_text("\n".join(lines) + "\n")


# ---- fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny synthetic data set, written once per session (outside every daemon's roots)."""
    return make_dataset(tmp_path_factory.mktemp("fault-data"), rows=DATASET_ROWS)


@pytest.fixture
def workspace(tmp_path: Path, dataset: Path) -> Path:
    """The daemon's working folder (a data root): ``data/`` holds a copy of the data set."""
    copy_dataset(dataset, tmp_path / "data")
    return tmp_path


@pytest.fixture
def daemons(workspace: Path) -> Iterator[faultkit.MakeDaemon]:
    """Make :class:`DaemonProcess` objects over ``workspace``; kill what they leave behind.

    Each daemon's log and event log are printed at teardown (pytest shows them for a failed
    test). Processes alive after their daemon exited fail the test.
    """
    made: list[DaemonProcess] = []

    def make(root: Path | None = None, **kwargs: Any) -> DaemonProcess:
        daemon = DaemonProcess(root or workspace, **kwargs)
        made.append(daemon)
        return daemon

    yield make
    leaks = []
    for daemon in made:
        was_running = daemon.running()
        killed = daemon.cleanup()
        print(f"---- daemon log ({daemon.log_path}), last 150 lines ----")
        print("\n".join(daemon.log_text().splitlines()[-150:]))
        print("---- event log (last 300) ----")
        print(summary(daemon.events()[-300:]))
        if killed and not was_running:
            leaks.append(killed)
    if leaks:
        pytest.fail(f"processes outlived their daemon (killed now): {leaks}")
