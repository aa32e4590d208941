"""Answers read from disk: a saved model's learning curve comes from its ``meta.json``."""

from __future__ import annotations

import hashlib
from pathlib import Path

import orjson

from sentinel_daemon.daemon.results import answer_of, kept_intermediate
from sentinel_daemon.queue.messages import Saved

ARTIFACT = "jobs/j/trials/0/1-w0/model.ubj"


def saved_model(state_dir: Path, meta: dict[str, object] | None) -> str:
    """A model file (and its meta.json, unless None); its sha256."""
    path = state_dir / ARTIFACT
    path.parent.mkdir(parents=True)
    path.write_bytes(b"a model")
    if meta is not None:
        path.with_name("meta.json").write_bytes(orjson.dumps(meta))
    return hashlib.sha256(b"a model").hexdigest()


def saved(sha256: str, intermediate: tuple[tuple[int, float], ...] = ()) -> Saved:
    return Saved(
        worker_id="dask-0",
        msg_seq=1,
        command_id="j.0.1",
        artifact=ARTIFACT,
        sha256=sha256,
        metrics={"roc_auc": 0.8},
        value=0.8,
        train_seconds=1.0,
        duration_s=1.0,
        intermediate=intermediate,
    )


def test_a_saved_answer_without_reports_gets_those_its_meta_kept(tmp_path: Path) -> None:
    sha = saved_model(tmp_path, {"intermediate": [[0, 0.61], [5, 0.79]]})
    assert kept_intermediate(tmp_path, ARTIFACT) == ((0, 0.61), (5, 0.79))
    answer = answer_of(tmp_path, saved(sha))
    assert answer.problem is None
    assert isinstance(answer.message, Saved)
    assert answer.message.intermediate == ((0, 0.61), (5, 0.79))
    # Reports the answer carries itself are its own.
    own = answer_of(tmp_path, saved(sha, ((9, 0.5),))).message
    assert isinstance(own, Saved) and own.intermediate == ((9, 0.5),)


def test_a_model_whose_meta_kept_no_readable_reports_has_none(tmp_path: Path) -> None:
    assert kept_intermediate(tmp_path, ARTIFACT) == ()  # no meta.json at all
    sha = saved_model(tmp_path, {"intermediate": "not pairs"})
    assert kept_intermediate(tmp_path, ARTIFACT) == ()
    message = answer_of(tmp_path, saved(sha)).message
    assert isinstance(message, Saved) and message.intermediate == ()
    (tmp_path / ARTIFACT).with_name("meta.json").write_bytes(b"{torn")
    assert kept_intermediate(tmp_path, ARTIFACT) == ()
