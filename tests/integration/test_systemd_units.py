"""The shipped systemd units: `systemd-analyze verify` is silent on both, the daemon's unit scores
an exposure of 2.5 or less in `systemd-analyze security`, and both say what docs/DESIGN.md's
"Operations" asks (notify, watchdog, mixed kill, a stop timeout past the grace period, hardening
that leaves numpy, XGBoost, LightGBM, psutil and NVML working).

`verify` checks that ExecStart= names an executable; the units name
/opt/sentinel/venv/bin/sentinel, which exists only on an installed host. So the tests verify
copies that differ in that path alone, pointing at a stub in a temporary folder."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from sentinel_daemon import cli
from sentinel_daemon.settings import Settings
from sentinel_daemon.worker.loop import build_parser as worker_parser
from tests.conftest import REPO

SYSTEMD = REPO / "systemd"
DAEMON_UNIT = SYSTEMD / "sentinel.service"
WORKER_UNIT = SYSTEMD / "sentinel-worker@.service"
UNITS = [DAEMON_UNIT, WORKER_UNIT]
INSTALLED = "/opt/sentinel/venv/bin/sentinel"
MAX_EXPOSURE = 2.5

needs_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """Sections of a unit file, each key with all its values in order (keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        assert not line.endswith("\\"), f"{path.name}: no continuation lines, please: {line}"
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{path.name}: {line!r} is outside any section"
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not key=value: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def one(unit: dict[str, dict[str, list[str]]], key: str) -> str:
    values = unit["Service"].get(key, [])
    assert len(values) == 1, f"{key}= should be set once, found {values}"
    return values[0]


def environment(unit: dict[str, dict[str, list[str]]]) -> dict[str, str]:
    pairs = [p for value in unit["Service"].get("Environment", []) for p in shlex.split(value)]
    return dict(p.split("=", 1) for p in pairs)


def seconds(span: str) -> float:
    """A systemd time span in the forms these units use: "90", "90s", "1min 30s"."""
    units = {"": 1, "s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", span):
        total += float(number) * units[unit]
    return total


@pytest.fixture
def stubbed_units(tmp_path: Path) -> dict[str, Path]:
    """Copies of the units whose ExecStart= points at an executable stub."""
    stub = tmp_path / "bin" / "sentinel"
    stub.parent.mkdir()
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    copies = {}
    for unit in UNITS:
        copy = tmp_path / unit.name
        copy.write_text(unit.read_text().replace(INSTALLED, str(stub)))
        copies[unit.name] = copy
    return copies


# ---- systemd-analyze -------------------------------------------------------------------------


def test_units_name_the_installed_command_and_only_there() -> None:
    """The stubbed copies differ in ExecStart's path alone, so verifying them verifies these."""
    for path in UNITS:
        starts = parse_unit(path)["Service"]["ExecStart"]
        assert [s.split()[0] for s in starts] == [INSTALLED]
        text = path.read_text()
        assert text.count(INSTALLED) == sum(line.count(INSTALLED) for line in starts)


@needs_analyze
@pytest.mark.parametrize("name", [u.name for u in UNITS])
def test_systemd_analyze_verify_is_silent(stubbed_units: dict[str, Path], name: str) -> None:
    done = subprocess.run(
        ["systemd-analyze", "verify", str(stubbed_units[name])],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stderr == "", done.stderr
    assert done.returncode == 0, done.stdout


@needs_analyze
def test_both_units_verify_together(stubbed_units: dict[str, Path]) -> None:
    worker0 = stubbed_units["sentinel-worker@.service"].with_name("sentinel-worker@0.service")
    shutil.copy(stubbed_units["sentinel-worker@.service"], worker0)
    done = subprocess.run(
        ["systemd-analyze", "verify", str(stubbed_units["sentinel.service"]), str(worker0)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (done.returncode, done.stderr) == (0, "")


def exposure(unit: Path) -> float:
    done = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    found = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", done.stdout)
    assert found, done.stdout
    return float(found.group(1))


@needs_analyze
@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_exposure_is_at_most_2_5(unit: Path) -> None:
    assert exposure(unit) <= MAX_EXPOSURE


# ---- what the units say ------------------------------------------------------------------------


def test_the_daemon_unit_is_a_notify_service_with_a_watchdog() -> None:
    unit = parse_unit(DAEMON_UNIT)
    assert one(unit, "Type") == "notify"
    assert one(unit, "NotifyAccess") == "main"
    assert seconds(one(unit, "WatchdogSec")) >= 10
    assert one(unit, "Restart") == "on-failure"
    assert one(unit, "KillMode") == "mixed"
    argv = one(unit, "ExecStart").split()[1:]
    assert cli.build_parser().parse_args(argv).command == "run"


def test_the_stop_timeout_covers_the_grace_period_and_the_worker_stop() -> None:
    """First SIGTERM: trials get shutdown.grace_s, then workers up to 10 s more."""
    grace = Settings().shutdown.grace_s
    assert seconds(one(parse_unit(DAEMON_UNIT), "TimeoutStopSec")) >= grace + 10


def test_the_units_environment_is_valid_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    env = environment(parse_unit(DAEMON_UNIT))
    assert env["SENTINEL_STATE_DIR"] == "/var/lib/sentinel"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.state_dir == Path("/var/lib/sentinel")
    assert settings.logging.format == "json"


def test_worker_units_read_the_settings_the_daemon_unit_reads() -> None:
    """A worker systemd runs is no child of the daemon: it must load the same settings."""
    daemon, worker = parse_unit(DAEMON_UNIT), parse_unit(WORKER_UNIT)

    def settings_env(unit: dict[str, dict[str, list[str]]]) -> dict[str, str]:
        return {k: v for k, v in environment(unit).items() if k.startswith("SENTINEL_")}

    assert settings_env(worker) == settings_env(daemon)
    assert worker["Service"]["EnvironmentFile"] == daemon["Service"]["EnvironmentFile"]


@pytest.mark.parametrize("path", UNITS, ids=lambda u: u.name)
def test_units_run_as_sentinel_with_the_operators_group_in_var_lib(path: Path) -> None:
    unit = parse_unit(path)
    assert one(unit, "User") == "sentinel"
    assert one(unit, "Group") == "sentinel-ops"
    assert one(unit, "StateDirectory") == "sentinel"
    assert one(unit, "StateDirectoryMode") == "0750"
    assert one(unit, "UMask") == "0027"
    assert one(unit, "WorkingDirectory") == "/var/lib/sentinel"


@pytest.mark.parametrize("path", UNITS, ids=lambda u: u.name)
def test_hardening_leaves_the_libraries_and_gpus_working(path: Path) -> None:
    service = parse_unit(path)["Service"]
    assert "pid" not in service.get("ProcSubset", []), "psutil and NVML read /proc as a whole"
    assert service.get("PrivateDevices", ["no"])[-1] in ("no", "false", "0"), "hides the GPUs"
    filters = service.get("SystemCallFilter", [])
    assert not any("@resources" in f and f.startswith("~") for f in filters), "OpenMP needs it"
    assert "@system-service" in filters
    assert service["DevicePolicy"] == ["closed"]
    # Every NVIDIA device group: nvidiactl and nvidiaN (major 195), nvidia-uvm, nvidia-caps.
    assert service["DeviceAllow"] == ["char-nvidia* rw"]
    assert service["NoNewPrivileges"] == ["yes"]
    assert service["CapabilityBoundingSet"] == [""]
    assert service["ProtectSystem"] == ["strict"]


def test_the_worker_unit_runs_one_worker_on_its_gpu() -> None:
    unit = parse_unit(WORKER_UNIT)
    assert unit["Unit"]["PartOf"] == ["sentinel.service"]
    assert "sentinel.service" in " ".join(unit["Unit"]["After"]).split()
    assert one(unit, "Restart") == "always"
    assert one(unit, "KillMode") == "control-group"
    assert seconds(one(unit, "TimeoutStopSec")) > 0
    env = environment(unit)
    assert env["CUDA_VISIBLE_DEVICES"] == "%i"
    assert env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    argv = one(unit, "ExecStart").replace("%i", "3").split()
    assert argv[1] == "worker"
    args = worker_parser().parse_args(argv[2:])
    assert (args.state_dir, args.worker_id, args.gpu) == (Path("/var/lib/sentinel"), "gpu3", 3)
    # The heartbeat comes from the settings, as the daemon's own workers' does.
    assert args.heartbeat_s is None


# ---- the Dask units (docs/dask.md) -------------------------------------------------------------

DASK_SCHEDULER_UNIT = SYSTEMD / "sentinel-dask-scheduler.service"
DASK_WORKER_UNIT = SYSTEMD / "sentinel-dask-worker@.service"
DASK_UNITS = [DASK_SCHEDULER_UNIT, DASK_WORKER_UNIT]
DASK = "/opt/sentinel/venv/bin/dask"


@needs_analyze
@pytest.mark.parametrize("unit", DASK_UNITS, ids=lambda u: u.name)
def test_the_dask_units_verify_silently_and_are_hardened(tmp_path: Path, unit: Path) -> None:
    stub = tmp_path / "bin" / "dask"
    stub.parent.mkdir()
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    assert [s.split()[0] for s in parse_unit(unit)["Service"]["ExecStart"]] == [DASK]
    copy = tmp_path / unit.name.replace("@.", "@0.")
    copy.write_text(unit.read_text().replace(DASK, str(stub)))
    done = subprocess.run(
        ["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60
    )
    assert (done.returncode, done.stderr) == (0, "")
    assert exposure(unit) <= MAX_EXPOSURE


def test_the_dask_scheduler_leaves_retries_to_sentinel() -> None:
    unit = parse_unit(DASK_SCHEDULER_UNIT)
    # A worker's death fails its task at once; trials.max_attempts decides about retries.
    assert environment(unit)["DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES"] == "0"
    argv = one(unit, "ExecStart").split()
    assert argv[1:4] == ["scheduler", "--port", "8786"]
    assert one(unit, "User") == "sentinel" and one(unit, "Restart") == "always"


def test_the_dask_worker_unit_takes_one_trial_at_a_time_on_its_gpu() -> None:
    unit = parse_unit(DASK_WORKER_UNIT)
    env = environment(unit)
    assert env["CUDA_VISIBLE_DEVICES"] == "%i"
    assert env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    argv = one(unit, "ExecStart").split()
    assert argv[1:3] == ["worker", "${DASK_SCHEDULER}"]

    def flag(name: str) -> str:
        return argv[argv.index(name) + 1]

    assert flag("--nthreads") == "1" and flag("--nworkers") == "1"
    # What every trial asks for (dispatch.resource, one unit).
    assert flag("--resources") == f"{Settings().dispatch.resource}=1"
    assert one(unit, "User") == "sentinel" and one(unit, "Group") == "sentinel-ops"
    assert one(unit, "Restart") == "always"  # it exits when its scheduler goes away
    service = unit["Service"]
    assert service["DeviceAllow"] == ["char-nvidia* rw"]
    assert "/var/lib/sentinel" in service["ReadWritePaths"]  # the shared state directory
