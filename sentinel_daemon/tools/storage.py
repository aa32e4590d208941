"""The checks of ``sentinel doctor`` for where the state lives: free space, the file system
under the event log, and the owners and modes of the state directory and the drop folders.

Pure functions of what :class:`~sentinel_daemon.tools.doctor.Host` read (a disk usage, a
``mountinfo`` text, ``stat`` results), so tests pass their own.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sentinel_daemon.tools.checks import INSTALL_DOC, Check, Level, Who

GIB = 1 << 30


#: Free space under the state directory below which doctor warns, and fails.
DISK_WARN_BYTES = 5 * GIB


DISK_FAIL_BYTES = 1 * GIB


#: File systems where flock and fsync do not give the event log what it relies on.
REFUSED_FS = frozenset({"nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "fuse.sshfs"})


#: File systems that work but lose the state (tmpfs, ramfs) or often sit on one (overlay).
DOUBTFUL_FS = frozenset({"overlay", "tmpfs", "ramfs"})


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
