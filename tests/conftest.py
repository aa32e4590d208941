"""Shared fixtures: temporary state directories, a ``jq`` command, and a guard against leaked
children/threads."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    path = tmp_path / "state"
    path.mkdir()
    return path


@pytest.fixture(params=["libjq", "jq binary"])
def jq_dir(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """A folder holding a ``jq`` command, to put first on ``PATH``: libjq behind
    ``tests/jqcli.py`` (always: a machine without jq runs the recipes too), then a jq
    binary where the machine has one."""
    from tests.jqcli import has_jq_binary, jq_bin_dir

    if request.param == "jq binary" and not has_jq_binary():
        pytest.skip("no jq binary here; the libjq run covers the same recipes")
    return jq_bin_dir(request.param, tmp_path / "bin")


@pytest.fixture(autouse=True)
def no_leaked_children_or_threads() -> Iterator[None]:
    """Fail a test that leaves a child process or a thread running behind it."""
    me = psutil.Process()
    children_before = {c.pid for c in me.children(recursive=True)}
    threads_before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 5.0
    while True:
        children = [c for c in me.children(recursive=True) if c.pid not in children_before]
        children = [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
        threads = [t for t in threading.enumerate() if t not in threads_before and t.is_alive()]
        if not children and not threads:
            return
        if time.monotonic() > deadline:
            for c in children:
                c.kill()
            pytest.fail(f"test leaked children {[c.pid for c in children]} or threads {threads}")
        time.sleep(0.05)
