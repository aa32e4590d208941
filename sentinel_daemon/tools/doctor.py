"""``sentinel doctor``: checks the host a daemon runs (or will run) on, and says what to do.

Each check returns a :class:`Check`: a level, one line saying what was found and why it
matters, and, unless all is well, one line saying what to do. ``fail`` is for what breaks
the daemon's promises (a network file system under the event log, a disk about to fill, a
failed unit); ``warn`` for what degrades it; ``info`` and ``skip`` for facts that need no
action (no GPU means CPU workers; no systemd on a development machine).

The checks read the machine only through :class:`Host` (a ``/proc`` folder, the GPU
discovery, disk usage, ``systemctl``, who we are), so tests pass their own. Nothing here
writes, creates or locks anything: doctor may run beside a live daemon. The checks
themselves are in :mod:`~sentinel_daemon.tools.checks` (inotify, GPUs, systemd, the lock)
and :mod:`~sentinel_daemon.tools.storage` (disk, file system, permissions).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sentinel_daemon.layout import CONTROL_DIR, INBOX_DIR
from sentinel_daemon.tools.checks import (
    Check,
    CommandResult,
    Level,
    Runner,
    Who,
    check_gpus,
    check_inotify,
    check_lock,
    check_systemd,
    nvml_reason,
    read_inotify_limits,
)
from sentinel_daemon.tools.storage import (
    check_disk,
    check_drop_dir,
    check_filesystem,
    check_state_dir,
    existing_ancestor,
    mount_of,
    parse_mountinfo,
)


def _discover_gpus() -> list[int]:
    from sentinel_daemon.ml.devices import discover_gpus

    return discover_gpus()


def _run_systemctl(argv: Sequence[str]) -> CommandResult:
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return CommandResult(-1, "", str(exc))
    return CommandResult(done.returncode, done.stdout, done.stderr)


def _default_systemctl() -> Runner | None:
    path = shutil.which("systemctl")
    if path is None:
        return None
    return lambda args: _run_systemctl([path, *args])


@dataclass(frozen=True)
class Host:
    """Everything the checks read from the machine."""

    proc: Path = Path("/proc")
    discover_gpus: Callable[[], list[int]] = _discover_gpus
    nvml_reason: Callable[[], str] = lambda: nvml_reason()
    disk_usage: Callable[[Path], tuple[int, int, int]] = shutil.disk_usage
    systemctl: Runner | None = field(default_factory=_default_systemctl)
    who: Who = field(default_factory=Who.me)

    def read(self, relative: str) -> str | None:
        try:
            return (self.proc / relative).read_text()
        except OSError:
            return None


# ---- inotify ---------------------------------------------------------------------------


# ---- GPUs ------------------------------------------------------------------------------


# ---- disk and file system ----------------------------------------------------------------


# ---- permissions -----------------------------------------------------------------------


# ---- systemd -----------------------------------------------------------------------------


# ---- the daemon's lock ---------------------------------------------------------------------


# ---- all together --------------------------------------------------------------------------


def run_checks(state_dir: Path, *, rescan_s: float, host: Host | None = None) -> list[Check]:
    """Every check, in the order they are shown."""
    host = host or Host()
    state_dir = Path(os.path.abspath(state_dir))
    where = existing_ancestor(state_dir)
    total, _used, free = host.disk_usage(where)
    mountinfo = host.read("self/mountinfo")
    mount = mount_of(Path(os.path.realpath(where)), parse_mountinfo(mountinfo or ""))
    return [
        check_state_dir(state_dir, host.who),
        check_drop_dir("inbox", state_dir / INBOX_DIR, host.who, "submit jobs"),
        check_drop_dir("control", state_dir / CONTROL_DIR, host.who, "cancel jobs"),
        check_filesystem(where, mount),
        check_disk(where, total, free),
        check_inotify(read_inotify_limits(host), rescan_s),
        check_gpus(host.discover_gpus(), host.nvml_reason),
        check_lock(state_dir, host.read("locks")),
        check_systemd(host.systemctl),
    ]


def failed(checks: Sequence[Check]) -> bool:
    return any(c.level is Level.FAIL for c in checks)


def report(state_dir: Path, checks: Sequence[Check]) -> dict[str, Any]:
    """What ``--json`` prints."""
    return {
        "state_dir": os.path.abspath(state_dir),
        "ok": not failed(checks),
        "checks": [c.as_dict() for c in checks],
    }


def render(state_dir: Path, checks: Sequence[Check]) -> str:
    """A table for people: status, check, finding; what to do on the line below."""
    width = max(len(c.name) for c in checks)
    lines = [f"sentinel doctor: {os.path.abspath(state_dir)}", ""]
    for c in checks:
        status = c.level.value.upper() if c.level in (Level.WARN, Level.FAIL) else c.level.value
        lines.append(f"{status:<5} {c.name:<{width}}  {c.summary}")
        if c.advice and c.level is not Level.OK:
            lines.append(f"{'':<5} {'':<{width}}  -> {c.advice}")
    counts = {level: sum(1 for c in checks if c.level is level) for level in Level}
    lines += ["", ", ".join(f"{n} {level.value}" for level, n in counts.items() if n)]
    return "\n".join(lines)
