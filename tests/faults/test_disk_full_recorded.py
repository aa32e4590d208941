"""Disk full, in the fault table: tests/integration/test_disk_full.py run and recorded.

The scenario lives with the integration tests (``make test`` runs it there); at the full
scale (``make test-faults``) it runs here once more so that its figures are in the table:
the state directory on a real 48 MiB tmpfs, filled to ENOSPC mid-job, then freed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sentinel_daemon.tools.verify import verify
from tests.faults.record import full, record
from tests.integration.test_disk_full import (
    TMPFS_SIZE,
    small_disk,  # noqa: F401  (a fixture, used by name)
)
from tests.integration.test_disk_full import (
    test_a_full_disk_stops_dispatching_says_why_and_the_job_resumes_when_space_returns as case,
)

pytestmark = [
    pytest.mark.faults,
    pytest.mark.skipif(
        not full(), reason="short scale: tests/integration/test_disk_full.py runs it"
    ),
]


@pytest.mark.timeout(600)
def test_a_full_disk_degrades_the_daemon_loses_nothing_and_it_resumes(
    tmp_path: Path,
    small_disk: Path,  # noqa: F811
) -> None:
    injected = (
        f"state dir on a {TMPFS_SIZE} tmpfs filled to ENOSPC mid-trial, freed after "
        "`sentinel status` says degraded"
    )
    try:
        case(tmp_path, small_disk)
        # And once more from the outside: every record of the log checks after the episode.
        report = verify(small_disk)
        assert report.ok, report.problem
    except BaseException as exc:
        record("disk full", injected, cases=1, recovered=0, violations=1, note=str(exc)[:300])
        raise
    record("disk full", injected, cases=1, recovered=1)
