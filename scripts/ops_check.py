"""`make ops-check`, last step: `promtool check metrics` on a live scrape of a real daemon.

Generates a small data set, starts `sentinel run` in a temporary folder (metrics on a free
port of 127.0.0.1), submits a job and scrapes `/metrics` while the job runs, so that the
per-job series are there too. The scrape must pass `promtool check metrics`, and no series
may carry the `job` or `instance` label (Prometheus's own). Then the daemon is stopped with
SIGTERM, which must end it with exit 0.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import orjson
import yaml
from prometheus_client.parser import text_string_to_metric_families

SENTINEL = [sys.executable, "-m", "sentinel_daemon.cli"]
T = TypeVar("T")

JOB = {
    "name": "ops-check",
    "data": {"transactions": "data/train_transaction.csv", "identity": "data/train_identity.csv"},
    "models": ["xgboost"],
    "search": {
        "n_trials": 40,
        "parallelism": 1,
        "sampler": "random",
        "pruner": "none",
        "seed": 1,
        "space": {"xgboost": {"n_estimators": [10, 30], "max_depth": [2, 3]}},
    },
}


def wait_for(
    what: str, probe: Callable[[], T | None], timeout: float, proc: subprocess.Popen[bytes]
) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = probe()
        if found is not None:
            return found
        if proc.poll() is not None:
            raise SystemExit(f"ops-check: the daemon exited ({proc.returncode}) before {what}")
        time.sleep(0.2)
    raise SystemExit(f"ops-check: no {what} within {timeout:.0f} s")


def serving_port(log: Path) -> int | None:
    for line in log.read_text(errors="replace").splitlines():
        line = re.sub(r"^<\d>", "", line)
        if line.startswith("{") and '"metrics.serving"' in line:
            return int(orjson.loads(line)["port"])
    return None


def running_with_a_saved_trial(events: Path) -> bool | None:
    types = [
        orjson.loads(line)["type"]
        for segment in sorted(events.glob("*.jsonl"))
        for line in segment.read_bytes().splitlines()
        if line.endswith(b"}")
    ]
    if "job.completed" in types or "job.failed" in types:
        raise SystemExit("ops-check: the job ended before a scrape could see it running")
    return True if "trial.saved" in types else None


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--promtool", default="promtool", help="the promtool binary")
    parser.add_argument("--timeout", type=float, default=180.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sentinel-ops-check-") as tmp:
        root = Path(tmp)
        subprocess.run(
            [*SENTINEL, "gen-data", "--rows", "2000", "--out", str(root / "data"), "--seed", "7"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("SENTINEL_")}
        env |= {
            "SENTINEL_STATE_DIR": str(root / "state"),
            "SENTINEL_METRICS__PORT": "0",
            "SENTINEL_LOGGING__FORMAT": "json",
        }
        log = root / "daemon.log"
        with log.open("wb") as out:
            daemon = subprocess.Popen(
                [*SENTINEL, "run", "--workers", "1"],
                cwd=root,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            port = wait_for("metrics port", lambda: serving_port(log), args.timeout, daemon)
            inbox = root / "state" / "inbox"
            wait_for("inbox", lambda: inbox.is_dir() or None, args.timeout, daemon)
            (inbox / ".ops-check.yaml.tmp").write_text(yaml.safe_dump(JOB))
            os.rename(inbox / ".ops-check.yaml.tmp", inbox / "ops-check.yaml")
            events = root / "state" / "events"
            wait_for(
                "saved trial", lambda: running_with_a_saved_trial(events), args.timeout, daemon
            )
            url = f"http://127.0.0.1:{port}/metrics"
            with urllib.request.urlopen(url, timeout=10) as resp:
                scrape = resp.read()
            (root / "scrape.prom").write_bytes(scrape)
            families = list(text_string_to_metric_families(scrape.decode()))
            labels = {k for f in families for s in f.samples for k in s.labels}
            print(f"scraped {url}: {len(families)} families, labels {sorted(labels)}")
            if labels & {"job", "instance"}:
                print("ops-check: a series carries Prometheus's job or instance label")
                return 1
            if not any(s.name == "sentinel_job_best_value" for f in families for s in f.samples):
                print("ops-check: the running job's sentinel_job_best_value is missing")
                return 1
            check = subprocess.run([args.promtool, "check", "metrics"], input=scrape)
            if check.returncode != 0:
                return check.returncode
            print("promtool check metrics: the live scrape passes")
        finally:
            if daemon.poll() is None:
                daemon.send_signal(signal.SIGTERM)
            try:
                code = daemon.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(daemon.pid, signal.SIGKILL)
                code = daemon.wait()
        if code != 0:
            print(f"ops-check: the daemon exited {code} on SIGTERM; its log:")
            print(log.read_text(errors="replace")[-4000:])
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
