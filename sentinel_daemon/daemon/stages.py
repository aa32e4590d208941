"""The heavy stages of a job, run outside the daemon's loop, and the export of the winner.

``prepare`` (load, validate, features, cache) and ``validate`` (score the best trial of
each model on the held-out test split) take seconds to minutes and hundreds of MiB, so
the daemon runs each in a child process (``python -m sentinel_daemon.daemon.stages``) and keeps
its own loop, heartbeats and signals responsive. The child reads a request file and
writes a result file, both JSON and written atomically, and exits 0 (done) or 1 (a
handled failure whose reason is in the result). Anything else (a signal, the OOM killer)
is reported by :class:`StageProcess` from the exit status. Both stages are idempotent:
after a crash the daemon simply runs the stage again (prepare then hits the cache).

:func:`export_best` promotes a model: it builds ``jobs/<job>/.best.tmp/`` and renames it
to ``best/`` in one step, so ``best/`` is either absent or complete; the model is copied
only once its bytes pass :func:`~sentinel_daemon.ml.artifacts.read_checked`.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from pydantic import BaseModel, ConfigDict

from sentinel_daemon.fsutil import atomic_write_bytes, free_name, fsync_dir
from sentinel_daemon.layout import BEST_DIR, MODEL_CARD
from sentinel_daemon.ml.artifacts import ChecksumMismatch, read_checked
from sentinel_daemon.queue.messages import TrialData

if TYPE_CHECKING:
    from sentinel_daemon import ml
from sentinel_daemon.logs import configure_logging
from sentinel_daemon.settings import CONFIG_ENV, load_settings
from sentinel_daemon.signals import signal_name

EXIT_DONE = 0
EXIT_FAILED = 1
#: The daemon died: a restarted daemon runs the stage again, so this copy stops.
EXIT_ORPHANED = 3
#: The result could not be written because the state directory's disk is full (or over
#: quota): the exit code is the only report left, and says it (see :data:`_UNREPORTED`).
EXIT_NO_SPACE = 4
#: The result could not be written for another reason (a read-only or failing disk).
EXIT_UNWRITABLE = 5
_UNREPORTED = {
    EXIT_NO_SPACE: f"[Errno {errno.ENOSPC}] {os.strerror(errno.ENOSPC)}",
    EXIT_UNWRITABLE: "an I/O error (read-only or failing disk?)",
}
PARENT_CHECK_S = 1.0


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Candidate(_Request):
    trial: int
    artifact: str  # relative to STATE
    sha256: str


class PrepareRequest(_Request):
    stage: str = "prepare"
    data: TrialData


class ValidateRequest(_Request):
    stage: str = "validate"
    data: TrialData
    #: model -> the best saved trial of that model
    candidates: dict[str, Candidate]
    #: The model last promoted under the same job name, scored on this test split too.
    previous: Candidate | None = None


# ---- the child ------------------------------------------------------------------------


def _prepared(d: TrialData) -> ml.Prepared:
    from sentinel_daemon import ml

    return ml.prepare(
        d.transactions,
        d.identity,
        d.cache_dir,
        test_fraction=d.test_fraction,
        valid_fraction=d.valid_fraction,
        data_roots=d.data_roots,
    )


def run_prepare(request: PrepareRequest) -> dict[str, Any]:
    prepared = _prepared(request.data)
    _, y_train = prepared.rows("train")
    _, y_valid = prepared.rows("valid")
    _, y_test = prepared.rows("test")
    return {
        "rows": len(prepared.y),
        "features": len(prepared.feature_names),
        "data_hash": prepared.data_hash,
        "feature_version": prepared.feature_version,
        "from_cache": prepared.from_cache,
        "split_rows": {"train": len(y_train), "valid": len(y_valid), "test": len(y_test)},
        "fraud_rate": round(float(prepared.y.mean()), 6) if len(prepared.y) else 0.0,
    }


def run_validate(request: ValidateRequest, state_dir: Path) -> dict[str, Any]:
    from sentinel_daemon import ml

    prepared = _prepared(request.data)
    test: dict[str, dict[str, float]] = {}
    for model, cand in request.candidates.items():
        loaded = ml.load_model(state_dir / cand.artifact, cand.sha256)  # refuses a bad checksum
        test[model] = ml.evaluate(loaded, prepared, split="test")
    outputs: dict[str, Any] = {"test": test, "previous": None, "previous_error": None}
    if request.previous is not None:
        try:
            loaded = ml.load_model(state_dir / request.previous.artifact, request.previous.sha256)
            outputs["previous"] = ml.evaluate(loaded, prepared, split="test")
        except (ml.MLError, ValueError) as exc:
            # Another feature set (an older feature version) cannot score these rows.
            outputs["previous_error"] = f"{type(exc).__name__}: {exc}"[:500]
    return outputs


def child_main(argv: Sequence[str] | None = None) -> int:
    """``python -m sentinel_daemon.daemon.stages --state-dir S --request R --result OUT``."""
    parser = argparse.ArgumentParser(prog="sentinel-stage")
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--request", type=Path, required=True)
    parser.add_argument("--result", type=Path, required=True)
    parser.add_argument("--parent-pid", type=int, default=None)
    args = parser.parse_args(argv)
    config = os.environ.get(CONFIG_ENV)  # the daemon's settings come through the environment
    settings = load_settings(Path(config) if config else None)
    configure_logging(settings.logging.level, settings.logging.format)
    if args.parent_pid is not None:
        _exit_with_parent(args.parent_pid)
    from sentinel_daemon.ml.errors import MLError

    raw = orjson.loads(args.request.read_bytes())
    try:
        if raw.get("stage") == "prepare":
            outputs = run_prepare(PrepareRequest.model_validate(raw))
        else:
            outputs = run_validate(ValidateRequest.model_validate(raw), args.state_dir)
    except (MLError, OSError, ValueError) as exc:
        # Bad data (a missing column, an empty file...): the message names file and column.
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:2000]}
        return _report(args.result, result, EXIT_FAILED)
    return _report(args.result, {"ok": True, "outputs": outputs}, EXIT_DONE)


def _report(path: Path, result: dict[str, Any], code: int) -> int:
    """Write the result for the daemon; when that fails (the state directory's disk is
    full), say why in the exit code, the one report that needs no disk."""
    try:
        atomic_write_bytes(path, orjson.dumps(result))
    except OSError as exc:
        print(f"sentinel-stage: cannot write {path}: {exc}", file=sys.stderr)
        return EXIT_NO_SPACE if exc.errno in (errno.ENOSPC, errno.EDQUOT) else EXIT_UNWRITABLE
    return code


def _exit_with_parent(parent_pid: int) -> None:
    """End this process when the daemon that started it dies (it would be rerun anyway)."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_CHECK_S)
        os._exit(EXIT_ORPHANED)

    if os.getppid() != parent_pid:
        os._exit(EXIT_ORPHANED)
    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


# ---- the daemon's side ----------------------------------------------------------------


@dataclass(frozen=True)
class StageOutcome:
    ok: bool
    outputs: dict[str, Any]
    error: str = ""


class StageProcess:
    """One stage child process of one job; :meth:`poll` never blocks."""

    def __init__(self, state_dir: Path, folder: Path, request: _Request, stage: str) -> None:
        self.stage = stage
        folder.mkdir(parents=True, exist_ok=True)
        self.request_path = folder / f"{stage}.request.json"
        self.result_path = folder / f"{stage}.result.json"
        with contextlib.suppress(FileNotFoundError):
            self.result_path.unlink()  # a result of an earlier run must not be read as ours
        atomic_write_bytes(self.request_path, request.model_dump_json().encode())
        argv = [sys.executable, "-m", "sentinel_daemon.daemon.stages"]
        argv += ["--state-dir", str(state_dir)]
        argv += ["--request", str(self.request_path), "--result", str(self.result_path)]
        argv += ["--parent-pid", str(os.getpid())]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def poll(self) -> StageOutcome | None:
        code = self.proc.poll()
        if code is None:
            return None
        try:
            result = orjson.loads(self.result_path.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            result = None
        if code == EXIT_DONE and isinstance(result, dict) and result.get("ok"):
            return StageOutcome(True, dict(result.get("outputs") or {}))
        if isinstance(result, dict) and result.get("error"):
            return StageOutcome(False, {}, str(result["error"]))
        if code in _UNREPORTED:
            return StageOutcome(
                False,
                {},
                f"the {self.stage} process could not write its result: {_UNREPORTED[code]}",
            )
        how = f"exit code {code}" if code >= 0 else f"signal {-code} ({signal_name(-code)})"
        error = f"the {self.stage} process ended with {how}"
        if code == -signal.SIGKILL:
            error += (
                "; unless an operator sent it, that is the kernel's out-of-memory killer "
                "(see `journalctl -k`): free memory on the host, or submit less data"
            )
        return StageOutcome(False, {}, error)

    def kill(self) -> None:
        """Kill the child's process group and reap it."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)


# ---- gate and export ------------------------------------------------------------------


def export_best(
    state_dir: Path, job_dir: Path, artifact: str, sha256: str, card: dict[str, Any]
) -> str:
    """Promote ``artifact`` (relative to STATE) into ``job_dir/best/``; return its path there.

    Idempotent: a complete ``best/`` from an earlier run (a crash after the rename) is kept
    once its model file is checked against ``sha256``.
    """
    src = state_dir / artifact
    best = job_dir / BEST_DIR
    final = best / src.name
    if best.exists():
        with contextlib.suppress(OSError, ChecksumMismatch):
            read_checked(final, sha256)
            return final.relative_to(state_dir).as_posix()
        # A best/ that does not hold this model cannot come from us; keep it for a person.
        os.rename(best, free_name(job_dir / ".best.unexpected", keep_suffix=False))
    tmp = job_dir / ".best.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        data = read_checked(src, sha256)
    except ChecksumMismatch as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ValueError(
            f"{src} does not match its recorded sha256 {sha256}; not promoted"
        ) from exc
    atomic_write_bytes(tmp / src.name, data)
    meta = src.with_name("meta.json")
    if meta.exists():
        atomic_write_bytes(tmp / "meta.json", meta.read_bytes())
    card_bytes = orjson.dumps(card, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"
    atomic_write_bytes(tmp / MODEL_CARD, card_bytes)
    fsync_dir(tmp)
    os.rename(tmp, best)
    fsync_dir(job_dir)
    return final.relative_to(state_dir).as_posix()


if __name__ == "__main__":
    sys.exit(child_main())
