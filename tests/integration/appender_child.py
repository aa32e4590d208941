"""A child for the kill test: appends batches forever, printing each acknowledged seq.

Run as ``python appender_child.py STATE_DIR SEED``. Each record's ``trial`` field equals
the seq it must get, so the parent can check order, gaps and duplicates by content.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

from sentinel_daemon.core.events import TrialStarted
from sentinel_daemon.log.store import Store
from sentinel_daemon.logs import configure_logging


def main() -> None:
    state_dir, seed = Path(sys.argv[1]), int(sys.argv[2])
    configure_logging("warning", "json")  # to stderr: stdout carries only the acks
    rng = random.Random(seed)
    store = Store.open(state_dir, segment_bytes=4096, snapshot_every=100)
    out = sys.stdout
    out.write(f"ready {store.state.last_seq}\n")
    out.flush()
    while True:
        size = rng.randint(1, 20)
        first = store.log.last_seq + 1
        events = [
            TrialStarted(job_id="kill", trial=first + i, model="xgboost", params={}, attempt=1)
            for i in range(size)
        ]
        records = store.append(events)
        out.write(f"{records[-1].seq}\n")
        out.flush()


if __name__ == "__main__":
    main()
