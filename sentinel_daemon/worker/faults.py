"""Fault injection for the crash tests: which fault a command carries, and what it does.

Only with ``SENTINEL_TEST_FAULTS=1``. The daemon puts a planned fault into a trial command
(never into the log); the worker acts on it at the trial's first report (see
:mod:`sentinel_daemon.worker.runner`).
"""

from __future__ import annotations

import json
import os

from sentinel_daemon.errors import SentinelError

FAULTS_ENV = "SENTINEL_TEST_FAULTS"
FAULT_PARAM = "_fault"
FAULT_KINDS = ("crash", "hang", "raise", "slow", "memory", "gpu-lost")
SLOW_REPORT_S = 0.2
#: What the ``memory`` test fault holds.
FAULT_MEMORY_BYTES = 400 << 20


class InjectedFault(SentinelError):
    """The ``raise`` test fault: a trial that fails the way any training error would."""

    def __init__(self, command_id: str) -> None:
        self.command_id = command_id
        super().__init__(f"injected fault in command {command_id} ({FAULTS_ENV}=1)")


def _faults_enabled() -> bool:
    return os.environ.get(FAULTS_ENV) == "1"


#: Crash tests only: a JSON plan of faults to put into trial commands (see _test_fault).
FAULT_PLAN_ENV = "SENTINEL_TEST_FAULT_PLAN"


def _test_fault(job_id: str, number: int, attempt: int) -> str | None:
    """The fault the crash tests planned for this attempt (see :data:`FAULT_PLAN_ENV`).

    Only with ``SENTINEL_TEST_FAULTS=1``; the plan maps ``"<trial>"`` (every attempt),
    ``"<trial>@<attempt>"``, or either prefixed by ``"<job name>/"`` to a fault kind of
    :mod:`sentinel_daemon.worker.faults`. The fault goes into the command only, never the log.
    """
    if os.environ.get(FAULTS_ENV) != "1" or not (raw := os.environ.get(FAULT_PLAN_ENV)):
        return None
    plan = json.loads(raw)
    name = job_id.rsplit("-", 1)[0]
    for key in (
        f"{name}/{number}@{attempt}",
        f"{name}/{number}",
        f"{number}@{attempt}",
        f"{number}",
    ):
        if key in plan:
            return str(plan[key])
    return None
