"""GPU discovery through NVML (``nvidia-ml-py``): no GPU or no driver means none, never a crash."""

from __future__ import annotations

import os

import structlog

log = structlog.get_logger(__name__)


def discover_gpus() -> list[int]:
    """Indices (NVML order) of the GPUs this daemon may use; empty without GPU or driver.

    Honours ``CUDA_VISIBLE_DEVICES`` when the daemon itself runs under one (indices or
    ``GPU-`` UUIDs; empty hides all). Never raises: the reason for an empty list is logged.
    """
    try:
        import pynvml
    except ImportError as exc:
        log.warning("gpu.discovery_failed", reason=f"nvidia-ml-py is not installed ({exc})")
        return []
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        log.debug("gpu.none", reason=f"NVML unavailable: {exc} (no NVIDIA driver?)")
        return []
    try:
        count = pynvml.nvmlDeviceGetCount()
        uuids = []
        for index in range(count):
            uuid = pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(index))
            uuids.append(uuid.decode() if isinstance(uuid, bytes) else str(uuid))
    except pynvml.NVMLError as exc:
        log.warning("gpu.discovery_failed", reason=f"NVML query failed: {exc}")
        return []
    finally:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError as exc:
            log.debug("gpu.nvml_shutdown_failed", reason=str(exc))
    gpus = _visible(list(range(count)), uuids, os.environ.get("CUDA_VISIBLE_DEVICES"))
    log.info("gpu.discovered", gpus=gpus, total=count)
    return gpus


def _visible(indices: list[int], uuids: list[str], visible: str | None) -> list[int]:
    """The NVML indices that a ``CUDA_VISIBLE_DEVICES`` value lets through."""
    if visible is None:
        return indices
    chosen: list[int] = []
    for entry in (e.strip() for e in visible.split(",")):
        if not entry:
            continue
        if entry.isdigit() and int(entry) in indices:
            chosen.append(int(entry))
        elif entry in uuids:
            chosen.append(uuids.index(entry))
        else:
            # CUDA stops at the first invalid entry; so do we, and say so.
            log.warning("gpu.visible_device_ignored", entry=entry, visible=visible)
            break
    return list(dict.fromkeys(chosen))
