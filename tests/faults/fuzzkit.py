"""The fuzzer's inputs: hostile inbox file names, job files pushed past the job schema, and
mutated data files; each drawn from a seeded generator, so a seed replays a run.

Nothing here starts a process; tests/faults/test_fuzzer.py feeds these to a real daemon.

- :func:`hostile_name` draws a file name as bytes (not UTF-8, control characters, up to
  NAME_MAX, dots, a leading ``-``, shell characters, odd Unicode, random bytes), or one the
  inbox ignores by contract (a dot-name, no job suffix).
- :func:`schema_cases` walks the job schema (:class:`~sentinel_daemon.core.jobspec.JobSpec`
  and its nested models, and :func:`~sentinel_daemon.core.space.default_space` of every
  model) and yields, for every field, values past what it allows: below and above its
  bounds, huge, negative, NaN and infinities, wrong types, empty and reversed ranges.
  Nothing is listed by hand: a field added to the schema is fuzzed without a change here.
- :data:`DATA_MUTATIONS` change a CSV's bytes before a job is submitted (truncated,
  unbalanced quotes, NUL bytes, a huge field, wrong types...); :data:`AFTER_ACCEPTANCE`
  change the file once the job is accepted (a FIFO, a link out of the data roots, removed,
  a folder).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import random
import types
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types
import yaml
from pydantic import BaseModel

from sentinel_daemon.core.jobspec import JobSpec
from sentinel_daemon.core.space import MODELS, default_space
from tests.daemonkit import IDENTITY, TRANSACTIONS, job_doc

SEED_ENV = "SENTINEL_FAULTS_SEED"
#: The fuzzer's seed when SENTINEL_FAULTS_SEED is not set: `make test` replays one run.
DEFAULT_SEED = 20261204
#: The longest file name Linux takes (bytes); longer ones cannot be created at all.
NAME_MAX = 255
SUFFIXES = (b".yaml", b".yml", b".json", b".YAML", b".Json")


def fuzz_seed() -> int:
    """``SENTINEL_FAULTS_SEED``, else :data:`DEFAULT_SEED`."""
    raw = os.environ.get(SEED_ENV)
    return int(raw) if raw else DEFAULT_SEED


class Deck:
    """Draws from ``items`` in a shuffled order, each once before any comes again, so that
    a short run still covers every kind."""

    def __init__(self, rng: random.Random, items: Sequence[Any]) -> None:
        self.rng = rng
        self.items = list(items)
        self.left: list[Any] = []

    def draw(self) -> Any:
        if not self.left:
            self.left = list(self.items)
            self.rng.shuffle(self.left)
        return self.left.pop()


def rng_for(seed: int, name: str) -> random.Random:
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


# ---- inputs ----------------------------------------------------------------------------------

Expect = Literal["reject", "end", "ignored"]


@dataclass
class Input:
    """One hostile input: a file dropped into the inbox as ``name`` holding ``content``.

    ``kind`` is the fault-table row it counts in, ``label`` what exactly was done.
    ``cancel``: the job, if accepted, is cancelled at once (it exists only to carry a
    hostile name or value, not to train). ``data_dir``, ``mutation``, ``after``: a data
    job's folder (relative to the daemon's working folder), what was done to its CSV before
    submission, and what is done once it is accepted.
    """

    n: int
    kind: str
    label: str
    name: bytes
    content: bytes
    expect: Expect = "end"
    cancel: bool = False
    data_dir: str | None = None
    mutation: str | None = None
    after: str | None = None
    #: When ``after`` acts: at "job.submitted", or when the "prepare" / "search" stage starts.
    after_at: str = "job.submitted"
    #: Filled in by the run.
    outcome: str = ""
    detail: str = ""
    job_id: str | None = None
    dropped: bool = False
    done_after: bool = False
    problems: list[str] = field(default_factory=list)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()


def unique_tail(n: int, suffix: bytes) -> bytes:
    """Bytes that make a file's content unique without changing what it means: a YAML
    comment, or trailing JSON whitespace spelling ``n`` in binary (space 0, tab 1)."""
    if suffix.lower() == b".json":
        return b"\n" + bin(n)[2:].replace("0", " ").replace("1", "\t").encode() + b"\n"
    return f"\n# fuzz input {n}\n".encode()


def render(doc: Any, suffix: bytes, n: int) -> bytes:
    if suffix.lower() == b".json":
        body = json.dumps(doc).encode()  # NaN and Infinity come out as JSON's NaN tokens
    else:
        body = yaml.safe_dump(doc, sort_keys=False, allow_unicode=False).encode()
    return body + unique_tail(n, suffix)


# ---- file names --------------------------------------------------------------------------------

NAME_KINDS = (
    "not UTF-8",
    "control characters",
    "up to NAME_MAX",
    "dots",
    "leading -",
    "shell characters",
    "odd Unicode",
    "random bytes",
    "ignored by contract",
)
_CONTROL = [bytes([c]) for c in (*range(1, 32), 127)] + [b"\x1b[2J", b"\x1b]0;x\x07", b"\r\n"]
_SHELL = [b"$(touch x)", b"`id`", b";", b"|", b"&", b"*", b"?", b"'", b'"', b"\\", b" ", b"~"]
_ODD_UNICODE = ["\u202e", "\u200d", "\ufeff", "\u0301", "\uff41", "\U0001f600", "\u00e9", "\u2028"]
_ALNUM = b"abcdefghijklmnopqrstuvwxyz0123456789-_"


def _word(rng: random.Random, lo: int = 1, hi: int = 12) -> bytes:
    return bytes(rng.choice(_ALNUM) for _ in range(rng.randint(lo, hi)))


def hostile_name(rng: random.Random, kind: str) -> bytes:
    """A file name of ``kind`` (one of :data:`NAME_KINDS`), at most NAME_MAX bytes."""
    suffix = rng.choice(SUFFIXES)
    if kind == "not UTF-8":
        bad = bytes(rng.randint(0x80, 0xFF) for _ in range(rng.randint(1, 4)))
        stem = _word(rng) + bad + _word(rng, 0, 6)
    elif kind == "control characters":
        stem = _word(rng, 0, 6) + b"".join(rng.choices(_CONTROL, k=rng.randint(1, 3)))
        stem += _word(rng, 0, 6)
    elif kind == "up to NAME_MAX":
        total = rng.randint(NAME_MAX - 40, NAME_MAX)
        stem = bytes(rng.choice(_ALNUM) for _ in range(total - len(suffix)))
        if rng.random() < 0.3:  # multi-byte characters near the limit
            stem = stem[:-6] + "é".encode() * 3
    elif kind == "dots":
        stem = rng.choice([b"a..", b"..", b"a.b.c", b"x.yaml", b"...", b"a. ."]) + _word(rng, 0, 4)
        stem = stem.lstrip(b".") or b"x.."
    elif kind == "leading -":
        stem = rng.choice([b"-", b"--", b"--help", b"-rf ", b"-n"]) + _word(rng, 0, 8)
    elif kind == "shell characters":
        stem = b"".join(rng.choices(_SHELL, k=rng.randint(1, 4))) + _word(rng, 1, 6)
    elif kind == "odd Unicode":
        chars = rng.choices(_ODD_UNICODE, k=rng.randint(1, 4))
        stem = _word(rng, 1, 4) + "".join(chars).encode()
    elif kind == "random bytes":
        allowed = [b for b in range(1, 256) if b != ord("/")]
        stem = bytes(rng.choice(allowed) for _ in range(rng.randint(1, 120)))
    elif kind == "ignored by contract":
        return rng.choice(
            [
                b"." + _word(rng) + suffix,
                _word(rng) + b".txt",
                _word(rng) + suffix + b".tmp",
                _word(rng) + b"\xff",
                b"." + bytes([0x1B]) + _word(rng) + suffix,
            ]
        )
    else:
        raise ValueError(f"unknown name kind {kind!r}")
    name = (stem + suffix)[-NAME_MAX:] if len(stem + suffix) > NAME_MAX else stem + suffix
    if name.startswith(b"."):  # a dot-name is ignored by contract, not what was asked
        name = b"x" + name[1:]
    return name


# ---- the job schema, pushed past its range -----------------------------------------------------

#: Strings no field of the schema takes: bad names, bad data paths, terminal escapes.
_HOSTILE_STRINGS = [
    "",
    "UPPER.txt",
    "../../../etc/passwd.csv",
    "\x1b[2J\x07.csv",
    "a\nb",
    "x" * 5000 + ".csv",
    "/dev/zero",
    "data/nothing-here.csv",
    "é",
]
_HUGE_INT = 10**30


@dataclass(frozen=True)
class Leaf:
    """One field of the schema: its dotted path, type and numeric constraints."""

    path: str
    kind: str  # int, float, bool, str, literal, list, model
    optional: bool
    choices: tuple[Any, ...] = ()
    ge: float | None = None
    le: float | None = None
    gt: float | None = None
    lt: float | None = None
    min_len: int | None = None


def _strip_optional(annotation: Any) -> tuple[Any, bool]:
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        optional = len(args) < len(get_args(annotation))
        if len(args) == 1:
            return args[0], optional
        return annotation, optional
    return annotation, False


def schema_leaves(model: type[BaseModel] = JobSpec, prefix: str = "") -> Iterator[Leaf]:
    """Every field of ``model`` and its nested models (the search space excepted: see
    :func:`space_cases`), with what the schema says it takes."""
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        annotation, optional = _strip_optional(info.annotation)
        bounds: dict[str, Any] = {}
        for meta in info.metadata:
            for attr in ("ge", "le", "gt", "lt"):
                if isinstance(meta, getattr(annotated_types, attr.capitalize())):
                    bounds[attr] = getattr(meta, attr)
            if isinstance(meta, annotated_types.MinLen):
                bounds["min_len"] = meta.min_length
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            if path == "search.space":
                yield Leaf(path, "model", optional)
                continue
            yield Leaf(path, "model", optional)
            yield from schema_leaves(annotation, path + ".")
        elif get_origin(annotation) is Literal:
            yield Leaf(path, "literal", optional, choices=get_args(annotation))
        elif get_origin(annotation) in (tuple, list):
            inner = get_args(annotation)[0]
            choices = get_args(inner) if get_origin(inner) is Literal else ()
            yield Leaf(path, "list", optional, choices=choices, **bounds)
        elif annotation is bool:
            yield Leaf(path, "bool", optional)
        elif annotation is int:
            yield Leaf(path, "int", optional, **bounds)
        elif annotation is float:
            yield Leaf(path, "float", optional, **bounds)
        else:  # str, and Annotated str (a data path): the schema's own validator decides
            yield Leaf(path, "str", optional)


def invalid_values(leaf: Leaf) -> list[tuple[str, Any]]:
    """Values ``leaf`` must refuse, each with a label: past its bounds, wrong types."""
    out: list[tuple[str, Any]] = []
    if not leaf.optional:
        out.append(("null", None))
    if leaf.kind in ("int", "float"):
        whole = leaf.kind == "int"
        if leaf.ge is not None:
            out += [("below ge", leaf.ge - 1 if whole else leaf.ge - 1e-9)]
            out += [("negative huge", -_HUGE_INT if whole else -1e308)]
        if leaf.gt is not None:
            out += [("equal to gt", leaf.gt), ("below gt", leaf.gt - 1)]
        if leaf.le is not None:
            out += [("above le", leaf.le + 1 if whole else leaf.le + 1e-9)]
            out += [("huge", _HUGE_INT if whole else 1e308), ("2**64", 2**64)]
        if leaf.lt is not None:
            out += [("equal to lt", leaf.lt)]
        out += [("NaN", math.nan), ("inf", math.inf), ("-inf", -math.inf)]
        out += [("string", "5"), ("bool", True), ("list", [1]), ("mapping", {"a": 1})]
        if whole:
            out += [("fraction", 2.5), ("float spelling of an int", 3.0)]
    elif leaf.kind == "bool":
        out += [("string", "yes"), ("int", 1), ("list", [True]), ("NaN", math.nan)]
    elif leaf.kind == "literal":
        out += [(f"unknown choice {s!r}", s) for s in ("", "x" + str(leaf.choices[0]), "TPE")]
        out += [("int", 1), ("list", list(leaf.choices[:1])), ("mapping", {"a": 1})]
    elif leaf.kind == "list":
        if leaf.min_len:
            out += [("empty list", [])]
        if leaf.choices:
            out += [("unknown item", ["catboost"]), ("duplicate items", [leaf.choices[0]] * 2)]
            out += [("a string, not a list", leaf.choices[0])]
        out += [("list of ints", [1, 2]), ("mapping", {"a": 1}), ("nested list", [[]])]
    elif leaf.kind == "str":
        out += [(f"string {s[:20]!r}", s) for s in _HOSTILE_STRINGS]
        out += [("int", 5), ("list", ["x"]), ("mapping", {"a": "b"}), ("float", 1.5)]
    elif leaf.kind == "model":
        out += [("a list, not a mapping", []), ("a string", "x"), ("an int", 3)]
        out += [("unknown key", {"no_such_key": 1})]
    return out


def space_values(model: str) -> Iterator[tuple[str, str, Any]]:
    """(parameter, label, value) for every parameter of ``model``'s search space: its
    bounds (from :func:`default_space`) crossed, reversed, empty, huge, NaN, wrong types."""
    for param, spec in default_space(model).items():
        lo, hi = spec.bounds
        whole = spec.kind == "int"
        step = 1 if whole else max(abs(lo) * 0.5, 1e-6)
        inside_lo, inside_hi = spec.low, spec.high
        yield param, "below its bounds", [lo - step, inside_hi]
        yield param, "above its bounds", [inside_lo, hi + (1 if whole else max(hi * 0.5, 1e-6))]
        yield param, "huge", [inside_lo, _HUGE_INT if whole else 1e308]
        yield param, "negative", [-_HUGE_INT, -5] if lo >= -5 else [lo - 10, lo - 5]
        yield param, "reversed", [inside_hi, inside_lo]
        yield param, "NaN", [math.nan, inside_hi]
        yield param, "inf", [inside_lo, math.inf]
        yield param, "-inf", [-math.inf, inside_hi]
        yield param, "empty list", []
        yield param, "one item", [inside_lo]
        yield param, "three items", [inside_lo, inside_lo, inside_hi]
        yield param, "strings", [str(inside_lo), str(inside_hi)]
        yield param, "booleans", [False, True]
        yield param, "a scalar", inside_lo
        yield param, "a mapping", {"low": inside_lo, "high": inside_hi}
        yield param, "nested list", [[inside_lo, inside_hi]]
        if whole:
            yield param, "fractions", [inside_lo + 0.5, inside_hi]
        if spec.log and lo > 0:
            yield param, "zero on a log scale", [0, inside_hi]


@dataclass(frozen=True)
class SchemaCase:
    label: str
    edits: tuple[tuple[str, Any], ...]  # (dotted path, value); value _DELETE removes the key


_DELETE = object()


def schema_cases() -> list[SchemaCase]:
    """Every invalid value of every field of the schema, one case each."""
    cases = []
    for leaf in schema_leaves():
        for label, value in invalid_values(leaf):
            cases.append(SchemaCase(f"{leaf.path}: {label}", ((leaf.path, value),)))
        if not leaf.optional and leaf.path in _REQUIRED:
            cases.append(SchemaCase(f"{leaf.path}: missing", ((leaf.path, _DELETE),)))
    for model in MODELS:
        cases.append(
            SchemaCase(
                f"search.space.{model}: unknown parameter",
                ((f"search.space.{model}.no_such_param", [1, 2]),),
            )
        )
        for param, label, value in space_values(model):
            cases.append(
                SchemaCase(
                    f"search.space.{model}.{param}: {label}",
                    ((f"search.space.{model}.{param}", value),),
                )
            )
    return cases


_REQUIRED = {n for n, f in JobSpec.model_fields.items() if f.is_required()}


def schema_doc(rng: random.Random, n: int, cases: list[SchemaCase]) -> tuple[str, dict[str, Any]]:
    """A tiny valid job with one to three schema cases applied; (label, document)."""
    # A deep copy: job_doc shares daemonkit's TINY_SPACE, which the edits must not touch.
    doc = copy.deepcopy(job_doc(f"fz-schema-{n}", models=MODELS, n_trials=1))
    picked = [rng.choice(cases) for _ in range(rng.choice((1, 1, 1, 2, 3)))]
    for case in picked:
        for path, value in case.edits:
            _set(doc, path, value)
    return " + ".join(c.label for c in picked), doc


def _set(doc: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    into = doc
    for key in parents:
        nxt = into.get(key)
        if not isinstance(nxt, dict):
            nxt = into[key] = {}
        into = nxt
    if value is _DELETE:
        into.pop(last, None)
    else:
        into[last] = value


# ---- data files --------------------------------------------------------------------------------

Mutation = Callable[[random.Random, bytes], bytes]


def _lines(data: bytes) -> list[bytes]:
    return data.split(b"\n")


def _row(rng: random.Random, lines: list[bytes]) -> int:
    return rng.randint(1, max(1, len(lines) - 2))


def _truncate(rng: random.Random, data: bytes) -> bytes:
    return data[: rng.randint(1, len(data) - 2)]


def _header_only(rng: random.Random, data: bytes) -> bytes:
    return data[: data.index(b"\n") + 1]


def _empty(rng: random.Random, data: bytes) -> bytes:
    return b""


def _unbalanced_quote(rng: random.Random, data: bytes) -> bytes:
    lines = _lines(data)
    i = _row(rng, lines)
    fields = lines[i].split(b",")
    j = rng.randrange(len(fields))
    fields[j] = b'"' + fields[j]
    lines[i] = b",".join(fields)
    return b"\n".join(lines)


def _nul(rng: random.Random, data: bytes) -> bytes:
    at = rng.randrange(len(data))
    return data[:at] + b"\x00" + data[at:]


def _huge_field(rng: random.Random, data: bytes) -> bytes:
    lines = _lines(data)
    i = 0 if rng.random() < 0.3 else _row(rng, lines)
    lines[i] = lines[i] + b"x" * rng.randint(1 << 20, 3 << 20)
    return b"\n".join(lines)


def _wrong_types(rng: random.Random, data: bytes) -> bytes:
    lines = _lines(data)
    header = lines[0].split(b",")
    column = rng.choice(
        [
            c
            for c in (
                b'"isFraud"',
                b'"TransactionDT"',
                b'"TransactionAmt"',
                b'"card1"',
                b'"TransactionID"',
            )
            if c in header
        ]
    )
    j = header.index(column)
    for _ in range(rng.randint(1, 5)):
        i = _row(rng, lines)
        fields = lines[i].split(b",")
        if j < len(fields):
            fields[j] = rng.choice([b"abc", b"1e999", b"-", b"NaN", b"2", b"\xff\xfe"])
            lines[i] = b",".join(fields)
    return b"\n".join(lines)


def _drop_column(rng: random.Random, data: bytes) -> bytes:
    lines = _lines(data)
    header = lines[0].split(b",")
    del header[rng.randrange(len(header))]
    lines[0] = b",".join(header)
    return b"\n".join(lines)


def _extra_field(rng: random.Random, data: bytes) -> bytes:
    lines = _lines(data)
    i = _row(rng, lines)
    lines[i] += b",1"
    return b"\n".join(lines)


def _crlf(rng: random.Random, data: bytes) -> bytes:
    return data.replace(b"\n", b"\r\n")


def _bad_utf8(rng: random.Random, data: bytes) -> bytes:
    lines = _lines(data)
    i = _row(rng, lines)
    lines[i] = lines[i].replace(b",", b",\xc3\x28", 1)
    return b"\n".join(lines)


def _one_class(rng: random.Random, data: bytes) -> bytes:
    lines = _lines(data)
    header = lines[0].split(b",")
    if b'"isFraud"' not in header:  # the identity file has no label
        return _wrong_types(rng, data)
    j = header.index(b'"isFraud"')
    for i in range(1, len(lines)):
        fields = lines[i].split(b",")
        if j < len(fields):
            fields[j] = b"0"
            lines[i] = b",".join(fields)
    return b"\n".join(lines)


def _duplicate_rows(rng: random.Random, data: bytes) -> bytes:
    lines = _lines(data)
    i = _row(rng, lines)
    return b"\n".join(lines[: i + 1] + [lines[i]] * rng.randint(1, 50) + lines[i + 1 :])


#: Before submission: name -> mutation of the CSV's bytes.
DATA_MUTATIONS: dict[str, Mutation] = {
    "truncated mid-line": _truncate,
    "header only": _header_only,
    "empty": _empty,
    "unbalanced quote": _unbalanced_quote,
    "NUL byte": _nul,
    "huge field (over 1 MiB)": _huge_field,
    "wrong types": _wrong_types,
    "a header column dropped": _drop_column,
    "an extra field": _extra_field,
    "CRLF line ends": _crlf,
    "bad UTF-8": _bad_utf8,
    "one class only": _one_class,
    "duplicated rows": _duplicate_rows,
}
#: After the job is accepted (applied by the run): what the data file becomes.
AFTER_ACCEPTANCE = ("a FIFO", "a link out of the data roots", "removed", "a folder", "truncated")
AFTER_WHEN = ("job.submitted", "prepare", "search")


def data_job(rng: random.Random, n: int, folder: str, data: dict[str, bytes]) -> tuple[str, bytes]:
    """A tiny valid job over ``folder`` (its file name and content), naming the files of
    ``data`` (the identity file is optional)."""
    model = rng.choice(MODELS)
    doc = job_doc(f"fz-data-{n}", models=(model,), n_trials=1, data_dir=folder)
    if IDENTITY not in data:
        del doc["data"]["identity"]
    suffix = rng.choice((b".yaml", b".json"))
    return f"fz-data-{n}".encode() + suffix, render(doc, suffix, n)


def mutate_data(
    rng: random.Random, original: dict[str, bytes], label: str
) -> tuple[str, dict[str, bytes]]:
    """Mutation ``label`` of one of the two files (or of the only one)."""
    which = TRANSACTIONS if rng.random() < 0.75 or IDENTITY not in original else IDENTITY
    out = dict(original)
    out[which] = DATA_MUTATIONS[label](rng, original[which])
    return f"{which}: {label}", out


def place(folder: Path, files: dict[str, bytes]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
