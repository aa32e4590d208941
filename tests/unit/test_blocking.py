"""Why dispatching is held back: the reasons' log lines, and what ``health.json`` says."""

from __future__ import annotations

from pathlib import Path

import orjson
from structlog.testing import capture_logs

from sentinel_daemon.daemon.blocking import DispatchBlocks
from sentinel_daemon.daemon.health import HEALTH_BYTES, Health
from sentinel_daemon.sdnotify import Notifier

CAPACITY = "no Dask worker offers a whole unit of GPU (dispatch.resource)"


def test_each_reason_is_logged_at_warning_when_it_starts_and_at_info_when_it_ends() -> None:
    blocks = DispatchBlocks()
    with capture_logs() as logs:
        assert blocks.update({"no_capacity": CAPACITY}, now=10.0) is True
        assert blocks.update({"no_capacity": CAPACITY}, now=11.0) is False
        assert blocks.update({"no_capacity": CAPACITY + "; 2 workers"}, now=12.0) is True
        assert blocks.update({"no_capacity": CAPACITY, "admission": "host memory"}, 13.0)
        assert blocks.update({"admission": "host memory"}, now=14.5) is True
        assert blocks.update({}, now=20.0) is True
    assert [(e["event"], e["log_level"], e["reason"]) for e in logs] == [
        ("dispatch.blocked", "warning", "no_capacity"),
        ("dispatch.blocked", "warning", "admission"),
        ("dispatch.unblocked", "info", "no_capacity"),
        ("dispatch.unblocked", "info", "admission"),
    ]
    assert logs[0]["detail"] == CAPACITY and "worker offering the resource" in logs[0]["action"]
    assert logs[2]["blocked_s"] == 4.5 and logs[3]["blocked_s"] == 7.0
    assert blocks.reasons == {}


def read_health(state_dir: Path) -> dict[str, object]:
    data = (state_dir / "health.json").read_bytes()
    assert len(data) == HEALTH_BYTES  # rewritten in place, never a new file
    health = orjson.loads(data)
    assert isinstance(health, dict)
    return health


def test_health_is_degraded_while_dispatch_is_blocked_and_says_why(tmp_path: Path) -> None:
    health = Health(tmp_path, tmp_path, Notifier())
    health.write(None)
    assert read_health(tmp_path)["status"] == "ok"
    health.blocked = {"no_scheduler": "dask scheduler tcp://s:8786: unreachable " + "x" * 5000}
    health.write(None)
    seen = read_health(tmp_path)
    assert seen["status"] == "degraded"
    assert str(seen["reason"]).startswith("dispatch blocked (no_scheduler): dask scheduler")
    assert list(seen["blocked"]) == ["no_scheduler"]  # type: ignore[call-overload]
    health.degraded = "[Errno 28] No space left on device"
    health.write(None)
    assert read_health(tmp_path)["reason"] == "[Errno 28] No space left on device"
    health.degraded, health.blocked = None, {}
    health.write(None)
    assert read_health(tmp_path)["status"] == "ok"
