"""Settings: defaults in code (mirrored by ``config/default.yaml``), a YAML file on top, then
environment variables ``SENTINEL_<KEY>`` and ``SENTINEL_<SECTION>__<KEY>`` over both.

Every process loads them the same way, with :func:`load_settings`: the daemon, the
workers it starts, its stage and report processes, and workers that systemd runs on their
own. The daemon hands its *effective* settings to its children through the environment
(:func:`exported`): while it runs, each setting is one ``SENTINEL_<FIELD>`` variable in its
environment, which every child inherits, so a child's :func:`load_settings` gives back the
daemon's settings exactly, however they were made (file, environment, command line).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator, Mapping, MutableMapping
from pathlib import Path
from typing import Annotated, Any, Literal

import orjson
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from sentinel_daemon.errors import ConfigError
from sentinel_daemon.layout import DATA_DIR

ENV_PREFIX = "SENTINEL_"
#: The settings file of every command (``--config`` wins over it).
CONFIG_ENV = "SENTINEL_CONFIG"
MAX_CONFIG_BYTES = 1 << 20


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class QueueSettings(BaseModel):
    """Tunables of the queue (a ``queue`` section of the daemon's settings)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: How often :meth:`Queue.claim_wait` looks at ``pending/`` again when it was empty.
    #: A listing of a near-empty folder costs microseconds, and this wait is part of every
    #: trial's hand-off, so it is short.
    poll_interval_s: float = Field(default=0.005, gt=0)
    #: :meth:`Queue.recover` removes ``tmp/`` files older than this. Workers may still be
    #: writing while a daemon restarts, and a write takes milliseconds, so a minute is safe.
    tmp_stale_s: float = Field(default=60.0, ge=0)
    #: :class:`Outbox` reserves ``msg_seq`` numbers in blocks this big (one fsync a block).
    seq_block: int = Field(default=1000, ge=1)


class InboxSettings(BaseModel):
    """The ``inbox`` section of the settings."""

    model_config = ConfigDict(extra="forbid")

    #: Seconds between full listings of the inbox, the safety net for lost inotify events.
    rescan_seconds: float = Field(default=5.0, gt=0.0, le=3600.0)
    #: Job files over this size are rejected unread.
    max_job_bytes: int = Field(default=65536, ge=1024, le=16 << 20)
    #: A file seen only by listing or a ``created`` event is reported once unchanged this long.
    settle_seconds: float = Field(default=0.5, ge=0.0, le=60.0)


class LoggingSettings(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    #: ``auto`` renders for people on a terminal and JSON lines otherwise (journald).
    format: Literal["auto", "console", "json"] = "auto"


class EventLogSettings(_Section):
    #: A new segment starts once the current one has passed this many bytes.
    segment_bytes: int = Field(default=64 << 20, ge=4096)
    #: A snapshot is written after this many records, and at a clean stop.
    snapshot_every: int = Field(default=10_000, ge=100)


class WorkerSettings(_Section):
    """Local worker processes: GPU workers and CPU workers side by side (docs/gpu.md).

    The split (:func:`sentinel_daemon.daemon.dispatch.plan.plan_workers`): ``per_gpu``
    workers on each GPU of ``gpus``, one thread each; ``cpu`` CPU workers sharing the cores
    left. ``count`` (also ``sentinel run --workers N``) overrides the total.
    """

    #: Local workers in all, overriding the split: GPU workers first (up to ``per_gpu`` a
    #: GPU), the rest CPU workers; with no GPU, N CPU workers. Null: the split from
    #: ``gpus``, ``per_gpu`` and ``cpu``. 0: none (only sentinel-worker@ units train).
    count: int | None = Field(default=None, ge=0, le=64)
    #: GPU indices (NVML order) to run GPU workers on. Null: those NVML finds (honouring
    #: the daemon's CUDA_VISIBLE_DEVICES). A list: exactly these, even where NVML sees none
    #: (pinning; tests). ``[]``: no GPU workers.
    gpus: list[Annotated[int, Field(ge=0, le=1023)]] | None = None
    #: Trials sharing one GPU at once (workers per GPU). 2: on an H200, two workers on the
    #: GPU finished the issue-14 job in 78 s against 98 s with one, and four gained nothing
    #: (83 s).
    per_gpu: int = Field(default=2, ge=1, le=16)
    #: CPU workers beside the GPU workers. Null: automatic, one per two cores left once
    #: the GPU workers have their thread each (at least one). 0: none.
    cpu: int | None = Field(default=None, ge=0, le=64)
    #: How often a worker replaces its heartbeat file.
    heartbeat_s: float = Field(default=1.0, gt=0.0, le=60.0)
    #: A worker whose heartbeat has not changed for this long is killed and counted lost.
    heartbeat_timeout_s: float = Field(default=30.0, gt=0.0, le=3600.0)
    #: Restart delay after a loss: doubles per consecutive loss from min to max.
    restart_backoff_min_s: float = Field(default=1.0, ge=0.0, le=600.0)
    restart_backoff_max_s: float = Field(default=30.0, ge=0.0, le=3600.0)


class TrialSettings(_Section):
    #: Attempts of one trial (its first run included) before it ends as failed.
    max_attempts: int = Field(default=3, ge=1, le=100)
    #: Workers report the validation score every this many boosting rounds (for pruning).
    report_every: int = Field(default=10, ge=1, le=10_000)
    #: A trial held by a worker longer than this is ended (its worker killed, or its Dask
    #: task cancelled) and retried as a lost worker's; null: no ceiling.
    timeout_s: float | None = Field(default=None, gt=0.0, le=30 * 86_400.0)


class ShutdownSettings(_Section):
    #: After the first SIGTERM/SIGINT, running trials get this long to finish.
    grace_s: float = Field(default=60.0, ge=0.0, le=86_400.0)
    #: Then the workers are sent SIGTERM and get this long to exit before SIGKILL.
    worker_grace_s: float = Field(default=10.0, ge=0.0, le=3_600.0)


class MetricsSettings(_Section):
    #: Serve Prometheus metrics over HTTP (the daemon only; workers have no endpoint).
    enabled: bool = True
    #: Listen address; keep it on loopback unless a firewall guards the port.
    address: str = "127.0.0.1"
    #: TCP port; 0 picks a free one, which the daemon logs (``metrics.serving``).
    port: int = Field(default=9464, ge=0, le=65535)


class ResourceSettings(_Section):
    #: No trial is dispatched while the host has less memory available than this.
    min_free_host_bytes: int = Field(default=512 << 20, ge=0)
    #: ... nor while a GPU a worker uses has less free memory than this.
    min_free_gpu_bytes: int = Field(default=512 << 20, ge=0)
    #: ... nor while the state directory's file system has less free space than this (a
    #: trial that failed for a full disk is retried without using an attempt).
    min_free_disk_bytes: int = Field(default=16 << 20, ge=0)
    #: A worker whose process tree holds more resident memory is killed (0: no ceiling).
    worker_memory_max_bytes: int = Field(default=0, ge=0)
    #: How often host, GPU and worker memory are sampled.
    sample_every_s: float = Field(default=1.0, gt=0.0, le=60.0)


class XGBoostModelSettings(_Section):
    #: ``gpu``: XGBoost trials go to GPU workers when there are any (else CPU workers);
    #: ``cpu``: always to CPU workers.
    device: Literal["gpu", "cpu"] = "gpu"


class LightGBMModelSettings(_Section):
    #: ``cpu``: LightGBM trials go to CPU workers. ``cuda``: to GPU workers, trained with
    #: LightGBM's CUDA learner (``device_type=cuda``: needs a LightGBM built with it).
    #: ``opencl``: to GPU workers with ``device_type=gpu`` (the PyPI wheel's OpenCL
    #: learner; used only when asked for).
    device: Literal["cpu", "cuda", "opencl"] = "cpu"


class ModelSettings(_Section):
    """Per-model routing: which kind of worker trains each model, and on what device."""

    xgboost: XGBoostModelSettings = XGBoostModelSettings()
    lightgbm: LightGBMModelSettings = LightGBMModelSettings()


class DispatchSettings(_Section):
    """Where trials run: local worker processes, or a Dask cluster (docs/dask.md)."""

    #: ``local``: the queue directory and workers the daemon starts (or systemd's
    #: sentinel-worker@ units). ``dask``: tasks on the Dask scheduler at ``scheduler``.
    backend: Literal["local", "dask"] = "local"
    #: The Dask scheduler's address, e.g. ``tcp://10.0.0.5:8786`` (backend ``dask`` only).
    scheduler: str | None = None
    #: The worker resource a trial asks one unit of (``dask worker --resources GPU=1``).
    resource: str = Field(default="GPU", pattern=r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")
    #: The worker resource a CPU trial asks one unit of (``dask worker --resources CPU=1``).
    #: When the cluster has units of both, GPU trials ask ``resource`` and CPU trials
    #: this; when it has units of one only, every trial asks that one.
    cpu_resource: str = Field(default="CPU", pattern=r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")
    #: Trials in flight on the cluster at most; null: the cluster's whole units of
    #: ``resource`` and ``cpu_resource`` together.
    slots: int | None = Field(default=None, ge=1, le=4096)
    #: The state directory as Dask workers mount it (shared storage); null: the same path.
    worker_state_dir: Path | None = None
    #: How long one attempt to reach the scheduler may take.
    connect_timeout_s: float = Field(default=10.0, gt=0.0, le=600.0)
    #: While the scheduler is unreachable, try again this often.
    retry_s: float = Field(default=5.0, gt=0.0, le=600.0)

    @model_validator(mode="after")
    def _dask_needs_a_scheduler(self) -> DispatchSettings:
        if self.resource == self.cpu_resource:
            raise ValueError(
                f"dispatch.resource and dispatch.cpu_resource must differ (both {self.resource!r})"
            )
        if self.backend == "dask" and not self.scheduler:
            raise ValueError(
                "dispatch.scheduler is required when dispatch.backend is dask "
                "(e.g. tcp://scheduler-host:8786)"
            )
        return self


class Settings(BaseSettings):
    """Every setting of Sentinel, with its default."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", case_sensitive=False
    )

    state_dir: Path = Path("./sentinel-state")
    #: Folders job files may read data from (after resolving symlinks); empty means
    #: STATE/data and the daemon's working folder. Relative data paths in a job file
    #: resolve against the daemon's working folder.
    data_roots: list[Path] = Field(default_factory=list)
    logging: LoggingSettings = LoggingSettings()
    eventlog: EventLogSettings = EventLogSettings()
    inbox: InboxSettings = InboxSettings()
    queue: QueueSettings = QueueSettings()
    workers: WorkerSettings = WorkerSettings()
    trials: TrialSettings = TrialSettings()
    shutdown: ShutdownSettings = ShutdownSettings()
    metrics: MetricsSettings = MetricsSettings()
    resources: ResourceSettings = ResourceSettings()
    dispatch: DispatchSettings = DispatchSettings()
    models: ModelSettings = ModelSettings()

    def resolved_data_roots(self, cwd: Path | None = None) -> list[Path]:
        """``data_roots``, or the defaults (STATE/data and the working folder) when empty."""
        if self.data_roots:
            return list(self.data_roots)
        return [self.state_dir / DATA_DIR, cwd or Path.cwd()]

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment wins over the file (passed as init arguments); no .env files.
        return (env_settings, init_settings)


def read_config_file(path: Path) -> dict[str, Any]:
    """Load a settings file with ``yaml.safe_load``; it must be a mapping."""
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(str(path), "-", f"file is over {MAX_CONFIG_BYTES} bytes")
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(str(path), "-", f"cannot read the file: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), "-", f"not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(str(path), "-", "the file must hold a mapping of settings")
    return data


def load_settings(config: Path | None = None) -> Settings:
    """Build the settings from defaults, ``config`` and the environment.

    Raises :class:`ConfigError` naming the key, where it came from and what is wrong.
    """
    file_data = read_config_file(config) if config is not None else {}
    try:
        return Settings(**file_data)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or "-"
        env_name = ENV_PREFIX + "__".join(str(p) for p in err["loc"]).upper()
        source = (
            f"environment variable {env_name}"
            if env_name in {k.upper() for k in os.environ}
            else str(config or "defaults")
        )
        raise ConfigError(source, key, f"{err['msg']} (got {err.get('input')!r})") from None


def settings_environment(settings: Settings, environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` with ``settings`` in it, whole: the environment of a child process.

    Every variable that sets a setting (``SENTINEL_CONFIG``, ``SENTINEL_<FIELD>`` and
    ``SENTINEL_<FIELD>__<KEY>``) is replaced by one ``SENTINEL_<FIELD>`` a field, holding
    its value (JSON for sections and lists, as pydantic-settings reads them). So
    :func:`load_settings` without a file, under this environment, returns ``settings``;
    other variables (``SENTINEL_TEST_FAULTS``, ``JOURNAL_STREAM``...) pass unchanged.
    """
    fields = {name.upper() for name in Settings.model_fields}
    env = {k: v for k, v in environ.items() if not _sets_a_setting(k, fields)}
    for name, value in settings.model_dump(mode="json").items():
        text = value if isinstance(value, str) else orjson.dumps(value).decode()
        env[ENV_PREFIX + name.upper()] = text
    return env


def _sets_a_setting(name: str, fields: set[str]) -> bool:
    upper = name.upper()
    if upper == CONFIG_ENV:
        return True
    if not upper.startswith(ENV_PREFIX):
        return False
    return upper[len(ENV_PREFIX) :].split("__", 1)[0] in fields


@contextlib.contextmanager
def exported(settings: Settings, environ: MutableMapping[str, str] | None = None) -> Iterator[None]:
    """Put ``settings`` into this process's environment (for its children), then take them out.

    Only what this changed is undone: a variable set meanwhile by someone else stays. Call
    it before any thread that might read the environment starts: ``setenv`` is not safe
    against a concurrent ``getenv`` in C code.
    """
    environ = os.environ if environ is None else environ
    before = dict(environ)
    after = settings_environment(settings, before)
    for name in [k for k in before if k not in after]:
        del environ[name]
    for name, value in after.items():
        if before.get(name) != value:
            environ[name] = value
    try:
        yield
    finally:
        for name, value in after.items():
            if before.get(name) != value and environ.get(name) == value:
                if name in before:
                    environ[name] = before[name]
                else:
                    del environ[name]
        for name, value in before.items():
            if name not in after and name not in environ:
                environ[name] = value


def settings_digest(settings: Settings) -> str:
    """A short digest of every setting: equal digests, equal settings (logged at start-up)."""
    data = orjson.dumps(settings.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(data).hexdigest()[:12]


def defaults_as_yaml_data() -> dict[str, Any]:
    """The defaults as plain data, the shape of ``config/default.yaml``."""
    return Settings.model_construct().model_dump(mode="json")
