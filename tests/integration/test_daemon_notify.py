"""`sentinel run` speaks systemd's notify protocol: READY, STATUS, WATCHDOG, STOPPING."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import orjson

from tests.helpers import wait_for


def test_the_daemon_notifies_ready_pings_the_watchdog_and_says_stopping(tmp_path: Path) -> None:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify")
    listener.bind(path)
    listener.setblocking(False)
    env = {
        **os.environ,
        "NOTIFY_SOCKET": path,
        "WATCHDOG_USEC": "400000",  # a ping every 0.2 s
        "SENTINEL_LOGGING__FORMAT": "json",
    }
    state = tmp_path / "state"
    with (tmp_path / "daemon.log").open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sentinel_daemon.cli",
                "run",
                "--state-dir",
                str(state),
                "--workers",
                "1",
            ],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    messages: list[bytes] = []

    def seen(needle: bytes) -> bool:
        while True:
            try:
                messages.append(listener.recv(4096))
            except BlockingIOError:
                break
        return any(needle in m for m in messages)

    try:
        wait_for(lambda: seen(b"READY=1"), 60, "READY=1")
        ready_at = next(i for i, m in enumerate(messages) if b"READY=1" in m)
        wait_for(
            lambda: seen(b"") and sum(m == b"WATCHDOG=1" for m in messages) >= 3,
            30,
            "three watchdog pings",
        )
        assert all(m != b"WATCHDOG=1" for m in messages[:ready_at])
        # READY comes after replay and the inbox watch: daemon.started is in the log.
        (segment,) = (state / "events").glob("*.jsonl")
        first = orjson.loads(segment.read_bytes().splitlines()[0])
        assert first["type"] == "daemon.started"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        wait_for(lambda: seen(b"STOPPING=1"), 10, "STOPPING=1")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        listener.close()
