"""Why dispatching is not happening: one record of the reasons, for logs, health and metrics.

Trials can be held back for several reasons at once, each with its own source:

- ``admission``: admission control (:class:`~sentinel_daemon.daemon.monitor.AdmissionGate`),
  host or GPU memory under its floor;
- ``no_scheduler``: the Dask scheduler cannot be reached;
- ``no_capacity``: no Dask worker offers a unit of the resource trials ask for;
- ``writes_failing``: the event log cannot be written (a full disk; the daemon is degraded);
- ``disk_full``: the state directory's file system is under ``resources.min_free_disk_bytes``
  free, or a trial just failed for lack of space (:mod:`~sentinel_daemon.daemon.hostpause`;
  such a trial is retried without using an attempt).

The core loop gathers them each turn into :meth:`DispatchBlocks.update`, which logs
``dispatch.blocked`` at warning when a reason starts and ``dispatch.unblocked`` at info
when it ends (with how long it lasted), and says whether anything changed, so that
``health.json`` and the ``sentinel_dispatch_blocked{reason}`` gauge follow at once.
"""

from __future__ import annotations

from collections.abc import Mapping

import structlog

log = structlog.get_logger(__name__)

#: Every reason, in the order they are reported (each is a label of the gauge).
REASONS = ("admission", "no_scheduler", "no_capacity", "writes_failing", "disk_full")
#: What the daemon does meanwhile, for the log line that says a reason started.
ACTIONS = {
    "admission": "no new trial or retry until memory frees (resources.min_free_*)",
    "no_scheduler": "trials wait queued; reconnecting every dispatch.retry_s",
    "no_capacity": "trials wait queued until a worker offering the resource joins",
    "writes_failing": "nothing is dispatched until the event log can be written",
    "disk_full": "no trial or retry is dispatched until space returns; no attempt is charged",
}


class DispatchBlocks:
    """The reasons dispatching is held back now (reason -> a sentence), and since when."""

    def __init__(self) -> None:
        self.reasons: dict[str, str] = {}
        self._since: dict[str, float] = {}

    def update(self, reasons: Mapping[str, str], now: float) -> bool:
        """``reasons`` hold now (``now``: ``time.monotonic()``); whether anything changed.

        Logs each reason that starts and each that ends; a changed sentence of a reason
        that goes on (another worker count, say) is a change, but not logged again.
        """
        changed = False
        for reason in REASONS:
            detail = reasons.get(reason)
            before = self.reasons.get(reason)
            if detail is not None and before is None:
                self._since[reason] = now
                log.warning(
                    "dispatch.blocked", reason=reason, detail=detail, action=ACTIONS[reason]
                )
            elif detail is None and before is not None:
                lasted = now - self._since.pop(reason, now)
                log.info(
                    "dispatch.unblocked", reason=reason, blocked_s=round(lasted, 1), was=before
                )
            changed |= detail != before
        self.reasons = {r: reasons[r] for r in REASONS if r in reasons}
        return changed


__all__ = ["ACTIONS", "REASONS", "DispatchBlocks"]
