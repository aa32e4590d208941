"""Real worker processes claiming from one queue at once: no command is lost or doubled."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections import Counter
from pathlib import Path

from sentinel_daemon.queue.maildir import Queue
from sentinel_daemon.queue.messages import Saved, TrialCommand, TrialData
from tests.helpers import wait_for

CHILD = Path(__file__).with_name("queue_worker_child.py")
REPO = Path(__file__).resolve().parents[2]
COMMANDS = 300
WORKERS = ("w1", "w2", "w3")


def _command(trial: int) -> TrialCommand:
    return TrialCommand(
        job_id="race",
        trial=trial,
        attempt=1,
        model="lightgbm",
        params={"num_leaves": 31},
        data=TrialData(
            transactions=Path("data/t.csv"),
            identity=Path("data/i.csv"),
            cache_dir=Path("cache"),
            test_fraction=0.2,
            valid_fraction=0.2,
        ),
        artifact_dir="models/race",
        report_every=5,
    )


def _read_line(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    return proc.stdout.readline().strip()


def test_three_workers_claim_each_command_exactly_once_and_every_result_arrives(
    tmp_path: Path,
) -> None:
    root, go = tmp_path / "queue", tmp_path / "go"
    queue = Queue(root)
    expected = {_command(t).command_id for t in range(COMMANDS)}
    for trial in range(COMMANDS):
        queue.put(_command(trial))

    procs: list[subprocess.Popen[str]] = []
    try:
        for wid in WORKERS:
            procs.append(
                subprocess.Popen(
                    [sys.executable, str(CHILD), str(root), wid, str(go)],
                    stdout=subprocess.PIPE,
                    text=True,
                    cwd=REPO,
                )
            )
        for proc in procs:
            assert _read_line(proc) == "ready"
        go.touch()

        # The daemon's side, while the workers run: ingest, then ack and finish.
        seen: Counter[str] = Counter()
        holders: dict[str, str] = {}

        def ingest() -> bool:
            for path, message in queue.results():
                assert isinstance(message, Saved)
                assert message.sha256 == hashlib.sha256(message.command_id.encode()).hexdigest()
                seen[message.command_id] += 1
                holders[message.command_id] = message.worker_id
                queue.ack(path)
                assert queue.finish(message.worker_id, message.command_id)
            return sum(seen.values()) >= COMMANDS

        wait_for(ingest, timeout=60, what=f"{COMMANDS} results")
        outputs = {}
        for wid, proc in zip(WORKERS, procs, strict=True):
            out, _ = proc.communicate(timeout=30)
            assert proc.returncode == 0, f"{wid} exited {proc.returncode}"
            lines = out.split()
            assert lines[-2] == "done"
            outputs[wid] = lines[:-2]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
            if proc.stdout is not None:
                proc.stdout.close()

    claimed = Counter(cid for lines in outputs.values() for cid in lines)
    assert set(claimed) == expected and max(claimed.values()) == 1, "a command claimed twice"
    assert set(seen) == expected and max(seen.values()) == 1, "a result lost or doubled"
    for wid, lines in outputs.items():
        assert all(holders[cid] == wid for cid in lines)
    assert queue.results() == []
    assert queue.in_flight() == {}
    assert list(queue.pending.iterdir()) == [] and list(queue.bad.iterdir()) == []
    assert list(queue.tmp.iterdir()) == []  # every write was renamed into place
    print("claims per worker:", {wid: len(lines) for wid, lines in outputs.items()})
