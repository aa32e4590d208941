"""A log that cannot be read as one: start-up, verify and repair say which path and what
to do, as the project's errors, never as a traceback; on real files (and a real EIO
injected at the read of one segment)."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from unittest import mock

import pytest

from sentinel_daemon import cli
from sentinel_daemon.core.events import TrialStarted
from sentinel_daemon.errors import LogUnreadable
from sentinel_daemon.layout import EVENTS_DIR
from sentinel_daemon.log.segfiles import segment_name
from sentinel_daemon.log.store import Store, read_state
from sentinel_daemon.tools.repair import repair
from sentinel_daemon.tools.verify import verify

SENTINEL = [sys.executable, "-m", "sentinel_daemon.cli"]


def two_segments(state_dir: Path) -> tuple[Path, Path]:
    store = Store.open(state_dir, segment_bytes=1)  # every append starts a segment
    for t in range(2):
        store.append([TrialStarted(job_id="j1", trial=t, model="xgboost", params={}, attempt=1)])
    store.close(snapshot=False)
    first, second = sorted((state_dir / EVENTS_DIR).glob("*.jsonl"))
    return first, second


def events_as_a_file(state_dir: Path) -> tuple[Path, str]:
    (state_dir / EVENTS_DIR).write_text("not a folder")
    return state_dir / EVENTS_DIR, "is a regular file, not the folder"


def segment_as_a_directory(state_dir: Path) -> tuple[Path, str]:
    _first, second = two_segments(state_dir)
    second.unlink()
    second.mkdir()
    return second, "is a directory"


def segment_as_a_dangling_link(state_dir: Path) -> tuple[Path, str]:
    _first, second = two_segments(state_dir)
    second.unlink()
    second.symlink_to(state_dir / "gone.jsonl")
    return second, "which does not exist"


BROKEN: dict[str, Callable[[Path], tuple[Path, str]]] = {
    "events-file": events_as_a_file,
    "segment-dir": segment_as_a_directory,
    "segment-dangling-link": segment_as_a_dangling_link,
}


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_start_up_verify_and_repair_name_the_path_and_what_to_do(
    state_dir: Path, kind: str
) -> None:
    path, words = BROKEN[kind](state_dir)

    with pytest.raises(LogUnreadable) as opened:
        Store.open(state_dir)
    assert opened.value.path == path and words in str(opened.value)
    assert "backup" in opened.value.remedy
    report = verify(state_dir)
    assert not report.ok and report.problem is not None
    assert report.problem["kind"] == "unreadable" and str(path) in report.problem["message"]
    with pytest.raises(LogUnreadable) as repaired:
        repair(state_dir)
    assert repaired.value.path == path
    with pytest.raises(LogUnreadable):
        read_state(state_dir)  # `sentinel status` and `cancel` read the state this way


@pytest.mark.parametrize("kind", sorted(BROKEN))
@pytest.mark.parametrize("command", [["log", "verify"], ["log", "repair"], ["status"]])
def test_the_cli_prints_the_error_without_a_traceback(
    state_dir: Path, kind: str, command: list[str]
) -> None:
    path, words = BROKEN[kind](state_dir)

    result = subprocess.run(
        [*SENTINEL, *command, "--state-dir", str(state_dir)],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert str(path) in result.stderr and words in result.stderr


@contextlib.contextmanager
def eio_reading(target: Path) -> Iterator[None]:
    """Reads of ``target`` fail with EIO, as from a failing disk; others go through."""
    real_pread = os.pread

    def pread(fd: int, n: int, offset: int) -> bytes:
        if os.readlink(f"/proc/self/fd/{fd}") == str(target):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real_pread(fd, n, offset)

    with mock.patch("os.pread", pread):
        yield


def test_an_io_error_on_a_segment_names_it_everywhere(
    state_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    first, _second = two_segments(state_dir)
    # In-process, the command line must not point the process's logging at captured stderr.
    monkeypatch.setattr(cli, "configure_logging", lambda *args: None)

    with eio_reading(first):
        with pytest.raises(LogUnreadable) as opened:
            Store.open(state_dir)
        report = verify(state_dir)
        with pytest.raises(LogUnreadable):
            repair(state_dir)
        code = cli.main(["log", "verify", "--state-dir", str(state_dir)])

    assert opened.value.path == first and "Input/output error" in str(opened.value)
    assert "dmesg" in opened.value.remedy
    assert report.problem is not None and str(first) in report.problem["message"]
    assert [(f.segment, f.kind) for f in report.findings] == [(first.name, "unreadable")]
    err = capsys.readouterr().err
    assert code == 1 and f"{first}" in err and "Input/output error" in err
    assert "Traceback" not in err


def test_a_segment_name_taken_by_a_folder_stops_rotation_with_a_named_error(
    state_dir: Path,
) -> None:
    store = Store.open(state_dir, segment_bytes=1)
    store.append([TrialStarted(job_id="j1", trial=0, model="xgboost", params={}, attempt=1)])
    (state_dir / EVENTS_DIR / segment_name(2)).mkdir()
    try:
        with pytest.raises(LogUnreadable, match="is a directory"):
            store.append(
                [TrialStarted(job_id="j1", trial=1, model="xgboost", params={}, attempt=1)]
            )
    finally:
        store.close(snapshot=False)
