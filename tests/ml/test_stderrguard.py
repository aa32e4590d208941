"""The fd-2 guard: what a native library or a child process prints there stays out of stderr."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sentinel_daemon.ml.stderrguard import quiet_stderr, split_chatter

REPO = Path(__file__).resolve().parents[2]
CHATTER = b"1 warning generated.\n"
#: What clang (the OpenCL compiler) prints for one warning.
DIAGNOSTIC = (
    b"<program source>:12:5: warning: unused variable 'x' [-Wunused-variable]\n"
    b"    int x = 0;\n"
    b"        ^\n"
    b"1 warning generated.\n"
)


def _child_writes(data: bytes) -> None:
    """A child process writes ``data`` to its fd 2, which it inherits from this one."""
    subprocess.run(
        [sys.executable, "-c", f"import os; os.write(2, {data!r})"], check=True, timeout=60
    )


def test_a_child_writing_to_fd_2_inside_the_guard_does_not_reach_stderr(
    capfd: pytest.CaptureFixture[str],
) -> None:
    with quiet_stderr("test") as captured:
        _child_writes(CHATTER * 33)
    _child_writes(b"after the guard\n")
    err = capfd.readouterr().err
    assert "warning generated" not in err
    assert "after the guard" in err  # fd 2 is back where it was
    assert captured.dropped_lines == 33 and captured.passed_lines == 0
    assert captured.first_dropped == "1 warning generated."


def test_other_lines_written_inside_the_guard_are_passed_on_after_it(
    capfd: pytest.CaptureFixture[str],
) -> None:
    with quiet_stderr("test"):
        _child_writes(DIAGNOSTIC + b"a line of the worker's own\n")
    err = capfd.readouterr().err
    assert err == "a line of the worker's own\n"


def test_fd_2_is_restored_when_the_guarded_code_raises() -> None:
    before = os.fstat(2)
    with pytest.raises(RuntimeError), quiet_stderr("test"):
        assert os.fstat(2).st_ino != before.st_ino  # redirected meanwhile
        raise RuntimeError("boom")
    after = os.fstat(2)
    assert (after.st_dev, after.st_ino) == (before.st_dev, before.st_ino)


def test_a_nested_guard_leaves_the_capture_to_the_outer_one(
    capfd: pytest.CaptureFixture[str],
) -> None:
    with quiet_stderr("outer") as outer:
        with quiet_stderr("inner") as inner:
            _child_writes(CHATTER)
        _child_writes(CHATTER)
    assert inner.nested and not outer.nested
    assert outer.dropped_lines == 2
    assert "warning generated" not in capfd.readouterr().err


def test_the_worker_process_stderr_gets_no_chatter_from_its_children() -> None:
    """The real setting: a process's own stderr is a pipe (the journal), not pytest's file."""
    script = textwrap.dedent(
        f"""
        import subprocess, sys
        from sentinel_daemon.ml.stderrguard import quiet_stderr
        child = "import os, sys; os.write(2, sys.argv[1].encode() * 3)"
        with quiet_stderr("lightgbm device_type=gpu"):
            subprocess.run([sys.executable, "-c", child, {CHATTER.decode()!r}], check=True)
        print("done", file=sys.stderr)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == b"done\n"


def test_compiler_output_is_told_apart_from_other_lines() -> None:
    text = DIAGNOSTIC + b"2 warnings and 1 error generated.\n" + b'{"event": "x"}\n'
    dropped, passed = split_chatter(text)
    assert passed == [b'{"event": "x"}']
    assert len(dropped) == 5
