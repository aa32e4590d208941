"""What each fault test found, as rows of the table ``make test-faults`` prints.

A fault test calls :func:`record` once per kind of fault it injected::

    from tests.faults.record import record

    record("worker: SIGSEGV", "SIGSEGV sent to the worker mid-trial", cases=3, recovered=3)

``cases`` is how many faults were injected, ``recovered`` how many the daemon came back
from with every invariant holding, ``refused`` how many it refused with a clear error
(a damaged log it will not start on, a job file it rejects), ``violations`` how many broke
an invariant (anything above 0 is a bug). Rows with the same fault class and injection are
added up. ``note`` is free text for the table's footnotes (a seed, a breakdown).

Rows are JSON lines appended to the file named by :data:`RESULTS_ENV` (the conftest sets it
for each session and prints the table from it at the end); the test that recorded a row
and how long it ran are filled in by the conftest. Record before asserting, so that a
failing case still shows up with its violations.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

#: The JSON-lines file rows are appended to.
RESULTS_ENV = "SENTINEL_FAULTS_RESULTS"
#: Where rows go when no session set :data:`RESULTS_ENV` (a test run on its own).
DEFAULT_RESULTS = Path(__file__).with_name(".results.jsonl")
#: ``full`` (``make test-faults``) or ``short`` (the default, what ``make test`` runs).
SCALE_ENV = "SENTINEL_FAULTS_SCALE"
SCALES = ("short", "full")


def scale() -> str:
    """The size of this run: ``short`` unless :data:`SCALE_ENV` says ``full``."""
    value = os.environ.get(SCALE_ENV, "short").strip().lower() or "short"
    if value not in SCALES:
        raise ValueError(f"{SCALE_ENV}={value!r}: use one of {SCALES}")
    return value


def full() -> bool:
    """Whether this is the long run (``make test-faults``)."""
    return scale() == "full"


def results_path() -> Path:
    return Path(os.environ.get(RESULTS_ENV) or DEFAULT_RESULTS)


def record(
    fault_class: str,
    injected: str,
    cases: int,
    recovered: int,
    refused: int = 0,
    violations: int = 0,
    *,
    note: str = "",
) -> None:
    """Add one row to the fault table (see the module doc)."""
    for name, value in (("cases", cases), ("recovered", recovered), ("refused", refused),
                        ("violations", violations)):  # fmt: skip
        if not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a count (an int >= 0), not {value!r}")
    row = {
        "fault_class": fault_class,
        "injected": injected,
        "cases": cases,
        "recovered": recovered,
        "refused": refused,
        "violations": violations,
        "note": note,
        "scale": scale(),
        # "tests/faults/test_x.py::test_y (call)" while a test runs.
        "test": os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" ", 1)[0],
        "at": time.time(),
    }
    path = results_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    # One write of one line with O_APPEND: rows from parallel processes do not interleave.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, orjson.dumps(row) + b"\n")
    finally:
        os.close(fd)


def read(path: Path | None = None) -> list[dict[str, Any]]:
    """Every row recorded in ``path`` (default :func:`results_path`); bad lines skipped."""
    try:
        data = (path or results_path()).read_bytes()
    except FileNotFoundError:
        return []
    rows = []
    for line in data.splitlines():
        try:
            row = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(row, dict) and "fault_class" in row:
            rows.append(row)
    return rows


def table(rows: Iterable[dict[str, Any]], seconds: dict[str, float] | None = None) -> list[str]:
    """The rows added up per (fault class, injection), as Markdown table lines and notes."""
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:
        key = (str(row["fault_class"]), str(row["injected"]))
        into = merged.setdefault(
            key,
            {"cases": 0, "recovered": 0, "refused": 0, "violations": 0, "notes": [], "tests": []},
        )
        for k in ("cases", "recovered", "refused", "violations"):
            into[k] += int(row.get(k, 0))
        if row.get("note"):
            into["notes"].append(str(row["note"]))
        if row.get("test") and row["test"] not in into["tests"]:
            into["tests"].append(row["test"])
    head = ["fault class", "how injected", "cases", "recovered", "refused", "violations"]
    head += ["time (s)", "outcome"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    notes: list[str] = []
    total = dict.fromkeys(("cases", "recovered", "refused", "violations"), 0)
    for (fault_class, injected), r in merged.items():
        for k in total:
            total[k] += r[k]
        spent = sum((seconds or {}).get(t, 0.0) for t in r["tests"])
        lines.append(
            f"| {fault_class} | {injected} | {r['cases']} | {r['recovered']} | {r['refused']} "
            f"| {r['violations']} | {spent:.0f} | {_outcome(r)} |"
        )
        notes += [f"- {fault_class}: {n}" for n in r["notes"]]
    lines.append(
        f"| **total** | | {total['cases']} | {total['recovered']} | {total['refused']} "
        f"| {total['violations']} | | {_outcome(total)} |"
    )
    return lines + (["", *notes] if notes else [])


def _outcome(r: dict[str, Any]) -> str:
    if r["violations"]:
        return f"**{r['violations']} VIOLATIONS**"
    unaccounted = r["cases"] - r["recovered"] - r["refused"]
    parts = []
    if r["recovered"]:
        parts.append(f"{r['recovered']} recovered")
    if r["refused"]:
        parts.append(f"{r['refused']} refused with a clear error")
    if unaccounted > 0:
        parts.append(f"**{unaccounted} unaccounted for**")
    return ", ".join(parts) or "nothing ran"
