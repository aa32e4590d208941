"""Every name under the state directory, in one place.

The state directory (``STATE``: ``./sentinel-state`` by default, ``/var/lib/sentinel`` under
systemd) belongs to the daemon, except ``inbox/`` and ``control/``, where operators drop
files. Each layer takes the names it needs from here, so that no layer imports another
for a constant. What a part keeps inside its own folder (the queue's ``pending/``,
``results/``...) is described by that part (:mod:`sentinel_daemon.queue.maildir`).

::

    STATE/
      daemon.lock            LOCK_NAME: flock of the one writer; holds its pid
      events/                EVENTS_DIR: the log's segments, named by their first seq
        damaged/             DAMAGED_DIR: copies of segments taken before a tail was cut
      snapshot.json          SNAPSHOT_NAME
      health.json            HEALTH_FILE: ok, or why the daemon is degraded
      inbox/                 INBOX_DIR: job files dropped by operators
      claimed/               CLAIMED_DIR: taken out of the inbox, not yet recorded
      rejected/              REJECTED_DIR: refused job files, each with NAME.reason
      control/               CONTROL_DIR: requests to the daemon (cancel.<job>)
      jobs/<job>/            JOBS_DIR: job.yaml, stages/, trials/<n>/, best/, report/
      queue/                 QUEUE_DIR: the maildir between daemon and workers
        pending/, pending-gpu/, pending-cpu/   QUEUE_LANES: commands not yet claimed
      cache/                 CACHE_DIR: Parquet feature caches keyed by content hash
      data/                  DATA_DIR: the default data root (with the daemon's cwd)
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path, PurePosixPath

from sentinel_daemon.printable import has_control, printable

LOCK_NAME = "daemon.lock"
EVENTS_DIR = "events"
#: Inside ``events/``.
DAMAGED_DIR = "damaged"
SNAPSHOT_NAME = "snapshot.json"
HEALTH_FILE = "health.json"
INBOX_DIR = "inbox"
CLAIMED_DIR = "claimed"
REJECTED_DIR = "rejected"
#: Beside a rejected file: ``NAME.reason``.
REASON_SUFFIX = ".reason"
CONTROL_DIR = "control"
#: ``control/cancel.<job_id>`` asks the daemon to cancel a job.
CANCEL_PREFIX = "cancel."
JOBS_DIR = "jobs"
QUEUE_DIR = "queue"
CACHE_DIR = "cache"
DATA_DIR = "data"

# Inside jobs/<job_id>/:
#: The stage child processes' request and result files.
STAGES_DIR = "stages"
#: ``trials/<n>/<attempt>-<worker>/``: one folder per attempt and worker.
TRIALS_DIR = "trials"
BEST_DIR = "best"
MODEL_CARD = "model-card.json"
REPORT_DIR = "report"
REPORT_INDEX = "index.html"

#: The file names the inbox takes; names beginning with a dot are ignored (``.x.tmp``).
JOB_SUFFIXES = (".yaml", ".yml", ".json")

# Inside queue/ (the rest of its folders: sentinel_daemon/queue/maildir.py):
#: The pending folders: ``pending/`` (every worker serves it; commands of no kind, and all
#: of them while the daemon runs workers of one kind only), and one lane per kind of
#: worker (sentinel_daemon/queue/routing.py): ``pending-gpu/``, ``pending-cpu/``.
QUEUE_LANES: dict[str | None, str] = {None: "pending", "gpu": "pending-gpu", "cpu": "pending-cpu"}


def is_job_name(name: str) -> bool:
    """Whether the inbox takes a file of this name (a job suffix, no leading dot)."""
    return not name.startswith(".") and name.lower().endswith(JOB_SUFFIXES)


#: The longest inbox file name taken, in bytes. What the daemon adds to a name it keeps
#: (``.N`` when taken, ``.reason``, a temporary ``.NAME.reason.PID.tmp``) must stay within
#: the file systems' NAME_MAX of 255 bytes.
MAX_JOB_NAME_BYTES = 200
#: A rejected file with a name it could not keep: escaped text kept at most, in bytes.
_SAFE_STEM_BYTES = 100


def inbox_name_problem(name: str) -> str | None:
    """Why the inbox refuses a job file of this name, or None when it takes it.

    ``name`` is as ``os.fsdecode`` gives it (bytes that are not UTF-8 as lone surrogates).
    Refused: a name that is not UTF-8, one longer than :data:`MAX_JOB_NAME_BYTES`, one
    holding a control character (an escape sequence, a newline...).
    """
    raw = os.fsencode(name)
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return "is not UTF-8"
    if len(raw) > MAX_JOB_NAME_BYTES:
        return f"is {len(raw)} bytes long, more than {MAX_JOB_NAME_BYTES}"
    if has_control(name):
        return "holds control characters"
    return None


def safe_name(name: str) -> str:
    """A name to keep a refused file under: ``name`` itself when the inbox takes such a name,
    else its escaped text (at most 100 bytes), a hash of its bytes and its suffix.

    Always within :data:`MAX_JOB_NAME_BYTES`, UTF-8 and free of control characters, and
    two different names never give the same safe name.
    """
    if inbox_name_problem(name) is None:
        return name
    raw = os.fsencode(name)
    digest = hashlib.sha256(raw).hexdigest()[:16]
    suffix = next((s for s in JOB_SUFFIXES if name.lower().endswith(s)), "")
    stem = printable(name[: len(name) - len(suffix)]).replace("/", "_")
    stem = stem.encode("utf-8")[:_SAFE_STEM_BYTES].decode("utf-8", "ignore").lstrip(".")
    return f"{stem}~{digest}{suffix}"


def job_dir(state_dir: Path, job_id: str) -> Path:
    """``STATE/jobs/<job_id>``."""
    return Path(state_dir) / JOBS_DIR / job_id


def trial_dir(job_id: str, trial: int) -> str:
    """A trial's artifact folder, relative to STATE (what trial commands carry)."""
    return str(PurePosixPath(JOBS_DIR, job_id, TRIALS_DIR, str(trial)))


def best_artifact(job_id: str, file_name: str) -> str:
    """The promoted model's path relative to STATE (``jobs/<job>/best/<file>``)."""
    return str(PurePosixPath(JOBS_DIR, job_id, BEST_DIR, file_name))


def report_index(state_dir: Path, job_id: str) -> Path:
    """``STATE/jobs/<job_id>/report/index.html``."""
    return job_dir(state_dir, job_id) / REPORT_DIR / REPORT_INDEX


def cancel_request(state_dir: Path, job_id: str) -> Path:
    """``STATE/control/cancel.<job_id>``."""
    return Path(state_dir) / CONTROL_DIR / f"{CANCEL_PREFIX}{job_id}"
