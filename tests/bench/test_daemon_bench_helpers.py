"""Helpers of ``bench/daemon.py`` that must survive the process races a real daemon has."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import psutil
import pytest

from tests.helpers import wait_for

REPO = Path(__file__).resolve().parents[2]

# A parent with one child that has exited and is never reaped (a zombie, like a stage
# process the daemon has not waited for yet) and one live child named like a worker.
PARENT = """
import os, subprocess, sys, time
if os.fork() == 0:
    os._exit(0)
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "sentinel_daemon.worker"])
time.sleep(120)
"""


def _bench_daemon(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(REPO / "bench"))  # it imports benchkit beside it
    spec = importlib.util.spec_from_file_location(
        "bench_daemon_under_test", REPO / "bench" / "daemon.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # its dataclasses look it up
    spec.loader.exec_module(module)
    return module


def test_daemon_and_workers_skips_a_zombie_child(monkeypatch: pytest.MonkeyPatch) -> None:
    bench = _bench_daemon(monkeypatch)
    parent = subprocess.Popen([sys.executable, "-c", PARENT], start_new_session=True)
    try:
        me = psutil.Process(parent.pid)

        def settled() -> bool:
            kids = me.children()
            statuses = sorted(k.status() for k in kids)
            # The live child must have exec'd: until then it runs the parent's command
            # line, which names the worker module inside the script (a flake under load).
            live = [k for k in kids if k.status() != psutil.STATUS_ZOMBIE]
            execd = len(live) == 1 and live[0].cmdline()[-1:] == ["sentinel_daemon.worker"]
            return len(kids) == 2 and statuses.count(psutil.STATUS_ZOMBIE) == 1 and execd

        wait_for(settled, what="one zombie child and one live child")
        main, workers = bench.daemon_and_workers(SimpleNamespace(proc=parent))
        assert main.pid == parent.pid
        assert len(workers) == 1
        assert "sentinel_daemon.worker" in workers[0].cmdline()
    finally:
        os.killpg(parent.pid, signal.SIGKILL)
        parent.wait(timeout=30)
        # The group's other members are reparented and reaped by init once killed.
        wait_for(lambda: not _group_alive(parent.pid), what="the test's processes gone")


def _group_alive(pgid: int) -> bool:
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, psutil.Error):
            continue
    return False
