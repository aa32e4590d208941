"""The notify protocol against real datagram sockets (a path and an abstract name)."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from sentinel_daemon.sdnotify import Notifier


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify")
    sock.bind(path)
    sock.settimeout(5)
    yield sock, path
    sock.close()


def test_nothing_is_sent_outside_systemd() -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    assert not notifier.ready("ok") and not notifier.watchdog(0.0)


def test_ready_status_and_stopping_reach_the_socket(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    notifier = Notifier({"NOTIFY_SOCKET": path})
    assert notifier.ready("1 jobs running")
    assert sock.recv(4096).decode().splitlines() == [
        "READY=1",
        "STATUS=1 jobs running",
        f"MAINPID={os.getpid()}",
    ]
    assert notifier.stopping()
    assert sock.recv(4096) == b"STOPPING=1\nSTATUS=stopping"


def test_an_abstract_socket_name_is_used_with_its_leading_nul() -> None:
    name = f"sentinel-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).status("hello")
        assert sock.recv(100) == b"STATUS=hello"


def test_watchdog_pings_at_half_the_period_and_only_for_its_pid(
    listener: tuple[socket.socket, str],
) -> None:
    sock, path = listener
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000"}
    notifier = Notifier(env)
    assert notifier.interval_s == 1.0
    assert notifier.watchdog(100.0)
    assert not notifier.watchdog(100.5)  # too soon
    assert notifier.watchdog(101.0)
    assert [sock.recv(100), sock.recv(100)] == [b"WATCHDOG=1", b"WATCHDOG=1"]
    other = Notifier({**env, "WATCHDOG_PID": str(os.getpid() + 1)})
    assert other.interval_s is None and not other.watchdog(0.0)


def test_a_missing_socket_is_reported_once_and_never_raises(tmp_path: Path) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "absent")})
    assert not notifier.ready("x")
    assert not notifier.status("y")
