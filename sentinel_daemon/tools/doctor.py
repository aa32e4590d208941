"""``sentinel doctor``: checks the host a daemon runs (or will run) on, and says what to do.

Each check returns a :class:`Check`: a level, one line saying what was found and why it
matters, and, unless all is well, one line saying what to do. ``fail`` is for what breaks
the daemon's promises (a network file system under the event log, a disk about to fill, a
failed unit); ``warn`` for what degrades it; ``info`` and ``skip`` for facts that need no
action (no GPU means CPU workers; no systemd on a development machine).

The checks read the machine only through :class:`Host` (a ``/proc`` folder, the GPU
discovery, disk usage, ``systemctl``, who we are), so tests pass their own. Nothing here
writes, creates or locks anything: doctor may run beside a live daemon.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import re
import shutil
import stat
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from sentinel_daemon.layout import CONTROL_DIR, INBOX_DIR, LOCK_NAME
from sentinel_daemon.log.lock import read_holder

GIB = 1 << 30
#: Free space under the state directory below which doctor warns, and fails.
DISK_WARN_BYTES = 5 * GIB
DISK_FAIL_BYTES = 1 * GIB

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

#: File systems where flock and fsync do not give the event log what it relies on.
REFUSED_FS = frozenset({"nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "fuse.sshfs"})
#: File systems that work but lose the state (tmpfs, ramfs) or often sit on one (overlay).
DOUBTFUL_FS = frozenset({"overlay", "tmpfs", "ramfs"})

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


def read_inotify_limits(host: Host) -> dict[str, int | None]:
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


# ---- GPUs ------------------------------------------------------------------------------


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


# ---- disk and file system ----------------------------------------------------------------


def existing_ancestor(path: Path) -> Path:
    """``path`` made absolute, or its nearest ancestor that exists (for a state dir to be)."""
    current = Path(os.path.abspath(path))
    while not current.exists() and current != current.parent:
        current = current.parent
    return current


def check_disk(where: Path, total: int, free: int) -> Check:
    gib = f"{free / GIB:.1f} GiB free of {total / GIB:.1f} GiB under {where}"
    details = {"path": str(where), "free_bytes": free, "total_bytes": total}
    if free < DISK_FAIL_BYTES:
        return Check(
            "disk",
            Level.FAIL,
            f"{gib}: an append that cannot be fsynced stops the daemon",
            "free space now (old jobs/*/trials, data caches) or move the state directory",
            details,
        )
    if free < DISK_WARN_BYTES:
        return Check(
            "disk",
            Level.WARN,
            f"{gib}: models, data caches and the log will not fit for long",
            f"free space or grow the file system to over {DISK_WARN_BYTES // GIB} GiB free",
            details,
        )
    return Check("disk", Level.OK, gib, details=details)


@dataclass(frozen=True)
class Mount:
    mount_point: str
    fstype: str
    source: str


_OCTAL = re.compile(r"\\([0-7]{3})")


def _unescape(field_: str) -> str:
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field_)


def parse_mountinfo(text: str) -> list[Mount]:
    """The mounts of a ``/proc/<pid>/mountinfo`` text, in its order (later ones on top)."""
    mounts = []
    for line in text.splitlines():
        before, sep, after = line.partition(" - ")
        left, right = before.split(), after.split()
        if not sep or len(left) < 5 or len(right) < 2:
            continue
        mounts.append(Mount(_unescape(left[4]), right[0], _unescape(right[1])))
    return mounts


def mount_of(path: Path, mounts: Sequence[Mount]) -> Mount | None:
    """The mount holding ``path`` (absolute, symlinks resolved): the longest mount point that
    contains it, the last one mounted where several share it."""
    best: Mount | None = None
    for mount in mounts:
        point = Path(mount.mount_point)
        if (path == point or point in path.parents) and (
            best is None or len(point.parts) >= len(Path(best.mount_point).parts)
        ):
            best = mount
    return best


def check_filesystem(where: Path, mount: Mount | None) -> Check:
    if mount is None:
        return Check(
            "filesystem",
            Level.SKIP,
            f"no mount found for {where} in /proc/self/mountinfo",
            details={"path": str(where)},
        )
    on = f"{where} is on {mount.fstype} ({mount.source} at {mount.mount_point})"
    details = {"path": str(where), "fstype": mount.fstype, "mount_point": mount.mount_point}
    if mount.fstype in REFUSED_FS:
        return Check(
            "filesystem",
            Level.FAIL,
            f"{on}: flock and fsync are unreliable there, so the event log's single-writer "
            f"lock and durability do not hold",
            "put the state directory on a local disk (ext4, xfs, btrfs)",
            details,
        )
    if mount.fstype in DOUBTFUL_FS:
        why = (
            "memory only: the whole state is lost at reboot"
            if mount.fstype in {"tmpfs", "ramfs"}
            else "an overlay (a container layer?) is often thrown away with its container"
        )
        return Check(
            "filesystem",
            Level.WARN,
            f"{on}: {why}",
            "put the state directory on a persistent local disk (a volume, in a container)",
            details,
        )
    return Check("filesystem", Level.OK, on, details=details)


# ---- permissions -----------------------------------------------------------------------


def may(st: os.stat_result, who: Who, bits: int) -> bool:
    """Whether ``who`` has ``bits`` (4 read, 2 write, 1 search) by the mode bits (not ACLs)."""
    if who.uid == 0:
        return True
    if st.st_uid == who.uid:
        return st.st_mode & (bits << 6) == bits << 6
    if st.st_gid in who.gids:
        return st.st_mode & (bits << 3) == bits << 3
    return st.st_mode & bits == bits


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _describe(path: Path) -> tuple[os.stat_result | None, dict[str, Any]]:
    """``path``'s stat and its facts; ``exists`` is None where a parent hides it from us."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None, {"path": str(path), "exists": False}
    except PermissionError:
        return None, {"path": str(path), "exists": None}
    return st, {
        "path": str(path),
        "exists": True,
        "owner": _user(st.st_uid),
        "group": _group(st.st_gid),
        "mode": f"{stat.S_IMODE(st.st_mode):04o}",
    }


def _hidden(name: str, path: Path, who: Who, details: dict[str, Any]) -> Check:
    parent = path.parent
    try:
        group = _group(parent.stat().st_gid)
    except OSError:
        group = "its group"
    return Check(
        name,
        Level.WARN,
        f"cannot look at {path}: you may not enter {parent}",
        f"join {parent}'s group: `usermod -aG {group} {_user(who.uid)}` (then log in again)",
        details,
    )


def check_state_dir(path: Path, who: Who) -> Check:
    st, details = _describe(path)
    if st is None and details["exists"] is None:
        return _hidden("state", path, who, details)
    if st is None:
        return Check(
            "state",
            Level.INFO,
            f"{path} does not exist yet; the daemon creates it at its first start "
            f"(under systemd: StateDirectory=)",
            details=details,
        )
    if not stat.S_ISDIR(st.st_mode):
        return Check("state", Level.FAIL, f"{path} is not a directory", "remove it", details)
    readable, writable = may(st, who, 5), may(st, who, 3)
    details |= {"readable_by_you": readable, "writable_by_you": writable}
    owned = f"{details['owner']}:{details['group']} {details['mode']}"
    if st.st_mode & stat.S_IWOTH:
        return Check(
            "state",
            Level.FAIL,
            f"{path} ({owned}) is writable by every user: anyone can alter the event log",
            f"chmod o-w {path}",
            details,
        )
    if not readable:
        return Check(
            "state",
            Level.WARN,
            f"{path} ({owned}) is not readable by you: `sentinel status`, `tail` and `wait` "
            f"cannot read the log",
            f"join its group: `usermod -aG {details['group']} {_user(who.uid)}` (then log in "
            f"again); see {INSTALL_DOC}",
            details,
        )
    if st.st_uid == who.uid and not writable:
        return Check(
            "state",
            Level.FAIL,
            f"{path} ({owned}) is yours but not writable: the daemon cannot write its log",
            f"chmod u+rwx {path}",
            details,
        )
    role = "readable and writable" if writable else "readable (only the daemon writes it)"
    return Check("state", Level.OK, f"{path} ({owned}) is {role} by you", details=details)


def check_drop_dir(name: str, path: Path, who: Who, purpose: str) -> Check:
    """The inbox or the control folder: where operators leave files for the daemon."""
    st, details = _describe(path)
    if st is None and details["exists"] is None:
        return _hidden(name, path, who, details)
    if st is None:
        return Check(
            name, Level.INFO, f"{path} does not exist yet; the daemon creates it", details=details
        )
    if not stat.S_ISDIR(st.st_mode):
        return Check(name, Level.FAIL, f"{path} is not a directory", "remove it", details)
    writable = may(st, who, 3)
    details |= {"writable_by_you": writable}
    owned = f"{details['owner']}:{details['group']} {details['mode']}"
    fix = f"chgrp sentinel-ops {path} && chmod 2770 {path} (see {INSTALL_DOC})"
    if st.st_mode & stat.S_IWOTH:
        return Check(
            name,
            Level.WARN,
            f"{path} ({owned}) is writable by every user: anyone can {purpose}",
            f"chmod o-w {path}; {fix}",
            details,
        )
    if not writable:
        return Check(
            name,
            Level.WARN,
            f"{path} ({owned}) is not writable by you: you cannot {purpose}",
            f"join its group (`usermod -aG {details['group']} {_user(who.uid)}`) if it is "
            f"group-writable, else {fix}",
            details,
        )
    if st.st_mode & stat.S_IWGRP and not st.st_mode & stat.S_ISGID:
        return Check(
            name,
            Level.WARN,
            f"{path} ({owned}) is group-writable without setgid: files left here keep their "
            f"author's group, and the daemon may not be able to read them",
            f"chmod g+s {path}",
            details,
        )
    if not st.st_mode & stat.S_IWGRP:
        return Check(
            name,
            Level.INFO,
            f"{path} ({owned}): only {details['owner']} can {purpose}",
            f"to let operators do it too: {fix}",
            details,
        )
    return Check(name, Level.OK, f"{path} ({owned}) is writable by you", details=details)


# ---- systemd -----------------------------------------------------------------------------


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


# ---- the daemon's lock ---------------------------------------------------------------------


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
