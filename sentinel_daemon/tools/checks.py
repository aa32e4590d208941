"""The checks of ``sentinel doctor`` that look at the host: inotify, GPUs, systemd, the lock.

Each returns a :class:`Check`: a level, one line saying what was found and why it matters,
and, unless all is well, one line saying what to do. The checks of where the state lives
(disk, file system, permissions) are in :mod:`~sentinel_daemon.tools.storage`; running them
all is :mod:`~sentinel_daemon.tools.doctor`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from sentinel_daemon.layout import LOCK_NAME
from sentinel_daemon.log.lock import read_holder

#: inotify limits (``/proc/sys/fs/inotify``) below which doctor warns: the kernel's defaults.
#: The daemon itself needs one instance and one watch, but the limits count per user.
INOTIFY_MINIMUMS = {
    "max_user_instances": 128,
    "max_user_watches": 8192,
    "max_queued_events": 16384,
}


#: What doctor suggests instead of a low limit.
INOTIFY_SUGGESTED = {
    "max_user_instances": 512,
    "max_user_watches": 65536,
    "max_queued_events": 65536,
}


UNIT = "sentinel.service"


INSTALL_DOC = "docs/install.md"


class Level(StrEnum):
    OK = "ok"
    INFO = "info"
    SKIP = "skip"
    WARN = "warn"
    FAIL = "fail"


@dataclass(frozen=True)
class Check:
    """One finding: ``summary`` says what and why, ``advice`` what to do (empty when ok)."""

    name: str
    level: Level
    summary: str
    advice: str = ""
    details: Mapping[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.level.value,
            "summary": self.summary,
            "advice": self.advice,
            "details": dict(self.details),
        }


@dataclass(frozen=True)
class CommandResult:
    returncode: int
    stdout: str
    stderr: str


Runner = Callable[[Sequence[str]], CommandResult]


@dataclass(frozen=True)
class Who:
    """The identity whose access is judged: an effective uid and its groups."""

    uid: int
    gids: frozenset[int]

    @classmethod
    def me(cls) -> Who:
        return cls(os.geteuid(), frozenset(os.getgroups()) | {os.getegid()})


class ProcReader(Protocol):
    """What reads ``/proc`` for a check (:class:`~sentinel_daemon.tools.doctor.Host`)."""

    def read(self, name: str) -> str | None: ...


def read_inotify_limits(host: ProcReader) -> dict[str, int | None]:
    limits: dict[str, int | None] = {}
    for name in INOTIFY_MINIMUMS:
        text = host.read(f"sys/fs/inotify/{name}")
        limits[name] = int(text) if text is not None and text.strip().isdigit() else None
    return limits


def check_inotify(limits: Mapping[str, int | None], rescan_s: float) -> Check:
    fallback = f"the inbox is then found by listing it every {rescan_s:g} s (inbox.rescan_seconds)"
    if all(v is None for v in limits.values()):
        return Check(
            "inotify",
            Level.WARN,
            f"no inotify limits readable under /proc/sys/fs/inotify; {fallback}",
            "run on Linux with inotify, or lower inbox.rescan_seconds",
            limits,
        )
    low = {k: v for k, v in limits.items() if v is None or v < INOTIFY_MINIMUMS[k]}
    shown = ", ".join(f"{k} {v}" for k, v in limits.items())
    if low:
        settings = ", ".join(f"fs.inotify.{k} = {INOTIFY_SUGGESTED[k]}" for k in low)
        return Check(
            "inotify",
            Level.WARN,
            f"low: {', '.join(low)} ({shown}); a watch that cannot start or overflows means "
            f"{fallback}",
            f"raise it: write {settings} (a line each) to /etc/sysctl.d/60-sentinel.conf, "
            f"then `sysctl --system`",
            limits,
        )
    return Check("inotify", Level.OK, shown, details=limits)


def nvml_reason() -> str:
    """Why NVML finds no usable GPU, in words (only asked when discovery found none)."""
    try:
        import pynvml
    except ImportError:
        return "nvidia-ml-py (pynvml) is not installed"
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return f"NVML is unavailable: {exc} (no NVIDIA driver?)"
    try:
        count = pynvml.nvmlDeviceGetCount()
    except pynvml.NVMLError as exc:
        return f"NVML query failed: {exc}"
    finally:
        with contextlib.suppress(pynvml.NVMLError):  # nothing to do about it in a probe
            pynvml.nvmlShutdown()
    if count == 0:
        return "the NVIDIA driver reports no GPU"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return f"{count} GPU(s) present, all hidden by CUDA_VISIBLE_DEVICES={visible!r}"


def check_gpus(gpus: Sequence[int], reason: Callable[[], str]) -> Check:
    if gpus:
        return Check(
            "gpus",
            Level.OK,
            f"{len(gpus)} GPU(s) through NVML: {', '.join(map(str, gpus))}; "
            f"`sentinel run` starts one worker per GPU",
            details={"gpus": list(gpus)},
        )
    why = reason()
    return Check(
        "gpus",
        Level.INFO,
        f"no GPU: {why}; workers train on the CPU",
        "nothing to do for CPU training; for GPUs install the NVIDIA driver and nvidia-ml-py",
        {"gpus": [], "reason": why},
    )


def check_systemd(systemctl: Runner | None, unit: str = UNIT) -> Check:
    if systemctl is None:
        return Check("systemd", Level.SKIP, "systemctl not found: not a systemd host")
    active = systemctl(["is-active", unit])
    offline = ("not been booted with systemd", "Failed to connect to bus")
    if any(text in active.stderr for text in offline):
        return Check(
            "systemd",
            Level.SKIP,
            f"systemd is not running here: {active.stderr.strip().splitlines()[0]}",
        )
    enabled = systemctl(["is-enabled", unit])
    # systemd 252 says "No such file" on stderr for a unit it does not know; later ones
    # print "not-found".
    missing = "No such file" in enabled.stderr
    enabled_state = enabled.stdout.strip() or ("not-found" if missing else "unknown")
    active_state = active.stdout.strip() or "unknown"
    details = {"unit": unit, "enabled": enabled_state, "active": active_state}
    if enabled_state == "not-found":
        return Check(
            "systemd",
            Level.INFO,
            f"{unit} is not installed",
            f"to run the daemon under systemd, follow {INSTALL_DOC}",
            details,
        )
    if active_state == "failed":
        return Check(
            "systemd",
            Level.FAIL,
            f"{unit} has failed ({enabled_state})",
            f"read why: `journalctl -u {unit} -e`, then `systemctl restart {unit}`",
            details,
        )
    if active_state in {"active", "reloading", "activating"}:
        boot = "" if enabled_state == "enabled" else f"; it is {enabled_state}, so not at boot"
        return Check(
            "systemd",
            Level.OK if enabled_state == "enabled" else Level.WARN,
            f"{unit} is {active_state}{boot}",
            "" if enabled_state == "enabled" else f"systemctl enable {unit}",
            details,
        )
    return Check(
        "systemd",
        Level.WARN,
        f"{unit} is {active_state} ({enabled_state})",
        f"systemctl enable --now {unit}",
        details,
    )


@dataclass(frozen=True)
class FileLock:
    pid: int
    device: tuple[int, int]
    inode: int


def parse_flocks(text: str) -> list[FileLock]:
    """The ``FLOCK`` entries of a ``/proc/locks`` text (device numbers are in hex there)."""
    locks = []
    for line in text.splitlines():
        parts = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 fe:00:2180171 0 EOF"; blocked waiters have "->".
        if len(parts) < 6 or parts[1] != "FLOCK" or not parts[4].lstrip("-").isdigit():
            continue
        fields = parts[5].split(":")
        if len(fields) != 3:
            continue
        try:
            major, minor, inode = int(fields[0], 16), int(fields[1], 16), int(fields[2])
        except ValueError:
            continue
        locks.append(FileLock(int(parts[4]), (major, minor), inode))
    return locks


def check_lock(state_dir: Path, proc_locks: str | None) -> Check:
    """Whether a daemon holds ``STATE/daemon.lock``, read from ``/proc/locks``: trying the
    lock ourselves could make a daemon starting at that instant fail."""
    path = state_dir / LOCK_NAME
    try:
        st = path.stat()
    except FileNotFoundError:
        return Check("daemon", Level.INFO, f"no daemon has run on {state_dir} yet (no {path})")
    except PermissionError:
        return Check("daemon", Level.SKIP, f"cannot look at {path}: permission denied")
    recorded = read_holder(path)
    details: dict[str, Any] = {"lock": str(path), "recorded_pid": recorded}
    if proc_locks is None:
        return Check(
            "daemon",
            Level.SKIP,
            f"cannot read /proc/locks to tell whether pid {recorded} still holds {path}",
            details=details,
        )
    device = (os.major(st.st_dev), os.minor(st.st_dev))
    holders = [
        lock.pid
        for lock in parse_flocks(proc_locks)
        if lock.inode == st.st_ino
        # Some file systems (btrfs subvolumes) show /proc/locks another device number than
        # stat does: there, the inode and the pid the daemon wrote must both match.
        and (lock.device == device or lock.pid == recorded)
    ]
    if holders:
        pid = recorded if recorded in holders else holders[0]
        return Check(
            "daemon",
            Level.OK,
            f"a daemon (pid {pid}) holds {path}: it is running on this state directory",
            details=details | {"pid": pid, "held": True},
        )
    last = f" (last held by pid {recorded})" if recorded else ""
    return Check(
        "daemon",
        Level.INFO,
        f"no daemon holds {path}{last}: none is running on this state directory",
        "start it: `systemctl start sentinel` or `sentinel run`",
        details | {"held": False},
    )
