"""What the benchmark scripts share: where to work, progress lines, rates, the table."""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def bench_arguments(
    doc: str | None, argv: list[str] | None, *, keep: bool = False
) -> argparse.Namespace:
    """The options every benchmark script takes: --quick, --dir, and (``keep``) --keep."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0] if doc else None)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    parser.add_argument("--dir", type=Path, help="make the work folder under DIR")
    if keep:
        parser.add_argument("--keep", action="store_true", help="keep the work folder (debugging)")
    return parser.parse_args(argv)


def work_parent(requested: Path | None) -> tuple[Path, bool]:
    """Where to make the work folder, and whether we created that parent ourselves.

    The work must be on the repository's own filesystem (the disk being measured):
    ``/tmp`` when it is the same filesystem, else ``.bench-tmp/`` in the repository.
    """
    if requested is not None:
        requested.mkdir(parents=True, exist_ok=True)
        return requested, False
    tmp = Path(tempfile.gettempdir())
    if tmp.stat().st_dev == REPO.stat().st_dev:
        return tmp, False
    parent = REPO / ".bench-tmp"
    created = not parent.exists()
    parent.mkdir(exist_ok=True)
    return parent, created


@contextlib.contextmanager
def work_root(prefix: str, requested: Path | None, keep: bool = False) -> Iterator[Path]:
    """A fresh work folder under :func:`work_parent`, removed afterwards unless ``keep``."""
    parent, created_parent = work_parent(requested)
    root = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        yield root
    finally:
        if keep:
            progress(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
            if created_parent:
                shutil.rmtree(parent, ignore_errors=True)


def progress(message: str) -> None:
    """Tell the operator what is running (stderr, so the table on stdout stays clean)."""
    print(f"  .. {message}", file=sys.stderr, flush=True)


def filesystem_of(path: Path) -> tuple[str, str]:
    """``(device, fstype)`` of the mount holding ``path``, from /proc/mounts."""
    best = ("?", "?", "")
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return best[:2]
    target = str(path.resolve())
    for line in mounts:
        dev, mnt, fstype, *_ = line.split()
        if (target == mnt or target.startswith(mnt.rstrip("/") + "/")) and len(mnt) > len(best[2]):
            best = (dev, fstype, mnt)
    return best[:2]


def rate(n: float) -> str:
    return f"{n:,.0f}/s"


def print_table(
    header: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool]
) -> None:
    """Print ``rows`` under ``header`` in aligned columns (``right`` marks numeric ones)."""
    cells = [tuple(header), *map(tuple, rows)]
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]

    def fmt(cell: tuple[str, ...]) -> str:
        return "  ".join(
            c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cell, widths, right, strict=True)
        ).rstrip()

    print(fmt(cells[0]))
    print("  ".join("-" * w for w in widths))
    for c in cells[1:]:
        print(fmt(c))


def verdict(passed: bool | None) -> str:
    """A row's result column: PASS, FAIL, or info for a figure that counts towards nothing."""
    if passed is None:
        return "info"
    return "PASS" if passed else "FAIL"


@dataclass
class Report:
    """What a benchmark found: its table's rows (each with ``what`` and ``passed``), notes."""

    rows: list[Any] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def print_notes_and_summary(report: Report, t_start: float) -> None:
    """After the table: the notes, then the targets passed and the wall time."""
    print()
    for note in report.notes:
        print(f"note: {note}")
    counted = [r for r in report.rows if r.passed is not None]
    passed = sum(1 for r in counted if r.passed)
    failed = "; ".join(r.what for r in counted if not r.passed) or "none"
    print()
    print(
        f"summary: {passed}/{len(counted)} targets passed; failed: {failed}; "
        f"wall time {time.perf_counter() - t_start:.1f} s"
    )
