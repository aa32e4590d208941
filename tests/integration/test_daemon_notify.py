"""`sentinel run` speaks systemd's notify protocol: READY, STATUS, WATCHDOG, STOPPING."""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import orjson

from tests.helpers import wait_for


class Listener:
    """A notify socket that keeps each message with the monotonic time it arrived."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.setblocking(False)
        self.messages: list[tuple[float, bytes]] = []

    def drain(self) -> list[tuple[float, bytes]]:
        while True:
            try:
                self.messages.append((time.monotonic(), self.sock.recv(4096)))
            except BlockingIOError:
                return self.messages

    def index(self, needle: bytes) -> int | None:
        return next((i for i, (_, m) in enumerate(self.drain()) if needle in m), None)

    def pings(self) -> list[float]:
        return [t for t, m in self.drain() if m == b"WATCHDOG=1"]


def test_the_daemon_notifies_in_order_and_stops_pinging_while_its_loop_is_stuck(
    tmp_path: Path,
) -> None:
    listener = Listener(str(tmp_path / "notify"))
    env = {
        **os.environ,
        "NOTIFY_SOCKET": str(tmp_path / "notify"),
        "WATCHDOG_USEC": "400000",  # a ping every 0.2 s
        "SENTINEL_LOGGING__FORMAT": "json",
        "SENTINEL_TEST_FAULTS": "1",
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
    try:
        wait_for(lambda: listener.index(b"READY=1") is not None, 60, "READY=1")
        wait_for(lambda: len(listener.pings()) >= 3, 30, "three watchdog pings")
        ready = listener.index(b"READY=1")
        first_ping = listener.index(b"WATCHDOG=1")
        assert ready is not None and first_ping is not None and ready < first_ping
        assert b"STATUS=0 jobs running" in listener.messages[ready][1]
        # READY comes after replay: daemon.started is already in the log.
        (segment,) = (state / "events").glob("*.jsonl")
        assert orjson.loads(segment.read_bytes().splitlines()[0])["type"] == "daemon.started"

        # Hold the core loop still for 2 s: the pings must stop, then resume.
        stall = state / "control" / "test-stall.2"
        stall.write_bytes(b"")
        wait_for(lambda: not stall.exists(), 30, "the daemon to take the stall request")
        stalled_at = time.monotonic()
        wait_for(lambda: any(t > stalled_at + 1.0 for t in listener.pings()), 30, "pings again")
        pings = listener.pings()
        gaps = [b - a for a, b in itertools.pairwise(pings)]
        assert max(gaps) >= 1.5, f"pings went on while the loop was stuck: gaps {gaps}"

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        wait_for(lambda: listener.index(b"STOPPING=1") is not None, 10, "STOPPING=1")
        stopping = listener.index(b"STOPPING=1")
        assert stopping is not None and stopping > first_ping
        assert any(b"STATUS=" in m for _, m in listener.messages[ready + 1 :])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        listener.sock.close()
