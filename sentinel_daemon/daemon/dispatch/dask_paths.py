"""The daemon's side of the shared-storage check of the ``dask`` backend.

Before the first trial of a job is submitted, every Dask worker is asked (``Client.run``
of :func:`~sentinel_daemon.daemon.dispatch.dask_task.check_paths`) to read back the
state directory's ``dispatch-id`` (:data:`MARKER_FILE`, written once by the daemon), read
the job's data files and write into its cache and model folders. :class:`PathChecks` asks
once per job, on the link's helper thread, asks again later while no worker answered, and
says which jobs no worker can serve, naming the worker and the path.
"""

from __future__ import annotations

import concurrent.futures
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from sentinel_daemon.daemon.dispatch.dask_task import check_paths
from sentinel_daemon.fsutil import atomic_write_bytes
from sentinel_daemon.queue.messages import TrialCommand

if TYPE_CHECKING:
    import distributed

    from sentinel_daemon.daemon.dispatch.dask_cluster import ClusterLink

log = structlog.get_logger(__name__)

#: A file in the state directory that Dask workers must read back (shared storage check).
MARKER_FILE = "dispatch-id"


class PathChecks:
    """Which jobs every Dask worker can serve (see the module doc).

    ``state_dir`` is the daemon's state directory, ``worker_state_dir`` the same folder as
    the workers mount it; a job whose check found no worker is asked again after
    ``retry_s``.
    """

    def __init__(
        self, state_dir: Path, worker_state_dir: str, link: ClusterLink, retry_s: float
    ) -> None:
        self.state_dir = state_dir
        self.worker_state_dir = worker_state_dir
        self.link = link
        self.retry_s = retry_s
        self._checked: set[str] = set()  # job ids whose paths every worker can reach
        self._checks: dict[str, concurrent.futures.Future[dict[str, list[str]]]] = {}
        self._after: dict[str, float] = {}  # job id -> when to ask again

    def passed(self, job_id: str) -> bool:
        """Whether every worker asked could serve ``job_id``."""
        return job_id in self._checked

    def ask(self, client: distributed.Client, command: TrialCommand, now: float) -> None:
        """Have every worker check ``command``'s job, unless that is under way or not due."""
        job_id = command.job_id
        if job_id in self._checked or job_id in self._checks or now < self._after.get(job_id, 0):
            return
        self._checks[job_id] = self.link.background(self._check_job, client, command)

    def failed(self, now: float) -> list[tuple[str, str]]:
        """``(job id, reason)`` of each job whose finished check found a worker that
        cannot reach its files; a job no worker answered for is asked again later."""
        out: list[tuple[str, str]] = []
        for job_id, check in list(self._checks.items()):
            if not check.done():
                continue
            del self._checks[job_id]
            try:
                answers = check.result()
            except Exception as exc:  # the connection went, a worker left meanwhile...
                log.warning("dispatch.check_failed", job=job_id, error=str(exc)[:500])
                answers = {}
            if not answers:  # no worker to ask (yet): ask again a little later
                self._after[job_id] = now + self.retry_s
                continue
            problems = [f"{w}: {p}" for w, ps in sorted(answers.items()) for p in ps]
            if not problems:
                self._checked.add(job_id)
                log.info("dispatch.paths_checked", job=job_id, workers=len(answers))
                continue
            reason = (
                "Dask workers cannot reach the job's files (shared storage must be mounted "
                "at the same path on every worker host, see docs/dask.md): "
                + "; ".join(problems[:5])
            )
            log.error("dispatch.paths_unreachable", job=job_id, problems=problems[:20])
            out.append((job_id, reason[:2000]))
        return out

    def _check_job(self, client: distributed.Client, command: TrialCommand) -> dict[str, list[str]]:
        """On the helper thread: ask every worker whether it can serve ``command``'s job."""
        root = Path(self.worker_state_dir)
        data = command.data
        reads = [str(root / data.transactions)]
        if data.identity is not None:
            reads.append(str(root / data.identity))
        writes = [str(root / data.cache_dir), str(root / command.artifact_dir)]
        marker = str(root / MARKER_FILE)
        answers: dict[str, list[str]] = client.run(
            check_paths, marker, self._marker_text(), reads, writes
        )
        return answers

    def _marker_text(self) -> str:
        """The state directory's identity, written once; workers must read it back."""
        path = self.state_dir / MARKER_FILE
        try:
            return path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            text = uuid.uuid4().hex
            atomic_write_bytes(path, text.encode())
            return text


__all__ = ["MARKER_FILE", "PathChecks"]
