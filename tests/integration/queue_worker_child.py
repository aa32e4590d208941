"""A child for the concurrency test: claims commands until none is left, posting ``saved``.

Run as ``python queue_worker_child.py QUEUE_ROOT WORKER_ID GO_FILE``. It announces itself on
stdout (``ready``), waits for GO_FILE so that every worker starts claiming at once, then
prints each command id it claimed, one a line, and ``done`` when pending/ is empty.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from pathlib import Path

from sentinel_daemon.queue.maildir import Outbox, Queue
from sentinel_daemon.queue.messages import Saved


def main() -> None:
    root, worker_id, go = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    queue = Queue(root)
    outbox = Outbox(queue, worker_id)
    print("ready", flush=True)
    deadline = time.monotonic() + 30
    while not go.exists():
        if time.monotonic() > deadline:
            sys.exit("GO file never appeared")
        time.sleep(0.005)
    counter = 0
    while (claimed := queue.claim(worker_id)) is not None:
        cid = claimed.command.command_id
        counter += 1
        queue.beat(worker_id, {"command_id": cid, "counter": counter})
        if queue.should_prune(worker_id, cid):
            sys.exit(f"nobody asked to prune {cid}")
        outbox.send(
            Saved,
            cid,
            artifact=f"{claimed.command.artifact_dir}/{cid}.ubj",
            sha256=hashlib.sha256(cid.encode()).hexdigest(),
            metrics={"auc": 0.9},
            value=0.9,
            train_seconds=0.0,
            duration_s=0.0,
        )
        print(cid, flush=True)
    print(f"done {os.getpid()}", flush=True)


if __name__ == "__main__":
    main()
