"""`sentinel doctor`'s checks, each on inputs the test controls: /proc texts, stat results of
temporary folders, a fake systemctl, fake GPU discovery and disk usage."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pytest

from sentinel_daemon.layout import LOCK_NAME
from sentinel_daemon.tools import checks, doctor, storage
from sentinel_daemon.tools.checks import (
    CommandResult,
    Level,
    Who,
    check_gpus,
    check_inotify,
    check_lock,
    check_systemd,
    parse_flocks,
    read_inotify_limits,
)
from sentinel_daemon.tools.doctor import Host, render, report, run_checks
from sentinel_daemon.tools.storage import (
    GIB,
    Mount,
    check_disk,
    check_drop_dir,
    check_filesystem,
    check_state_dir,
    may,
    mount_of,
    parse_mountinfo,
)

MOUNTINFO = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
40 27 0:40 / /srv rw,relatime - xfs /dev/sdb1 rw
41 40 0:41 / /srv/nfs rw,relatime shared:5 - nfs4 filer:/export rw,vers=4.2
42 27 0:42 / /mnt/my\\040disk rw - ext4 /dev/sdc1 rw
43 41 0:43 / /srv/nfs rw,relatime - tmpfs tmpfs rw
"""


def mount(fstype: str, point: str = "/") -> Mount:
    return Mount(point, fstype, "src")


# ---- file system -------------------------------------------------------------------------


def test_mountinfo_is_parsed_with_optional_fields_and_escaped_spaces() -> None:
    mounts = parse_mountinfo(MOUNTINFO + "garbage line\n")
    assert [m.mount_point for m in mounts] == [
        "/proc",
        "/",
        "/srv",
        "/srv/nfs",
        "/mnt/my disk",
        "/srv/nfs",
    ]
    assert mounts[3] == Mount("/srv/nfs", "nfs4", "filer:/export")


def test_the_mount_of_a_path_is_the_longest_mount_point_containing_it() -> None:
    mounts = parse_mountinfo(MOUNTINFO)
    assert mount_of(Path("/srv/state"), mounts) == Mount("/srv", "xfs", "/dev/sdb1")
    assert mount_of(Path("/srvx/state"), mounts) == Mount("/", "ext4", "/dev/vda")
    assert mount_of(Path("/mnt/my disk/s"), mounts) == Mount("/mnt/my disk", "ext4", "/dev/sdc1")
    assert mount_of(Path("/srv"), mounts) == Mount("/srv", "xfs", "/dev/sdb1")


def test_the_last_mount_on_a_mount_point_is_the_one_that_counts() -> None:
    assert mount_of(Path("/srv/nfs/state"), parse_mountinfo(MOUNTINFO)) == Mount(
        "/srv/nfs", "tmpfs", "tmpfs"
    )


def test_no_mount_at_all_is_skipped() -> None:
    assert mount_of(Path("/x"), []) is None
    assert check_filesystem(Path("/x"), None).level is Level.SKIP


@pytest.mark.parametrize("fstype", sorted(storage.REFUSED_FS))
def test_network_file_systems_fail_because_flock_and_fsync_are_unreliable(fstype: str) -> None:
    check = check_filesystem(Path("/srv/state"), mount(fstype, "/srv"))
    assert check.level is Level.FAIL
    assert fstype in check.summary and "flock" in check.summary
    assert "local disk" in check.advice


@pytest.mark.parametrize("fstype", ["tmpfs", "ramfs", "overlay"])
def test_memory_and_overlay_file_systems_warn(fstype: str) -> None:
    check = check_filesystem(Path("/srv/state"), mount(fstype))
    assert check.level is Level.WARN
    assert check.details["fstype"] == fstype


@pytest.mark.parametrize("fstype", ["ext4", "xfs", "btrfs", "zfs"])
def test_local_file_systems_are_ok(fstype: str) -> None:
    assert check_filesystem(Path("/srv/state"), mount(fstype)).level is Level.OK


# ---- disk ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("free", "level"),
    [
        (0, Level.FAIL),
        (GIB - 1, Level.FAIL),
        (GIB, Level.WARN),
        (5 * GIB - 1, Level.WARN),
        (5 * GIB, Level.OK),
        (500 * GIB, Level.OK),
    ],
)
def test_free_disk_space_fails_under_1_gib_and_warns_under_5(free: int, level: Level) -> None:
    check = check_disk(Path("/srv/state"), 1000 * GIB, free)
    assert check.level is level
    assert check.details["free_bytes"] == free
    assert bool(check.advice) is (level is not Level.OK)


# ---- inotify ---------------------------------------------------------------------------------


def fake_proc(root: Path, **limits: int) -> Path:
    folder = root / "sys" / "fs" / "inotify"
    folder.mkdir(parents=True)
    for name, value in limits.items():
        (folder / name).write_text(f"{value}\n")
    return root


def test_inotify_limits_are_read_and_missing_ones_are_none(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, max_user_watches=8192, max_user_instances=128)
    assert read_inotify_limits(Host(proc=proc, systemctl=None)) == {
        "max_user_instances": 128,
        "max_user_watches": 8192,
        "max_queued_events": None,
    }


def test_inotify_at_the_kernel_defaults_is_ok() -> None:
    check = check_inotify(dict(checks.INOTIFY_MINIMUMS), rescan_s=5.0)
    assert check.level is Level.OK


def test_a_low_inotify_limit_warns_naming_it_and_the_sysctl_to_raise_it() -> None:
    limits = dict(checks.INOTIFY_MINIMUMS) | {"max_user_instances": 8}
    check = check_inotify(limits, rescan_s=5.0)
    assert check.level is Level.WARN
    assert "max_user_instances" in check.summary and "every 5 s" in check.summary
    assert "fs.inotify.max_user_instances = 512" in check.advice
    assert "max_user_watches" not in check.advice


def test_no_inotify_at_all_warns_that_the_inbox_is_only_listed() -> None:
    check = check_inotify(dict.fromkeys(checks.INOTIFY_MINIMUMS), rescan_s=2.0)
    assert check.level is Level.WARN
    assert "every 2 s" in check.summary


# ---- GPUs ------------------------------------------------------------------------------------


def test_gpus_found_are_ok_and_the_reason_is_not_asked() -> None:
    def reason() -> str:
        raise AssertionError("only asked when no GPU was found")

    check = check_gpus([0, 1], reason)
    assert check.level is Level.OK
    assert check.details == {"gpus": [0, 1]}


def test_no_gpu_is_information_not_a_failure() -> None:
    check = check_gpus([], lambda: "NVML is unavailable: driver not loaded")
    assert check.level is Level.INFO
    assert "driver not loaded" in check.summary and "CPU" in check.summary


# ---- permissions -----------------------------------------------------------------------------


def folder(path: Path, mode: int) -> Path:
    path.mkdir(exist_ok=True)
    os.chmod(path, mode)
    return path


def owner(path: Path) -> Who:
    st = path.stat()
    return Who(st.st_uid, frozenset({st.st_gid}))


def member(path: Path) -> Who:
    """Someone else in the folder's group (uid 0 would pass every check, so never 0)."""
    st = path.stat()
    return Who(st.st_uid + 4242, frozenset({st.st_gid}))


def stranger(path: Path) -> Who:
    st = path.stat()
    return Who(st.st_uid + 4242, frozenset({st.st_gid + 4242}))


def test_access_is_judged_by_owner_then_group_then_other_bits(tmp_path: Path) -> None:
    st = folder(tmp_path / "d", 0o750).stat()
    assert may(st, owner(tmp_path / "d"), 7)
    assert may(st, member(tmp_path / "d"), 5) and not may(st, member(tmp_path / "d"), 2)
    assert not may(st, stranger(tmp_path / "d"), 4)
    assert may(st, Who(0, frozenset()), 7)


def test_a_missing_state_dir_is_information(tmp_path: Path) -> None:
    check = check_state_dir(tmp_path / "nope", stranger(tmp_path))
    assert check.level is Level.INFO
    assert check.details["exists"] is False


def test_a_state_dir_that_is_a_file_fails(tmp_path: Path) -> None:
    (tmp_path / "state").write_text("")
    assert check_state_dir(tmp_path / "state", owner(tmp_path)).level is Level.FAIL


def test_a_world_writable_state_dir_fails(tmp_path: Path) -> None:
    state = folder(tmp_path / "state", 0o777)
    check = check_state_dir(state, owner(state))
    assert check.level is Level.FAIL
    assert check.advice == f"chmod o-w {state}"


def test_a_state_dir_the_operator_cannot_read_warns_with_the_group_to_join(
    tmp_path: Path,
) -> None:
    state = folder(tmp_path / "state", 0o750)
    check = check_state_dir(state, stranger(state))
    assert check.level is Level.WARN
    assert "usermod -aG" in check.advice
    assert check.details["readable_by_you"] is False
    assert check.details["mode"] == "0750"


def test_a_state_dir_readable_through_the_group_is_ok_for_an_operator(tmp_path: Path) -> None:
    state = folder(tmp_path / "state", 0o750)
    check = check_state_dir(state, member(state))
    assert check.level is Level.OK
    assert "only the daemon writes it" in check.summary


def test_a_state_dir_its_owner_cannot_write_fails(tmp_path: Path) -> None:
    state = folder(tmp_path / "state", 0o550)
    if os.geteuid() == 0:
        os.chown(state, 4242, 4242)  # root may write anything: make the owner someone else
    check = check_state_dir(state, owner(state))
    assert check.level is Level.FAIL
    assert check.advice == f"chmod u+rwx {state}"


def test_an_inbox_shared_with_the_group_and_setgid_is_ok(tmp_path: Path) -> None:
    inbox = folder(tmp_path / "inbox", 0o2770)
    check = check_drop_dir("inbox", inbox, member(inbox), "submit jobs")
    assert check.level is Level.OK
    assert check.details["mode"] == "2770"
    assert check.details["writable_by_you"] is True


def test_a_group_writable_inbox_without_setgid_warns(tmp_path: Path) -> None:
    inbox = folder(tmp_path / "inbox", 0o770)
    check = check_drop_dir("inbox", inbox, member(inbox), "submit jobs")
    assert check.level is Level.WARN
    assert check.advice == f"chmod g+s {inbox}"


def test_an_inbox_the_operator_cannot_write_warns(tmp_path: Path) -> None:
    inbox = folder(tmp_path / "inbox", 0o2750)
    check = check_drop_dir("inbox", inbox, member(inbox), "submit jobs")
    assert check.level is Level.WARN
    assert "cannot submit jobs" in check.summary
    assert "chmod 2770" in check.advice


def test_an_inbox_only_its_owner_may_write_is_information(tmp_path: Path) -> None:
    inbox = folder(tmp_path / "inbox", 0o750)
    check = check_drop_dir("inbox", inbox, owner(inbox), "submit jobs")
    assert check.level is Level.INFO
    assert "chmod 2770" in check.advice


def test_a_world_writable_inbox_warns(tmp_path: Path) -> None:
    inbox = folder(tmp_path / "inbox", 0o777)
    assert check_drop_dir("inbox", inbox, owner(inbox), "submit jobs").level is Level.WARN


def test_a_missing_inbox_is_information(tmp_path: Path) -> None:
    check = check_drop_dir("inbox", tmp_path / "inbox", owner(tmp_path), "submit jobs")
    assert check.level is Level.INFO


def test_a_folder_hidden_by_its_parent_warns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hidden = tmp_path / "state" / "inbox"
    real_stat = Path.stat

    def stat(self: Path, **kwargs: bool) -> os.stat_result:
        if self == hidden:
            raise PermissionError(13, "Permission denied", str(self))
        return real_stat(self, **kwargs)

    folder(tmp_path / "state", 0o750)
    monkeypatch.setattr(Path, "stat", stat)
    check = check_drop_dir("inbox", hidden, stranger(tmp_path), "submit jobs")
    assert check.level is Level.WARN
    assert check.details["exists"] is None
    assert "usermod -aG" in check.advice


# ---- the daemon's lock -------------------------------------------------------------------------

LOCKS = """\
1: POSIX  ADVISORY  WRITE 900 fe:00:77 0 EOF
2: FLOCK  ADVISORY  WRITE 4242 fe:01:2180171 0 EOF
2: -> FLOCK  ADVISORY  WRITE 4343 fe:01:2180171 0 EOF
3: FLOCK  ADVISORY  READ 17 00:1b:542 0 EOF
4: FLOCK  ADVISORY  WRITE x zz:00:1 0 EOF
"""


def test_flock_entries_are_parsed_with_hex_device_numbers() -> None:
    assert parse_flocks(LOCKS) == [
        checks.FileLock(4242, (0xFE, 0x01), 2180171),
        checks.FileLock(17, (0, 0x1B), 542),
    ]


def lock_file(state: Path, pid: int | None) -> os.stat_result:
    path = state / LOCK_NAME
    path.write_text("" if pid is None else f"{pid}\n")
    return path.stat()


def locks_line(pid: int, st: os.stat_result, *, device: tuple[int, int] | None = None) -> str:
    major, minor = device or (os.major(st.st_dev), os.minor(st.st_dev))
    return f"1: FLOCK  ADVISORY  WRITE {pid} {major:02x}:{minor:02x}:{st.st_ino} 0 EOF\n"


def test_a_held_lock_names_the_daemons_pid(state_dir: Path) -> None:
    st = lock_file(state_dir, 4242)
    check = check_lock(state_dir, LOCKS + locks_line(4242, st))
    assert check.level is Level.OK
    assert check.details["pid"] == 4242 and check.details["held"] is True


def test_a_lock_on_another_device_number_counts_only_with_the_recorded_pid(
    state_dir: Path,
) -> None:
    st = lock_file(state_dir, 4242)
    elsewhere = (0x99, 0x99)
    assert check_lock(state_dir, locks_line(4242, st, device=elsewhere)).level is Level.OK
    assert check_lock(state_dir, locks_line(5555, st, device=elsewhere)).level is Level.INFO


def test_a_lock_file_nobody_holds_means_no_daemon_runs(state_dir: Path) -> None:
    lock_file(state_dir, 4242)
    check = check_lock(state_dir, LOCKS)
    assert check.level is Level.INFO
    assert "last held by pid 4242" in check.summary
    assert check.details["held"] is False


def test_no_lock_file_means_no_daemon_ever_ran(state_dir: Path) -> None:
    assert check_lock(state_dir, LOCKS).level is Level.INFO


def test_without_proc_locks_the_lock_is_skipped(state_dir: Path) -> None:
    lock_file(state_dir, 4242)
    assert check_lock(state_dir, None).level is Level.SKIP


# ---- systemd -------------------------------------------------------------------------------


def systemctl(active: CommandResult, enabled: CommandResult) -> checks.Runner:
    def run(argv: Sequence[str]) -> CommandResult:
        assert argv[1] == "sentinel.service"
        return {"is-active": active, "is-enabled": enabled}[argv[0]]

    return run


def out(text: str, rc: int = 0) -> CommandResult:
    return CommandResult(rc, text + "\n", "")


NOT_FOUND_252 = CommandResult(
    1, "", "Failed to get unit file state for sentinel.service: No such file or directory\n"
)


def test_no_systemctl_is_skipped() -> None:
    assert check_systemd(None).level is Level.SKIP


def test_a_host_not_booted_with_systemd_is_skipped() -> None:
    down = CommandResult(
        1,
        "",
        "System has not been booted with systemd as init system (PID 1). Can't operate.\n"
        "Failed to connect to bus: Host is down\n",
    )
    check = check_systemd(systemctl(down, NOT_FOUND_252))
    assert check.level is Level.SKIP
    assert "\n" not in check.summary


@pytest.mark.parametrize("enabled", [NOT_FOUND_252, out("not-found", 4)])
def test_a_unit_not_installed_is_information(enabled: CommandResult) -> None:
    check = check_systemd(systemctl(out("inactive", 3), enabled))
    assert check.level is Level.INFO
    assert "docs/install.md" in check.advice


@pytest.mark.parametrize(
    ("active", "enabled", "level"),
    [
        ("active", "enabled", Level.OK),
        ("activating", "enabled", Level.OK),
        ("active", "disabled", Level.WARN),
        ("inactive", "enabled", Level.WARN),
        ("inactive", "disabled", Level.WARN),
        ("failed", "enabled", Level.FAIL),
    ],
)
def test_the_units_state_decides_the_level(active: str, enabled: str, level: Level) -> None:
    check = check_systemd(systemctl(out(active), out(enabled)))
    assert check.level is level
    assert check.details == {"unit": "sentinel.service", "enabled": enabled, "active": active}
    if level is Level.FAIL:
        assert "journalctl -u sentinel.service" in check.advice


# ---- all together ----------------------------------------------------------------------------


def fake_host(tmp_path: Path, *, fstype: str, free: int) -> Host:
    proc = fake_proc(
        tmp_path / "proc", max_user_watches=65536, max_user_instances=128, max_queued_events=16384
    )
    (proc / "self").mkdir()
    (proc / "self" / "mountinfo").write_text(
        f"1 0 8:1 / / rw - ext4 /dev/sda1 rw\n"
        f"2 1 8:2 / {os.path.realpath(tmp_path)} rw - {fstype} srv:/x rw\n"
    )
    (proc / "locks").write_text("")
    return Host(
        proc=proc,
        discover_gpus=lambda: [],
        nvml_reason=lambda: "no driver",
        disk_usage=lambda path: (100 * GIB, 10 * GIB, free),
        systemctl=None,
        who=Who(os.geteuid(), frozenset({os.getegid()})),
    )


def test_every_check_runs_in_order_and_a_healthy_host_has_no_failure(tmp_path: Path) -> None:
    host = fake_host(tmp_path, fstype="xfs", free=90 * GIB)
    checks = run_checks(tmp_path / "state", rescan_s=5.0, host=host)
    assert [c.name for c in checks] == [
        "state",
        "inbox",
        "control",
        "filesystem",
        "disk",
        "inotify",
        "gpus",
        "daemon",
        "systemd",
    ]
    assert not doctor.failed(checks)
    levels = {c.name: c.level for c in checks}
    assert levels["filesystem"] is Level.OK and levels["gpus"] is Level.INFO
    # The state dir does not exist: disk and file system are judged where it will be.
    assert checks[3].details["path"] == str(tmp_path)


def test_a_network_file_system_fails_the_report(tmp_path: Path) -> None:
    host = fake_host(tmp_path, fstype="nfs4", free=90 * GIB)
    checks = run_checks(tmp_path / "state", rescan_s=5.0, host=host)
    assert doctor.failed(checks)
    data = report(tmp_path / "state", checks)
    assert data["ok"] is False
    assert {c["name"]: c["status"] for c in data["checks"]}["filesystem"] == "fail"
    text = render(tmp_path / "state", checks)
    assert "FAIL  filesystem" in text
    assert "-> put the state directory on a local disk" in text
    assert text.endswith("1 fail") or "1 fail" in text.splitlines()[-1]
