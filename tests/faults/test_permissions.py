"""Permissions: what the daemon creates, who may write and read it, and who may submit.

DESIGN.md ("Operations"): the daemon runs as a service user with an operators group, so
that operators can read the log and nobody else can. docs/install.md: the state directory
is 0750, everything in it is readable by the group and writable only by the daemon, and
the folders operators drop files into (``inbox/``, ``control/``) are 2770: group-writable,
and setgid so that a dropped file keeps the group the daemon reads it through.

- A real daemon runs a job under the most permissive umask there is (0000, e.g. a shell or
  a container that set none) and every mode under the state directory is checked: nothing
  group-writable or open to others except the two drop folders, which are 2770.
- Where the machine allows (root, ``useradd``), throwaway users play the roles: an operator
  in the group submits with ``sentinel submit`` and reads ``sentinel status``; the service
  user (same group) can read the file the operator left; a user outside the group can do
  neither. Each runs in a child forked from the test with its privileges dropped (the
  interpreter may live where other users cannot read it, so no new interpreter starts).
- The lock that refuses a second daemon is tested where it lives
  (tests/log/test_store.py::test_a_second_store_on_the_same_state_dir_is_refused_naming_the_holder,
  tests/integration/test_daemon.py::test_a_second_daemon_on_the_same_state_dir_exits_at_once_naming_the_holder);
  here it is checked once more across processes and counted.
"""

from __future__ import annotations

import contextlib
import grp
import io
import os
import pwd
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import structlog
import yaml

from sentinel_daemon import cli
from sentinel_daemon.jobfile import read_job_bytes
from sentinel_daemon.log.store import Store
from tests.daemonkit import DaemonProcess, copy_dataset, is_event, job_doc, of_type
from tests.faults.faultkit import FAULT_SETTINGS, violations
from tests.faults.record import full, record
from tests.helpers import wait_for

#: Folders operators leave files in (docs/install.md, step 3).
DROP_DIRS = ("inbox", "control")
DROP_MODE = 0o2770
#: Settings for a quick stop: a trial still running gets one second.
QUICK_STOP = {**FAULT_SETTINGS, "SENTINEL_SHUTDOWN__GRACE_S": "1"}


class BareDaemon(DaemonProcess):
    """:class:`DaemonProcess` that creates nothing itself and starts under a given umask.

    The harness's ``start`` creates ``STATE/inbox`` before the daemon runs; here the daemon
    must create its folders, which is what is checked. ``group`` starts it with that group
    id (root only), as systemd's ``Group=`` does.
    """

    def __init__(self, root: Path, *, umask: int, group: int | None = None, **kw: Any) -> None:
        super().__init__(root, **kw)
        self.umask = umask
        self.group = group

    def start(self) -> BareDaemon:
        assert self.proc is None or self.proc.poll() is not None, "the daemon is running"
        self.starts += 1
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv(),
                cwd=self.root,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                umask=self.umask,
                group=self.group,
            )
        self.pids.append(self.proc.pid)
        return self

    def drop(self, name: str, data: bytes) -> Path:
        """Leave a job file as ``sentinel submit`` does: 0640, ``.name.tmp`` then renamed."""
        inbox = self.state_dir / "inbox"
        tmp = inbox / f".{name}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.rename(tmp, inbox / name)
        return inbox / name


@pytest.fixture
def bare_daemons() -> Iterator[Callable[..., BareDaemon]]:
    made: list[BareDaemon] = []

    def make(root: Path, **kwargs: Any) -> BareDaemon:
        daemon = BareDaemon(root, **kwargs)
        made.append(daemon)
        return daemon

    yield make
    for daemon in made:
        daemon.cleanup()
        print(f"---- daemon log ({daemon.log_path}), last 80 lines ----")
        print("\n".join(daemon.log_text().splitlines()[-80:]))


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def mode_problems(state_dir: Path) -> tuple[int, list[str]]:
    """(entries checked, what is wrong) for every entry under ``state_dir`` and itself.

    Files: no group write, nothing for others, no execute bit. Folders: no group write and
    nothing for others, except the drop folders, which must be exactly 2770.
    """
    problems: list[str] = []
    entries = [state_dir, *sorted(state_dir.rglob("*"))]
    for path in entries:
        rel = path.relative_to(state_dir).as_posix() or "."
        st = path.lstat()
        mode = stat.S_IMODE(st.st_mode)
        if stat.S_ISLNK(st.st_mode):
            problems.append(f"{rel}: a symbolic link in the state directory")
        elif stat.S_ISDIR(st.st_mode):
            if rel in DROP_DIRS:
                if mode != DROP_MODE:
                    problems.append(f"{rel}/: {mode:04o}, operators need {DROP_MODE:04o}")
            elif mode & 0o027:
                problems.append(f"{rel}/: {mode:04o} is group-writable or open to others")
        elif mode & 0o137:
            problems.append(f"{rel}: {mode:04o} is group-writable, executable or open to others")
    return len(entries), problems


def test_a_daemon_under_umask_0000_creates_its_state_writable_only_by_itself(
    bare_daemons: Callable[..., BareDaemon], workspace: Path
) -> None:
    """The bug: every folder the daemon made without a mode came out 0777 under umask 0000
    (0755 under the usual 0022), and worker heartbeats 0666: the event log's folder was
    listable, and the queue writable, by every user."""
    daemon = bare_daemons(workspace, umask=0o000, settings=FAULT_SETTINGS).start()
    daemon.wait_for_event(is_event("daemon.started"), what="daemon.started")
    # A rejected file and a job: queue, trials, heartbeats, snapshot, stage files; the full
    # run waits for the whole job (validate, export, best/), the short one for a saved trial.
    daemon.drop("broken.yaml", b"name: [\n")
    job = yaml.safe_dump(job_doc("perm", n_trials=1), sort_keys=False).encode()
    daemon.drop("perm.yaml", job)
    if full():
        done = daemon.wait_for_event(
            lambda e: e["type"] in ("job.completed", "job.failed"), timeout=120, what="job end"
        )
        assert done["type"] == "job.completed", done
    else:
        daemon.wait_for_event(is_event("trial.saved"), timeout=120, what="a saved trial")
    daemon.wait_for_event(is_event("job.rejected"), what="job.rejected")
    assert daemon.stop() == 0
    state = daemon.state_dir
    checked, problems = mode_problems(state)
    expected = {
        ".": 0o750,
        "events": 0o750,
        "queue": 0o750,
        "jobs": 0o750,
        "snapshot.json": 0o640,
        "daemon.lock": 0o640,
        **{d: DROP_MODE for d in DROP_DIRS},
    }
    for seg in (state / "events").glob("*.jsonl"):
        expected[seg.relative_to(state).as_posix()] = 0o640
    for best in (state / "jobs").glob("*/best"):
        expected[best.relative_to(state).as_posix()] = 0o750
        for f in best.iterdir():
            expected[f.relative_to(state).as_posix()] = 0o640
    wrong = [
        f"{rel}: {_mode(state / rel):04o}, expected {want:04o}"
        for rel, want in expected.items()
        if _mode(state / rel) != want
    ]
    found = sorted(set(problems + wrong))
    record(
        "permissions",
        "state dir made by a real daemon under umask 0000: every entry's mode",
        cases=checked,
        recovered=checked - len(found),
        violations=len(found),
        note=f"{checked} entries after a job, a rejected file and a clean stop",
    )
    assert not found, "\n".join(found)
    assert not violations(state)


# ---- users and groups (root only) --------------------------------------------------------


class Accounts:
    """A throwaway operators group with three users: the service, an operator, an outsider."""

    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        self.group = f"sntl-ops-{tag}"
        self.service = f"sntl-svc-{tag}"
        self.operator = f"sntl-op-{tag}"
        self.outsider = f"sntl-out-{tag}"
        self._users: list[str] = []
        self._groups: list[str] = []

    def create(self) -> None:
        self._run("groupadd", self.group)
        self._groups.append(self.group)
        for user, options in (
            (self.service, ["-N", "-g", self.group]),
            (self.operator, ["-U", "-G", self.group]),
            (self.outsider, ["-U"]),
        ):
            self._run("useradd", "-M", "-s", "/usr/sbin/nologin", *options, user)
            self._users.append(user)
            if "-U" in options:
                self._groups.append(user)

    def remove(self) -> None:
        for user in self._users:
            subprocess.run(["userdel", user], capture_output=True, check=False)
        for group in self._groups:
            subprocess.run(["groupdel", group], capture_output=True, check=False)

    @staticmethod
    def _run(*argv: str) -> None:
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()}")

    def gid(self) -> int:
        return grp.getgrnam(self.group).gr_gid

    def ids(self, user: str) -> tuple[int, int]:
        pw = pwd.getpwnam(user)
        return pw.pw_uid, pw.pw_gid


def as_user(
    uid: int, gid: int, groups: list[int], fn: Callable[[], int], cwd: Path
) -> tuple[int, str]:
    """Run ``fn`` in a forked child with these ids; (its exit code, its output)."""
    out = tempfile.TemporaryFile()  # noqa: SIM115 - the forked child writes into it
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 99
        try:
            os.dup2(out.fileno(), 1)
            os.dup2(out.fileno(), 2)
            sys.stdout = sys.stderr = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
            os.setgroups(groups)
            os.setgid(gid)
            os.setuid(uid)
            os.chdir(cwd)
            code = fn()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            with contextlib.suppress(Exception):
                os.write(2, f"child failed: {traceback.format_exc()}\n".encode())
            code = 98
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    out.seek(0)
    text = out.read().decode(errors="replace")
    out.close()
    return os.waitstatus_to_exitcode(status), text


@pytest.fixture
def accounts() -> Iterator[Accounts]:
    if os.geteuid() != 0 or shutil.which("useradd") is None:
        pytest.skip("needs root and useradd to create throwaway users")
    made = Accounts()
    try:
        made.create()
    except RuntimeError as exc:
        made.remove()
        pytest.skip(f"cannot create users here: {exc}")
    yield made
    made.remove()


def _warm_imports(scratch: Path, job: Path) -> None:
    """Import everything ``submit`` and ``status`` need while still root.

    The forked children cannot read the interpreter's own files when it lives under
    /root, so every module they use must already be loaded.
    """
    state = scratch / "warm-state"
    state.mkdir(exist_ok=True)  # only `sentinel run` creates a state directory
    saved = structlog.get_config()  # cli.main configures logging; the session keeps its own
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            cli.main(["submit", str(job), "--state-dir", str(state), "--json"])
            cli.main(["status", "--state-dir", str(state), "--json"])
            cli.main(["status", "--state-dir", str(state)])
    finally:
        structlog.reset_defaults()
        structlog.configure(**saved)


@pytest.fixture
def shared_base() -> Iterator[Path]:
    """A folder every throwaway user can traverse (pytest's own are private to root)."""
    base = Path(tempfile.mkdtemp(prefix="sentinel-perm-", dir="/tmp"))
    os.chmod(base, 0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def test_the_inbox_the_daemon_creates_is_setgid_so_an_operators_file_is_readable_by_it(
    shared_base: Path, bare_daemons: Callable[..., BareDaemon], accounts: Accounts, dataset: Path
) -> None:
    """The bug: the daemon made ``inbox/`` and ``control/`` like any folder (0750 under the
    unit's UMask=0027), so an operator could not submit at all; and 2770 without the setgid
    bit would let them drop a file the daemon could not read (it keeps their own group)."""
    _operators_and_outsiders(bare_daemons, accounts, dataset, shared_base)


def _operators_and_outsiders(
    bare_daemons: Callable[..., BareDaemon], accounts: Accounts, dataset: Path, base: Path
) -> None:
    ops = accounts.gid()
    svc_uid, _ = accounts.ids(accounts.service)
    op_uid, op_gid = accounts.ids(accounts.operator)
    out_uid, out_gid = accounts.ids(accounts.outsider)
    # What systemd's StateDirectory= makes: the service user's, the operators' group, 0750;
    # and data/ as docs/install.md's tmpfiles.d entry makes it (2770), holding a data set.
    state = base / "state"
    state.mkdir(mode=0o750)
    os.chown(state, svc_uid, ops)
    data = copy_dataset(dataset, state / "data")
    for path in (data, *data.iterdir()):
        os.chown(path, svc_uid, ops)
        os.chmod(path, 0o2770 if path.is_dir() else 0o640)
    # The operator's job file, in a folder of their own, data paths absolute (install.md).
    home = base / "op"
    home.mkdir(mode=0o700)
    os.chown(home, op_uid, op_gid)
    doc = job_doc("opsjob", n_trials=1, data_dir=str(data))
    job = home / "opsjob.yaml"
    job.write_text(yaml.safe_dump(doc, sort_keys=False))
    os.chown(job, op_uid, op_gid)
    _warm_imports(base, job)

    daemon = bare_daemons(base, umask=0o027, group=ops, settings=QUICK_STOP).start()
    daemon.wait_for_event(is_event("daemon.started"), what="daemon.started")
    cases: dict[str, bool] = {}
    for name in DROP_DIRS:
        st = (state / name).stat()
        cases[f"{name}/ is 2770 and the operators'"] = (
            stat.S_IMODE(st.st_mode) == DROP_MODE and st.st_gid == ops
        )

    def submit() -> int:
        return cli.main(["submit", str(job), "--state-dir", str(state), "--json"])

    def status() -> int:
        return cli.main(["status", "--state-dir", str(state), "--json"])

    outputs: dict[str, str] = {}
    code, out = outputs["operator submit"] = as_user(op_uid, op_gid, [op_gid, ops], submit, home)
    cases["an operator can submit"] = code == 0
    job_id = orjson.loads(out)["job_id"] if code == 0 else ""
    if job_id:
        submitted = daemon.wait_for_event(
            lambda e: e["type"] in ("job.submitted", "job.rejected"), what="the job accepted"
        )
        cases["the daemon accepts the operator's file"] = submitted["type"] == "job.submitted"
        kept = state / "jobs" / job_id / "job.yaml"
        # job.submitted is durable first; the file moves in with its job just after.
        wait_for(kept.exists, timeout=30, what="the job file moved in with its job")
        cases["the file keeps the operators' group (setgid)"] = kept.stat().st_gid == ops

        def service_reads() -> int:
            read_job_bytes(kept)
            return 0

        code_svc, outputs["service reads"] = as_user(svc_uid, ops, [], service_reads, base)
        cases["the service user can read it through the group"] = code_svc == 0
    code, out = outputs["operator status"] = as_user(op_uid, op_gid, [op_gid, ops], status, home)
    cases["an operator can read the log (status)"] = code == 0 and job_id in out
    outsider_home = base / "out"
    outsider_home.mkdir()
    shutil.copy(job, outsider_home / "other.yaml")

    def outsider_submit() -> int:
        return cli.main(["submit", str(outsider_home / "other.yaml"), "--state-dir", str(state)])

    code, out = outputs["outsider submit"] = as_user(
        out_uid, out_gid, [out_gid], outsider_submit, outsider_home
    )
    cases["a user outside the group cannot submit"] = code != 0 and "ermission" in out
    code, out = outputs["outsider status"] = as_user(
        out_uid, out_gid, [out_gid], status, outsider_home
    )
    cases["a user outside the group cannot read the log"] = code != 0
    daemon.send_signal(signal.SIGTERM)
    daemon.wait(60)
    failed = [what for what, ok in cases.items() if not ok]
    record(
        "permissions",
        "operators group: submit, read, service reads, outsider refused (throwaway users)",
        cases=len(cases),
        recovered=len(cases) - len(failed),
        violations=len(failed),
    )
    assert not failed, f"failed: {failed}\noutputs: {outputs}"
    assert len(of_type(daemon.events(), "job.rejected")) == 0


def test_a_second_process_cannot_take_the_state_dir_while_it_is_held(state_dir: Path) -> None:
    store = Store.open(state_dir)
    try:
        probe = (
            "import sys; from pathlib import Path\n"
            "from sentinel_daemon.errors import StateDirLocked\n"
            "from sentinel_daemon.log.store import Store\n"
            "try:\n    Store.open(Path(sys.argv[1]))\n"
            "except StateDirLocked as exc:\n    print(exc); sys.exit(7)\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", probe, str(state_dir)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        store.close()
    refused = done.returncode == 7 and str(os.getpid()) in done.stdout
    record(
        "permissions",
        "a second daemon on a held state dir (also tests/log/test_store.py, "
        "tests/integration/test_daemon.py)",
        cases=1,
        recovered=0,
        refused=int(refused),
        violations=int(not refused),
    )
    assert refused, done
