"""`make demo`: the daemon, one job, end to end.

Generates a small synthetic IEEE-CIS data set, starts `sentinel run` in the background,
submits `config/jobs/demo.yaml` with `sentinel submit`, follows it with `sentinel wait`,
prints the leaderboard from the event log and where the promoted model is, stops the
daemon with SIGTERM (a clean stop: exit 0), and checks the log with `sentinel log verify`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parent.parent
JOB_FILE = REPO / "config" / "jobs" / "demo.yaml"
SENTINEL = [sys.executable, "-m", "sentinel_daemon.cli"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("demo"))
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args()
    root: Path = args.dir.resolve()
    root.mkdir(parents=True, exist_ok=True)
    data, state = root / "data", root / "state"

    if not (data / "train_transaction.csv").exists():
        step(f"generating {args.rows:,} synthetic IEEE-CIS rows in {data}")
        run("gen-data", "--rows", str(args.rows), "--out", str(data), "--seed", "7")
    shutil.rmtree(state, ignore_errors=True)  # a fresh state each run; the data stay
    # The job file names its data relative to the daemon's working folder: the demo folder.
    shutil.copyfile(JOB_FILE, root / "demo.yaml")

    step(f"starting the daemon: sentinel run --workers {args.workers} (state in {state})")
    env = {**os.environ, "SENTINEL_STATE_DIR": str(state), "SENTINEL_LOGGING__FORMAT": "console"}
    daemon_log = (root / "daemon.log").open("wb")
    daemon = subprocess.Popen(
        [*SENTINEL, "run", "--workers", str(args.workers)],
        cwd=root,
        env=env,
        stdout=daemon_log,
        stderr=subprocess.STDOUT,
    )
    try:
        ready(daemon, state / "health.json")
        step("sentinel submit demo.yaml")
        job_id = run("submit", "demo.yaml", cwd=root, env=env).strip().splitlines()[-1].split()[-1]
        print(f"    job id: {job_id}")
        step(f"sentinel wait {job_id}")
        started = time.monotonic()
        waited = subprocess.run(
            [*SENTINEL, "wait", job_id, "--timeout", str(args.timeout)], cwd=root, env=env
        )
        print(f"    finished in {time.monotonic() - started:.1f} s (exit {waited.returncode})")
        step("sentinel status")
        print(run("status", job_id, cwd=root, env=env), end="")
        step(f"sentinel report {job_id}")
        report = run("report", job_id, cwd=root, env=env).strip()
        print(f"    {report}  (open it in a browser; it needs no network)")
    finally:
        step("stopping the daemon (SIGTERM)")
        daemon.send_signal(signal.SIGTERM)
        code = daemon.wait(timeout=120)
        daemon_log.close()
        print(f"    daemon exited with {code}; its log: {root / 'daemon.log'}")
    leaderboard(state, job_id)
    step("sentinel log verify")
    print(run("log", "verify", cwd=root, env=env), end="")
    return 0 if waited.returncode == 0 and code == 0 else 1


def leaderboard(state: Path, job_id: str) -> None:
    """The job's saved trials, best first, and the promoted model: all from the event log."""
    records = []
    for segment in sorted((state / "events").glob("*.jsonl")):
        records += [orjson.loads(line) for line in segment.read_bytes().splitlines() if line]
    mine = [r for r in records if r.get("job_id") == job_id]
    saved = sorted(
        (r for r in mine if r["type"] == "trial.saved"), key=lambda r: r["value"], reverse=True
    )
    pruned = [r for r in mine if r["type"] == "trial.pruned"]
    step(f"leaderboard: {len(saved)} trials saved, {len(pruned)} pruned (validation ROC AUC)")
    for r in saved:
        took = f"{r['duration_s']:.1f} s"
        print(f"    trial {r['trial']:3d}  {r['model']:8s}  {r['value']:.4f}  ({took})")
    for r in mine:
        if r["type"] == "stage.completed" and r["stage"] == "validate":
            for model, m in r["outputs"]["test"].items():
                print(
                    f"    test split: {model:8s} ROC AUC {m['roc_auc']:.4f}  PR AUC "
                    f"{m['pr_auc']:.4f}  recall@1%FPR {m['recall_at_1pct_fpr']:.3f}"
                )
            print(f"    quality gate: {r['outputs']['gate']['reason']}")
        if r["type"] == "model.promoted":
            card = (state / r["artifact"]).parent / "model-card.json"
            print(f"    promoted: trial {r['trial']} ({r['model']}) -> {state / r['artifact']}")
            print(f"    model card: {card}")
        if r["type"] in ("job.failed", "job.cancelled"):
            print(f"    {r['type']}: {r['reason']}")


def ready(daemon: subprocess.Popen[bytes], health: Path, timeout: float = 120.0) -> None:
    """Wait until the daemon has started (it writes health.json once it holds the state
    directory): only `sentinel run` creates the state directory, and `submit` warns when no
    daemon runs."""
    deadline = time.monotonic() + timeout
    while not health.exists():
        if daemon.poll() is not None:
            raise SystemExit(f"the daemon exited with {daemon.returncode} before it was ready")
        if time.monotonic() > deadline:
            raise SystemExit(f"the daemon wrote no {health} within {timeout:g} s")
        time.sleep(0.05)


def run(*argv: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [*SENTINEL, *argv], cwd=cwd, env=env, check=True, stdout=subprocess.PIPE, text=True
    )
    return done.stdout


def step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
