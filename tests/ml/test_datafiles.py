"""Data files are checked when they are opened, not only when the job was accepted.

A FIFO or a device in the place of a data file is refused without blocking; a link swapped
in after acceptance that leads out of the data roots is refused, also when the swap falls
between the check and the open; what is opened is what is hashed and read. Real files,
FIFOs and links; the races are made to happen by swapping the file from inside ``os.stat``.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from sentinel_daemon import ml
from sentinel_daemon.ml import cache
from sentinel_daemon.ml.datafile import open_data
from sentinel_daemon.ml.errors import DataError
from sentinel_daemon.ml.loading import load
from sentinel_daemon.queue.messages import TrialData

from .helpers import minimal_transactions


@pytest.fixture
def roots(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(a data root, a CSV file inside it, a CSV file outside every root)."""
    root = tmp_path / "root"
    root.mkdir()
    inside = root / "tx.csv"
    minimal_transactions().to_csv(inside, index=False)
    outside = tmp_path / "secret" / "other.csv"
    outside.parent.mkdir()
    minimal_transactions(60).to_csv(outside, index=False)
    return root, inside, outside


def prepare(path: Path, root: Path, cache_dir: Path) -> ml.Prepared:
    return ml.prepare(
        path, None, cache_dir, test_fraction=0.2, valid_fraction=0.2, data_roots=[root]
    )


def test_a_fifo_in_place_of_a_data_file_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "tx.csv"
    os.mkfifo(fifo)
    # In a child with a deadline: the old code waited in open() for a writer, forever.
    code = (
        "import sys; from pathlib import Path; from sentinel_daemon import ml\n"
        "try:\n"
        "    ml.prepare(Path(sys.argv[1]), None, Path(sys.argv[2]), test_fraction=0.2,"
        " valid_fraction=0.2)\n"
        "except ml.DataError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(fifo), str(tmp_path / "cache")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert f"{fifo}: is a FIFO (a pipe), not a data file" in done.stdout


def test_a_device_in_place_of_a_data_file_is_refused_unopened(tmp_path: Path) -> None:
    link = tmp_path / "tx.csv"
    link.symlink_to("/dev/zero")  # opened, it would read zeros for ever
    with pytest.raises(DataError, match="is a device"):
        load(link)


@contextmanager
def swap_after_stat(path: Path, swap: Callable[[], None]) -> Iterator[None]:
    """The file at ``path`` is swapped just after its first ``os.stat``, as by a racing user."""
    real_stat = os.stat
    swapped: list[bool] = []

    def stat_then_swap(p: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        result = real_stat(p, *args, **kwargs)
        if os.fspath(p) == os.fspath(path) and not swapped:
            swapped.append(True)
            swap()
        return result

    with mock.patch("os.stat", stat_then_swap):
        yield
    assert swapped, "the swap never happened"


def test_a_fifo_swapped_in_between_the_check_and_the_open_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "tx.csv"
    minimal_transactions().to_csv(path, index=False)

    def to_fifo() -> None:
        path.unlink()
        os.mkfifo(path)

    with swap_after_stat(path, to_fifo), pytest.raises(DataError, match="FIFO"):
        load(path)


def test_a_link_out_of_the_data_roots_swapped_in_after_acceptance_is_refused(
    tmp_path: Path, roots: tuple[Path, Path, Path]
) -> None:
    root, inside, outside = roots
    prepare(inside, root, tmp_path / "cache")  # accepted and read while it was in place
    inside.unlink()
    inside.symlink_to(outside)

    with pytest.raises(DataError) as caught:
        prepare(inside, root, tmp_path / "cache")
    assert caught.value.path == inside
    assert f"resolves to {outside}, outside the data roots" in caught.value.reason


def test_a_link_swapped_in_between_the_check_and_the_open_is_refused(
    tmp_path: Path, roots: tuple[Path, Path, Path]
) -> None:
    root, inside, outside = roots

    def to_link() -> None:
        inside.unlink()
        inside.symlink_to(outside)

    with swap_after_stat(inside, to_link), pytest.raises(DataError, match="outside the data"):
        prepare(inside, root, tmp_path / "cache")


def test_links_that_stay_inside_the_roots_are_followed(
    tmp_path: Path, roots: tuple[Path, Path, Path]
) -> None:
    root, inside, _outside = roots
    link = root / "alias.csv"
    link.symlink_to(inside)

    prepared = prepare(link, root, tmp_path / "cache")

    assert len(prepared.y) == 40


def test_no_data_root_refuses_every_file(roots: tuple[Path, Path, Path]) -> None:
    _root, inside, _outside = roots
    with pytest.raises(DataError, match="none configured"):
        open_data(inside, [])


def test_the_hash_and_the_rows_come_from_the_same_open_file(
    tmp_path: Path, roots: tuple[Path, Path, Path]
) -> None:
    _root, inside, outside = roots
    opened_bytes = inside.read_bytes()
    with open_data(inside) as data:
        inside.unlink()
        inside.symlink_to(outside)  # the path now leads elsewhere; the open file does not
        digest = cache.file_sha256(data)
        frame = load(data).frame
    assert digest == hashlib.sha256(opened_bytes).hexdigest()
    assert len(frame) == 40  # the 40 rows opened, not the 60 of the file linked in after


def test_a_trial_command_written_before_data_roots_existed_still_loads() -> None:
    old = {
        "transactions": "/srv/data/tx.csv",
        "identity": None,
        "cache_dir": "cache",
        "test_fraction": 0.2,
        "valid_fraction": 0.2,
    }
    data = TrialData.model_validate(old)
    assert data.data_roots is None
    new = TrialData.model_validate_json(data.model_copy(update={"data_roots": (Path("/srv"),)})
                                        .model_dump_json())  # fmt: skip
    assert new.data_roots == (Path("/srv"),)
