"""Reading a job file: the hardened reader (:func:`parse_job_file`) over the core's schema.

Job files are untrusted input dropped into the inbox by anyone in the operators group, so
reading one must never block, follow a link, expand a bomb, execute a YAML tag, or touch
(even ``stat``) a data path outside the configured data roots. Every problem becomes a
:class:`~sentinel_daemon.core.jobspec.JobSpecError` that names the file, the field and what
to do about it; no other exception escapes :func:`parse_job_file`.

The file is checked in two steps: its *shape* (plain JSON-like data, bounded depth, no
duplicate keys) before pydantic sees it, then the schema of
:mod:`sentinel_daemon.core.jobspec`. This module sits beside :mod:`~sentinel_daemon.settings`
in the base (it reads files; the core stays pure) and, like it, validates with the core.
The daemon's intake and ``sentinel submit`` both read job files through it, so a file is
judged the same way on both sides.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel, ValidationError

from sentinel_daemon.core.jobspec import JobSpec, JobSpecError, ParsedJob
from sentinel_daemon.fsutil import file_kind
from sentinel_daemon.layout import JOB_SUFFIXES

#: Deepest nesting a job file may have. A valid one needs 5 (search.space.model.param.list);
#: the bound keeps PyYAML's recursive composer and our own walk far from the recursion limit.
MAX_DEPTH = 16
DEFAULT_MAX_BYTES = 64 * 1024


def parse_job_file(
    path: Path,
    *,
    data_roots: Sequence[Path],
    base_dir: Path,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> ParsedJob:
    """Read, parse and validate one job file; raise :class:`JobSpecError` on any problem.

    The file is read once (so ``sha256`` is of exactly the bytes validated), at most
    ``max_bytes`` of it. Relative data paths resolve against ``base_dir``; after resolving
    ``..`` and symlinks each must lie inside one of ``data_roots`` and be a regular file.
    Data files are only ``stat``-ed, never opened, and only once known to be inside a root.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in JOB_SUFFIXES:
        raise JobSpecError(
            path, "-", f"job files must end in {', '.join(JOB_SUFFIXES)}; rename the file"
        )
    data = read_job_bytes(path, max_bytes)
    sha256 = _sha256(data)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JobSpecError(
            path, "-", f"not UTF-8 text (bad byte at offset {exc.start}); save it as UTF-8"
        ) from None
    if not text.strip():
        raise JobSpecError(path, "-", "the file is empty; see config/jobs/ for an example")
    doc = _load_json(path, text) if suffix == ".json" else _load_yaml(path, text)
    if doc is None and suffix != ".json":
        raise JobSpecError(path, "-", "the file holds no job (only comments); add one")
    _check_plain(path, doc, "", 1)
    if not isinstance(doc, dict):
        raise JobSpecError(
            path,
            "-",
            f"the top level must be a mapping (name: ..., data: ...), not {_kind(doc)}",
        )
    spec = _validate(path, doc)
    written = {"data.transactions": spec.data.transactions}
    if spec.data.identity is not None:
        written["data.identity"] = spec.data.identity
    spec = _resolve_data(path, spec, data_roots=data_roots, base_dir=base_dir)
    raw = spec.model_dump(mode="json", exclude_none=True)
    return ParsedJob(spec=spec, sha256=sha256, raw=raw, data_as_written=written)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_job_bytes(path: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """Read a regular file of at most ``max_bytes`` without following links or blocking.

    Raises :class:`JobSpecError` for a link, FIFO, device, folder, or a file too big.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise JobSpecError(path, "-", "the file does not exist (claimed or removed?)") from None
    except OSError as exc:
        raise JobSpecError(path, "-", f"cannot read the file: {exc.strerror}") from None
    # Checked before open as well as after: opening a device node can have side effects
    # (a tape rewinds, a tty becomes our terminal), so we do not open one at all.
    _require_regular(path, st.st_mode)
    # O_NOFOLLOW: a link swapped in after lstat fails with ELOOP. O_NONBLOCK: a FIFO swapped
    # in opens at once instead of waiting for a writer; fstat below then rejects it.
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            _require_regular(path, stat.S_IFLNK)
        raise JobSpecError(path, "-", f"cannot open the file: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        _require_regular(path, st.st_mode)
        too_big = JobSpecError(
            path,
            "-",
            f"the file is over {max_bytes} bytes; a job file is a few hundred bytes, "
            f"so check that this is the right file",
        )
        if st.st_size > max_bytes:
            raise too_big
        chunks: list[bytes] = []
        total = 0
        # Read to EOF rather than trusting st_size: the file may be growing.
        while chunk := os.read(fd, max_bytes + 1 - total):
            chunks.append(chunk)
            total += len(chunk)
            if total > max_bytes:
                raise too_big
        return b"".join(chunks)
    except OSError as exc:
        raise JobSpecError(path, "-", f"cannot read the file: {exc.strerror}") from None
    finally:
        os.close(fd)


def _require_regular(path: Path, mode: int) -> None:
    if stat.S_ISREG(mode):
        return
    what = file_kind(mode)
    if stat.S_ISLNK(mode):
        what += "; put the file itself in the inbox (links are not followed)"
    raise JobSpecError(path, "-", f"is {what}; a job file must be a regular file")


def _load_json(path: Path, text: str) -> Any:
    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise _Refused(f"key {key!r} appears twice in one object; keep one")
            out[key] = value
        return out

    def no_constants(name: str) -> Any:
        return _NonFinite(name)  # refused by _check_plain, which knows the field

    try:
        return json.loads(text, object_pairs_hook=no_duplicates, parse_constant=no_constants)
    except _Refused as exc:
        raise JobSpecError(path, "-", str(exc)) from None
    except RecursionError:
        raise JobSpecError(path, "-", f"nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:  # JSONDecodeError, and over-long integer literals
        raise JobSpecError(path, "-", f"not valid JSON: {exc}") from None


class _NonFinite:
    """JSON's ``NaN``, ``Infinity`` or ``-Infinity``, kept until its field is known."""

    def __init__(self, name: str) -> None:
        self.name = name


class _Refused(Exception):
    """Internal: a parse hook refused the input (turned into JobSpecError by the caller)."""


class _Frame:
    """One open YAML collection while scanning events: for paths and duplicate keys."""

    __slots__ = ("expect_key", "is_mapping", "keys", "label")

    def __init__(self, is_mapping: bool, label: str) -> None:
        self.is_mapping = is_mapping
        self.label = label  # the key or index of the next child, for error paths
        self.keys: set[str] = set()
        self.expect_key = True


def _scan_yaml(text: str) -> None:
    """Refuse YAML features a job file never needs before anything is constructed.

    Anchors and aliases are refused outright rather than bounding their expansion: a job
    file has no use for them, and refusing them removes the "billion laughs" class (a few
    hundred bytes expanding to gigabytes) without having to count expanded nodes. Explicit
    tags are refused too (safe_load would refuse ``!!python/...`` anyway, but with a less
    helpful message). Nesting is bounded here, on the event stream, because PyYAML's
    parser is iterative while its composer recurses once per level.
    """
    frames: list[_Frame] = []
    documents = 0

    def where() -> str:
        return ".".join(f.label for f in frames if f.label) or "-"

    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.DocumentStartEvent):
            documents += 1
            if documents > 1:
                raise _YamlRefused("-", "holds more than one YAML document; keep one")
            continue
        if isinstance(event, yaml.AliasEvent):
            raise _YamlRefused(where(), "uses a YAML alias (*name); write the value out")
        if isinstance(event, yaml.CollectionEndEvent):
            frames.pop()
            continue
        if not isinstance(event, yaml.NodeEvent):
            continue
        if frames and frames[-1].is_mapping:
            top = frames[-1]
            if top.expect_key:
                if isinstance(event, yaml.ScalarEvent):
                    if event.value in top.keys:
                        top.label = event.value
                        raise _YamlRefused(where(), "appears twice in one mapping; keep one")
                    top.keys.add(event.value)
                    top.label = event.value
                top.expect_key = False
            else:
                top.expect_key = True
        elif frames:
            top = frames[-1]
            top.label = str(int(top.label or "-1") + 1)
        if event.anchor is not None:
            raise _YamlRefused(where(), "uses a YAML anchor (&name); write the value out")
        tag = getattr(event, "tag", None)
        if tag is not None:
            raise _YamlRefused(where(), f"uses the YAML tag {tag!r}; job files take plain values")
        if isinstance(event, yaml.CollectionStartEvent):
            frames.append(_Frame(isinstance(event, yaml.MappingStartEvent), ""))
            if len(frames) > MAX_DEPTH:
                raise _YamlRefused(where(), f"nested deeper than {MAX_DEPTH} levels")


class _YamlRefused(Exception):
    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason)
        self.field = field
        self.reason = reason


def _load_yaml(path: Path, text: str) -> Any:
    try:
        _scan_yaml(text)
        return yaml.safe_load(text)
    except _YamlRefused as exc:
        raise JobSpecError(path, exc.field, exc.reason) from None
    except yaml.YAMLError as exc:
        raise JobSpecError(path, "-", f"not valid YAML: {_one_line(str(exc))}") from None
    except (ValueError, OverflowError, RecursionError) as exc:
        # PyYAML lets a few of these through on values that look like dates or numbers
        # but are not (2020-13-45, a 5000-digit integer).
        raise JobSpecError(
            path,
            "-",
            f"not valid YAML: {_one_line(str(exc))}; quote values that only look like dates "
            f"or numbers",
        ) from None


def _one_line(text: str) -> str:
    return " ".join(text.split())[:300]


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    names = {dict: "a mapping", list: "a list", str: "a string", int: "an integer"}
    return names.get(type(value), f"a {type(value).__name__}")


def _check_plain(path: Path, value: Any, where: str, depth: int) -> None:
    """Accept only JSON's types, string keys and finite numbers, at most MAX_DEPTH deep.

    YAML's safe loader still builds dates, timestamps, bytes and sets, and keys that are
    not strings; none has a place in a job file, and refusing them here keeps what pydantic
    and the event log see to plain JSON.
    """
    field = where or "-"
    if depth > MAX_DEPTH:
        raise JobSpecError(path, field, f"nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise JobSpecError(
                    path, field, f"key {key!r} is {_kind(key)}; keys must be strings"
                )
            _check_plain(path, item, f"{where}.{key}" if where else key, depth + 1)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_plain(path, item, f"{where}.{index}" if where else str(index), depth + 1)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise JobSpecError(path, field, f"{value!r} is not a finite number")
    elif isinstance(value, _NonFinite):
        raise JobSpecError(path, field, f"{value.name} is not a finite number")
    elif value is not None and not isinstance(value, str | int):
        raise JobSpecError(
            path,
            field,
            f"{type(value).__name__} values are not allowed; quote it to make it a string",
        )


def _validate(path: Path, doc: dict[str, Any]) -> JobSpec:
    try:
        # Through JSON text on purpose: strict mode then maps arrays to tuples (which it
        # refuses for Python lists) while still refusing every type coercion.
        return JobSpec.model_validate_json(json.dumps(doc))
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        first, rest = errors[0], errors[1:]
        reason = _describe(first)
        if rest:
            more = "; ".join(f"{_field_of(e)}: {_describe(e)}" for e in rest[:4])
            extra = f" (and {len(rest) - 4} more)" if len(rest) > 4 else ""
            reason += f". Also: {more}{extra}"
        raise JobSpecError(path, _field_of(first), reason) from None


def _field_of(error: Any) -> str:
    ctx = error.get("ctx") or {}
    if isinstance(ctx.get("field"), str):
        return str(ctx["field"])
    return ".".join(str(part) for part in error["loc"]) or "-"


def _describe(error: Any) -> str:
    """An operator's reason for one pydantic error, ending in what to do."""
    kind = error["type"]
    loc = tuple(error["loc"])
    if kind == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1])
        hint = f" (allowed here: {', '.join(allowed)})" if allowed else ""
        return f"unknown key; remove it or fix its spelling{hint}"
    if kind == "missing":
        return "required; add it"
    message = str(error["msg"]).removeprefix("Value error, ")
    if kind in {"value_error", "space_for_untrained_model"}:
        return message
    got = repr(error.get("input"))
    if len(got) > 60:
        got = got[:57] + "..."
    return f"{message} (got {got}); fix the value"


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    model: type[BaseModel] = JobSpec
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None:
            return []
        nested = _model_in(field.annotation)
        if nested is None:
            return []
        model = nested
    return list(model.model_fields)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    for candidate in (annotation, *get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _resolve_data(
    path: Path, spec: JobSpec, *, data_roots: Sequence[Path], base_dir: Path
) -> JobSpec:
    roots = [os.path.realpath(root) for root in data_roots]
    resolved = {
        "transactions": _resolve_one(
            path, "data.transactions", spec.data.transactions, roots, base_dir
        )
    }
    if spec.data.identity is not None:
        resolved["identity"] = _resolve_one(
            path, "data.identity", spec.data.identity, roots, base_dir
        )
    return spec.model_copy(update={"data": spec.data.model_copy(update=resolved)})


def _resolve_one(path: Path, field: str, value: str, roots: list[str], base_dir: Path) -> str:
    if not roots:
        raise JobSpecError(
            path, field, "no data roots are configured; set data_roots in the settings"
        )
    # realpath lstat()s the path's components to resolve links (there is no way to resolve
    # a link without looking at it) but never stat()s or opens the file itself.
    real = os.path.realpath(os.path.join(base_dir, value))
    if not any(_is_inside(real, root) for root in roots):
        raise JobSpecError(
            path,
            field,
            f"{value!r} resolves to {real}, outside the data roots ({', '.join(roots)}); "
            f"move the file under a data root or add its folder to data_roots",
        )
    try:
        st = os.stat(real)
    except FileNotFoundError:
        raise JobSpecError(path, field, f"{real} does not exist; check the path") from None
    except OSError as exc:
        raise JobSpecError(path, field, f"cannot stat {real}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise JobSpecError(path, field, f"{real} is not a regular file")
    return real


def _is_inside(real: str, root: str) -> bool:
    # Compare whole components: /srv/data-evil is not inside /srv/data.
    return real == root or real.startswith(root.rstrip(os.sep) + os.sep)
