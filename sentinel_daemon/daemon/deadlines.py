"""The per-trial wall-clock ceiling, ``trials.timeout_s``, for every backend.

A trial's clock starts when a worker (a local one, one that systemd runs, or a Dask slot)
is first seen holding its command in ``STATE/queue/workers/``, and is judged by the
daemon's monotonic clock every ``resources.sample_every_s``: time spent queued does not
count, a wall-clock step changes nothing, and a restarted daemon starts every clock again
(it cannot know how long a predecessor's trial ran, and starting late only grants more).
:meth:`TrialClock.overdue` names the commands past the ceiling each time it is asked,
for as long as their worker holds them: what the daemon does about one (kill the worker,
cancel the task, take the command back) is idempotent, and a turn that failed to record
it is simply done again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Overdue:
    """``worker`` has held ``command_id`` for ``seconds``, past the ceiling."""

    worker: str
    command_id: str
    seconds: float

    def reason(self, timeout_s: float) -> str:
        """The sentence ``worker.lost`` (and so the trial's failure) carries."""
        return (
            f"its trial {self.command_id} ran {self.seconds:.1f} s, past trials.timeout_s "
            f"({timeout_s:g} s)"
        )


class TrialClock:
    """How long each claimed command has been held, against ``timeout_s`` (None: no ceiling)."""

    def __init__(self, timeout_s: float | None) -> None:
        self.timeout_s = timeout_s
        self._since: dict[tuple[str, str], float] = {}  # (command id, worker) -> first seen

    def overdue(self, in_flight: Mapping[str, str | None], now: float) -> list[Overdue]:
        """The commands of ``in_flight`` (command id -> its worker, None while pending)
        held past the ceiling at ``now`` (``time.monotonic()``), oldest first."""
        if self.timeout_s is None:
            return []
        held = {(cid, w): self._since.get((cid, w), now) for cid, w in in_flight.items() if w}
        self._since = held  # a command taken back and claimed again starts again
        late = [
            Overdue(worker, cid, now - since)
            for (cid, worker), since in held.items()
            if now - since >= self.timeout_s
        ]
        return sorted(late, key=lambda o: -o.seconds)


__all__ = ["Overdue", "TrialClock"]
