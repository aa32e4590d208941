"""The committed JSON Schemas (``events/schema/``) match the event models, and describe the logs.

The schemas are generated: when one of these tests fails, run
``python -m sentinel_daemon.tools.eventschema`` and commit the result with the model change.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
import pytest

from sentinel_daemon.core.events import CURRENT_VERSION, EVENT_TYPES, decode, encode
from sentinel_daemon.log.records import ENVELOPE_KEYS
from sentinel_daemon.tools.eventschema import DEFAULT_DIR, differences, main, write

REPO = Path(__file__).resolve().parents[2]
SCHEMA_DIR = REPO / "events" / "schema"
GOLDEN = REPO / "events" / "golden"
REGENERATE = "run `python -m sentinel_daemon.tools.eventschema` and commit events/schema/"


def golden_segments() -> list[Path]:
    return sorted(GOLDEN.glob("*/events/*.jsonl"))


def test_the_generator_writes_into_the_repository_schema_folder() -> None:
    assert DEFAULT_DIR == SCHEMA_DIR


def test_every_event_type_has_a_schema_file_matching_the_code() -> None:
    outdated, _ = differences(SCHEMA_DIR)
    assert not outdated, f"schema files missing or out of date: {outdated}; {REGENERATE}"


def test_every_schema_file_names_an_event_type() -> None:
    _, orphaned = differences(SCHEMA_DIR)
    assert not orphaned, (
        f"schema files of no event type: {orphaned}. Types are append-only (old logs hold "
        f"them): restore the type in events.py, or delete the file if it never shipped; "
        f"then {REGENERATE}"
    )


def test_check_mode_exits_nonzero_and_names_the_drifted_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(tmp_path)
    assert main(["--check", "--dir", str(tmp_path)]) == 0
    (tmp_path / "trial.saved.json").write_text("{}\n")
    (tmp_path / "trial.renamed.json").write_text("{}\n")
    assert main(["--check", "--dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "trial.saved.json" in err and "trial.renamed.json" in err
    assert "python -m sentinel_daemon.tools.eventschema" in err
    assert (tmp_path / "trial.saved.json").read_text() == "{}\n", "--check must write nothing"


def test_generating_rewrites_a_drifted_file_but_keeps_an_orphan(tmp_path: Path) -> None:
    write(tmp_path)
    (tmp_path / "trial.saved.json").write_text("{}\n")
    (tmp_path / "trial.renamed.json").write_text("{}\n")
    assert main(["--dir", str(tmp_path)]) == 1  # the orphan still needs a decision
    assert differences(tmp_path) == ([], ["trial.renamed.json"])


def test_each_schema_requires_the_record_envelope() -> None:
    for name in EVENT_TYPES:
        schema = orjson.loads((SCHEMA_DIR / f"{name}.json").read_bytes())
        assert {"seq", "ts", "type", "v", "crc"} <= set(schema["required"]), name
        assert schema["properties"]["type"]["const"] == name
        assert schema["properties"]["v"]["const"] == CURRENT_VERSION[name]


@pytest.mark.parametrize("segment", golden_segments(), ids=lambda p: str(p.relative_to(GOLDEN)))
def test_every_golden_record_matches_its_schema_and_model(segment: Path) -> None:
    # jsonschema is not a dependency of this project; `conforms` below checks every keyword
    # the generated schemas use (and refuses any other), and pydantic checks the payload.
    for line_no, line in enumerate(segment.read_bytes().splitlines(), 1):
        record = orjson.loads(line)
        name = record["type"]
        payload = {k: v for k, v in record.items() if k not in ENVELOPE_KEYS}
        where = f"{segment.relative_to(REPO)} line {line_no} ({name})"
        event = decode(payload)  # upcasts an older version first
        if record["v"] == CURRENT_VERSION[name]:
            schema = orjson.loads((SCHEMA_DIR / f"{name}.json").read_bytes())
            problems = conforms(record, schema, schema)
            assert not problems, f"{where} does not match events/schema/{name}.json: {problems}"
            assert encode(event) == payload, f"{where} does not survive decode/encode unchanged"


# ---- a validator for the JSON Schema keywords pydantic emits ----------------------------

_TYPES: dict[str, Any] = {
    "object": lambda x: isinstance(x, dict),
    "array": lambda x: isinstance(x, list),
    "string": lambda x: isinstance(x, str),
    "integer": lambda x: isinstance(x, int) and not isinstance(x, bool),
    "number": lambda x: isinstance(x, int | float) and not isinstance(x, bool),
    "boolean": lambda x: isinstance(x, bool),
    "null": lambda x: x is None,
}
_ANNOTATIONS = {"$schema", "$defs", "title", "description", "default", "format"}


def conforms(value: Any, schema: dict[str, Any], root: dict[str, Any], at: str = "$") -> list[str]:
    """The ways ``value`` breaks ``schema`` (empty when it conforms)."""
    out: list[str] = []
    for key, rule in schema.items():
        if key in _ANNOTATIONS or key in ("properties", "additionalProperties"):
            continue
        if key == "$ref":
            target: Any = root
            for part in rule.removeprefix("#/").split("/"):
                target = target[part]
            out += conforms(value, target, root, at)
        elif key == "type":
            if not _TYPES[rule](value):
                out.append(f"{at}: {value!r} is not {rule}")
        elif key == "const":
            if value != rule or type(value) is not type(rule):
                out.append(f"{at}: {value!r} is not {rule!r}")
        elif key == "enum":
            if value not in rule:
                out.append(f"{at}: {value!r} not in {rule}")
        elif key == "anyOf":
            if all(conforms(value, option, root, at) for option in rule):
                out.append(f"{at}: {value!r} matches none of {rule}")
        elif key == "minimum":
            if _TYPES["number"](value) and value < rule:
                out.append(f"{at}: {value!r} < {rule}")
        elif key == "pattern":
            if isinstance(value, str) and re.search(rule, value) is None:
                out.append(f"{at}: {value!r} does not match {rule}")
        elif key == "required":
            if isinstance(value, dict):
                out += [f"{at}: lacks {k!r}" for k in rule if k not in value]
        else:
            raise AssertionError(f"the test validator does not know the keyword {key!r}")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for k, v in value.items():
            if k in props:
                out += conforms(v, props[k], root, f"{at}.{k}")
            elif extra is False:
                out.append(f"{at}: unexpected field {k!r}")
            elif isinstance(extra, dict):
                out += conforms(v, extra, root, f"{at}.{k}")
    return out


def test_the_test_validator_catches_what_it_should() -> None:
    schema = orjson.loads((SCHEMA_DIR / "trial.started.json").read_bytes())
    good = {
        "seq": 3,
        "ts": "2024-03-01T09:00:00.125000Z",
        "type": "trial.started",
        "v": 1,
        "job_id": "j",
        "trial": 0,
        "model": "xgboost",
        "params": {"max_depth": 3},
        "attempt": 1,
        "crc": "0123abcd",
    }
    assert conforms(good, schema, schema) == []
    for change in (
        {"seq": 0},
        {"ts": "2024-03-01 09:00:00"},
        {"crc": "XYZ"},
        {"model": "catboost"},
        {"attempt": 0},
        {"params": {"a": [1]}},
        {"trial": True},
        {"v": 2},
        {"extra": 1},
    ):
        assert conforms({**good, **change}, schema, schema), change
    assert conforms({k: v for k, v in good.items() if k != "crc"}, schema, schema)


# ---- the operator catalogue (events/README.md) keeps up with the code -------------------

README = REPO / "events" / "README.md"


def catalogue_sections() -> dict[str, str]:
    """``### `type` `` section bodies of the catalogue, by type."""
    parts = re.split(r"^### `([a-z]+\.[a-z]+)`$", README.read_text(encoding="utf-8"), flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_the_catalogue_documents_every_event_type_and_field() -> None:
    sections = catalogue_sections()
    assert sorted(sections) == sorted(EVENT_TYPES), "events/README.md: one section per type"
    for name, cls in EVENT_TYPES.items():
        for field in cls.model_fields:
            if field not in ("type", "v"):
                assert f"| `{field}` |" in sections[name], (
                    f"events/README.md, section {name}: document the field {field!r}"
                )


def test_the_catalogue_examples_are_lines_of_a_golden_log() -> None:
    golden_lines = {line for seg in golden_segments() for line in seg.read_text().splitlines()}
    for name, body in catalogue_sections().items():
        examples = re.findall(r"^```json\n(.*?)\n```$", body, flags=re.M | re.S)
        assert examples, f"events/README.md, section {name}: no example line"
        for example in examples:
            assert example in golden_lines, f"{name}: example is not a golden log line"
            assert orjson.loads(example)["type"] == name
