"""JSON Schema for every event type, as a whole log line, generated from the event models.

``events/schema/<type>.json`` is generated, never edited: each file is the pydantic schema
of one event model plus the record envelope (``seq``, ``ts``, ``crc``), so it describes a
line of ``STATE/events/*.jsonl`` exactly as ``jq`` sees it. Run::

    python -m sentinel_daemon.tools.eventschema          # rewrite events/schema/ from the code
    python -m sentinel_daemon.tools.eventschema --check  # exit 1 and list the files that differ

``tests/compat/test_schema_drift.py`` runs the check, so a model change that forgets the
schema fails the suite.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sentinel_daemon.core.events import EVENT_TYPES

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
DEFAULT_DIR = Path(__file__).resolve().parents[2] / "events" / "schema"

#: RFC 3339 in UTC as :func:`sentinel_daemon.log.records.format_ts` writes it.
TS_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?Z$"
CRC_PATTERN = r"^[0-9a-f]{8}$"

ENVELOPE: dict[str, dict[str, Any]] = {
    "seq": {
        "description": "Position in the log: 1 for the first record, +1 a record, no gaps "
        "across segments.",
        "minimum": 1,
        "title": "Seq",
        "type": "integer",
    },
    "ts": {
        "description": "When the record was appended (RFC 3339, UTC); records of one batch "
        "share it.",
        "format": "date-time",
        "pattern": TS_PATTERN,
        "title": "Ts",
        "type": "string",
    },
    "crc": {
        "description": "CRC-32, 8 lower-case hex digits, of the line's bytes up to (not "
        "including) the ',\"crc\":' before it.",
        "pattern": CRC_PATTERN,
        "title": "Crc",
        "type": "string",
    },
}


def generate() -> dict[str, dict[str, Any]]:
    """One JSON Schema per event type, keyed by type, describing a whole log line."""
    out: dict[str, dict[str, Any]] = {}
    for name, cls in sorted(EVENT_TYPES.items()):
        schema = cls.model_json_schema()
        props: dict[str, Any] = schema.setdefault("properties", {})
        clash = set(ENVELOPE) & set(props)
        if clash:
            raise ValueError(f"event {name!r}: fields {sorted(clash)} clash with the envelope")
        props.update(ENVELOPE)
        # A record always carries its type and version (readers dispatch and upcast on
        # them), even though the models give them defaults.
        required = list(schema.get("required", []))
        schema["required"] = ["seq", "ts", "type", "v", *required, "crc"]
        schema["$schema"] = SCHEMA_DIALECT
        out[name] = schema
    return out


def render(schema: dict[str, Any]) -> str:
    """The stable text of one schema file: sorted keys, 2-space indent, trailing newline."""
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def expected_files() -> dict[str, str]:
    """File name -> text, for every schema the code defines."""
    return {f"{name}.json": render(schema) for name, schema in generate().items()}


def differences(schema_dir: Path) -> tuple[list[str], list[str]]:
    """``(outdated, orphaned)``: files missing or differing from the code, and files of no type."""
    want = expected_files()
    outdated = []
    for name, text in want.items():
        path = schema_dir / name
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            outdated.append(name)
    present = {p.name for p in schema_dir.glob("*.json")} if schema_dir.is_dir() else set()
    orphaned = sorted(present - set(want))
    return outdated, orphaned


def write(schema_dir: Path) -> list[str]:
    """Write every schema whose file is missing or differs; returns the names written."""
    schema_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in expected_files().items():
        path = schema_dir / name
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            written.append(name)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sentinel_daemon.tools.eventschema",
        description="Generate (or with --check, verify) events/schema/<type>.json from the code.",
    )
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 on drift")
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="the schema folder")
    args = parser.parse_args(argv)
    schema_dir: Path = args.dir
    outdated, orphaned = differences(schema_dir)
    if args.check:
        for name in outdated:
            print(f"{schema_dir / name}: missing or differs from the code", file=sys.stderr)
        if outdated:
            print("run: python -m sentinel_daemon.tools.eventschema", file=sys.stderr)
    else:
        for name in write(schema_dir):
            print(f"wrote {schema_dir / name}")
        outdated = []
    for name in orphaned:
        # Not deleted: types are append-only, and old logs may still hold this one.
        print(
            f"{schema_dir / name}: no event type {name[:-5]!r} in events.py; types are "
            "append-only, so restore it (delete the file only if the type never shipped)",
            file=sys.stderr,
        )
    return 1 if outdated or orphaned else 0


if __name__ == "__main__":
    raise SystemExit(main())
