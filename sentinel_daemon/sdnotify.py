"""systemd's notify protocol, without a dependency: one datagram to ``$NOTIFY_SOCKET``.

``READY=1`` once start-up is done, ``STATUS=...`` for ``systemctl status``, ``WATCHDOG=1``
at half of ``$WATCHDOG_USEC`` (only from the core loop, so a stuck loop stops the pings and
systemd restarts the daemon), ``STOPPING=1`` on shutdown. Outside systemd (no
``NOTIFY_SOCKET``) every call does nothing. A socket name starting with ``@`` is in the
abstract namespace (a leading NUL byte), as sd_notify(3) describes.
"""

from __future__ import annotations

import os
import socket
import time

import structlog

log = structlog.get_logger(__name__)


class Notifier:
    """Sends notify messages; ``watchdog(now)`` pings at most every half watchdog period."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = dict(os.environ) if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self.address: str | None = None
        if address.startswith("@"):
            self.address = "\0" + address[1:]
        elif address.startswith("/"):
            self.address = address
        self.interval_s: float | None = None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.interval_s = int(usec) / 2_000_000
        self._next_ping = 0.0
        self._failed = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *lines: str) -> bool:
        """Send ``lines`` as one message; False when not under systemd or it failed."""
        if self.address is None:
            return False
        message = "\n".join(lines).encode("utf-8", "replace")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(message, self.address)
        except OSError as exc:
            if not self._failed:  # once: a broken socket must not flood the journal
                log.warning("sdnotify.failed", address=self.address, error=str(exc))
                self._failed = True
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def status(self, status: str) -> bool:
        return self.send(f"STATUS={status}")

    def stopping(self, status: str = "stopping") -> bool:
        return self.send("STOPPING=1", f"STATUS={status}")

    def watchdog(self, now: float | None = None) -> bool:
        """Ping if a watchdog is configured and half its period has passed since the last."""
        if self.interval_s is None or self.address is None:
            return False
        now = time.monotonic() if now is None else now
        if now < self._next_ping:
            return False
        self._next_ping = now + self.interval_s
        return self.send("WATCHDOG=1")
