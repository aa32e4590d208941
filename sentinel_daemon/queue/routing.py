"""Routing trial commands by the kind of worker they need: GPU or CPU (pure, no I/O).

Each :class:`~sentinel_daemon.queue.messages.TrialCommand` says what it needs in
``device`` (:func:`wanted_device`, from the ``models`` settings): ``gpu`` for XGBoost (and
for LightGBM set to ``cuda`` or ``opencl``), ``cpu`` for LightGBM (and XGBoost set to
``cpu``). The queue keeps one *lane* a kind beside the shared ``pending/`` folder
(``pending-gpu/``, ``pending-cpu/``; names in :mod:`sentinel_daemon.layout`). A command
goes into its kind's lane only when the daemon runs workers of both kinds
(:func:`lane_for`); otherwise, and for commands written before ``device`` existed, into
``pending/``, which every worker serves. A worker claims from its own kind's lane and from
``pending/``, oldest first across both, never from the other kind's lane.

No overflow: an XGBoost trial waits for a GPU worker even while a CPU worker idles. On the
issue-14 H200 host an XGBoost trial took 2.1-3.0 s on the GPU against 5.3-15.1 s on CPU
threads: a CPU worker that took one would hold a GPU trial (and its own cores) about 2.5
times as long, while the GPU worker it waited for is free again within seconds, and the
LightGBM trials that CPU worker is there for would queue behind it. The same holds the
other way: a GPU worker has one CPU thread, and a LightGBM trial on it would take many
times as long as on a CPU worker.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Literal, TypeAlias

from sentinel_daemon.core.events import ModelKind
from sentinel_daemon.layout import QUEUE_LANES
from sentinel_daemon.settings import ModelSettings

#: What a trial needs: a GPU worker or a CPU worker.
Device: TypeAlias = Literal["gpu", "cpu"]
DEVICES: tuple[Device, ...] = ("gpu", "cpu")


def wanted_device(model: ModelKind | str, models: ModelSettings) -> Device:
    """The kind of worker ``model``'s trials go to under the ``models`` settings."""
    if model == ModelKind.XGBOOST:
        return "gpu" if models.xgboost.device == "gpu" else "cpu"
    if model == ModelKind.LIGHTGBM:
        return "cpu" if models.lightgbm.device == "cpu" else "gpu"
    raise ValueError(f"unknown model {model!r}")


def lanes_in_use(kinds: Collection[Device]) -> frozenset[Device]:
    """The lanes the daemon puts commands into, given the kinds of its workers.

    Both kinds: a lane each. One kind or none (only ``sentinel-worker@`` units, or the
    Dask backend, which routes by resource instead): none, every command goes to
    ``pending/``, so a trial never waits for a kind of worker that is not there.
    """
    present = frozenset(kinds)
    return present if present == frozenset(DEVICES) else frozenset()


def lane_for(device: Device | None, lanes: frozenset[Device]) -> Device | None:
    """The lane of a command needing ``device`` (None: the shared ``pending/``)."""
    return device if device is not None and device in lanes else None


def lane_dir_name(lane: Device | None) -> str:
    """The folder of ``lane`` under the queue root (``pending``, ``pending-gpu``...)."""
    return QUEUE_LANES[lane]


__all__ = [
    "DEVICES",
    "Device",
    "lane_dir_name",
    "lane_for",
    "lanes_in_use",
    "wanted_device",
]
