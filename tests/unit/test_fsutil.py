"""Choosing a free name beside existing files (rejected job files, queue files set aside)."""

from __future__ import annotations

import os
from itertools import islice
from pathlib import Path

from sentinel_daemon.fsutil import free_name, numbered_names


def test_numbered_names_keep_the_suffix_last_unless_told_not_to() -> None:
    assert list(islice(numbered_names("job.yaml"), 3)) == ["job.yaml", "job.1.yaml", "job.2.yaml"]
    assert list(islice(numbered_names("x.json", keep_suffix=False), 3)) == [
        "x.json",
        "x.json.1",
        "x.json.2",
    ]


def test_a_free_name_is_the_name_itself_when_nothing_is_there(tmp_path: Path) -> None:
    assert free_name(tmp_path / "job.yaml") == tmp_path / "job.yaml"


def test_a_taken_name_is_numbered_past_every_taken_one(tmp_path: Path) -> None:
    (tmp_path / "job.yaml").write_bytes(b"")
    (tmp_path / "job.1.yaml").write_bytes(b"")
    assert free_name(tmp_path / "job.yaml") == tmp_path / "job.2.yaml"


def test_a_name_whose_companion_is_taken_is_not_free(tmp_path: Path) -> None:
    (tmp_path / "bad.json.reason").write_bytes(b"")  # a reason left without its file
    assert free_name(tmp_path / "bad.json", ".reason") == tmp_path / "bad.1.json"
    assert free_name(tmp_path / "bad.json", ".reason", keep_suffix=False) == (
        tmp_path / "bad.json.1"
    )


def test_a_dangling_symlink_takes_its_name(tmp_path: Path) -> None:
    os.symlink(tmp_path / "nowhere", tmp_path / "job.yaml")  # a rename would replace it
    assert free_name(tmp_path / "job.yaml") == tmp_path / "job.1.yaml"
