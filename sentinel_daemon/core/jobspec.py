"""The job file: its schema (:class:`JobSpec`) and a hardened reader (:func:`parse_job_file`).

Job files are untrusted input dropped into the inbox by anyone in the operators group, so
reading one must never block, follow a link, expand a bomb, execute a YAML tag, or touch
(even ``stat``) a data path outside the configured data roots. Every problem becomes a
:class:`JobSpecError` that names the file, the field and what to do about it; no other
exception escapes :func:`parse_job_file`.

The spec is checked in two steps: the file's *shape* (plain JSON-like data, bounded depth,
no duplicate keys) before pydantic sees it, then the schema in strict mode, so ``"50"`` is
not silently taken for ``50`` nor ``yes`` for ``true``. Search-space entries are checked
by :mod:`sentinel_daemon.core.space`, the same code the job actor and the trainer resolve
the space with (integer or float, log scale, bounds), so an accepted job is never refused
when its studies are built.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeAlias, get_args

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from sentinel_daemon.core.ids import JobId
from sentinel_daemon.core.space import SpaceError, override
from sentinel_daemon.errors import SentinelError
from sentinel_daemon.layout import JOB_SUFFIXES

#: Deepest nesting a job file may have. A valid one needs 5 (search.space.model.param.list);
#: the bound keeps PyYAML's recursive composer and our own walk far from the recursion limit.
MAX_DEPTH = 16
DEFAULT_MAX_BYTES = 64 * 1024
DATA_SUFFIXES = (".csv", ".parquet", ".pq")
_NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")

ModelName: TypeAlias = Literal["xgboost", "lightgbm"]
Number: TypeAlias = int | float


class JobSpecError(SentinelError):
    """A job file cannot be accepted; ``field`` is dotted (``search.n_trials``) or ``-``."""

    def __init__(self, path: Path | str, field: str, reason: str) -> None:
        self.path = Path(path)
        self.field = field
        self.reason = reason
        where = "" if field == "-" else f" field {field!r}:"
        super().__init__(f"job file {self.path}:{where} {reason}")


# ---- schema ---------------------------------------------------------------------------


class _Spec(BaseModel):
    # strict: validated from JSON text (see _validate), where strict mode still maps arrays
    # to tuples but refuses "50" for an int, 1 for a bool and 3.0 for an int.
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)


class _ModelSpace(_Spec):
    """Overrides of one model's default search space, checked by the core's own space code.

    Each entry goes through :func:`sentinel_daemon.core.space.override`, the check that
    :func:`~sentinel_daemon.core.space.resolve_space` applies when the job actor builds its
    studies and the trainer its parameters: what is accepted here is sampled as written.
    """

    MODEL: ClassVar[ModelName]

    @field_validator("*", mode="before")
    @classmethod
    def _inside_the_space(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None:
            return None
        name = str(info.field_name)
        try:
            override(cls.MODEL, name, value)
        except SpaceError as exc:
            raise ValueError(f"{exc.reason}; fix the range") from None
        return tuple(value)


#: One override as accepted: ``(low, high)``, or the choices of a categorical parameter.
ParamValues: TypeAlias = tuple[Number, ...]


class XGBoostSpace(_ModelSpace):
    """Narrowed XGBoost parameters (scikit-learn API names)."""

    MODEL = "xgboost"

    n_estimators: ParamValues | None = None
    learning_rate: ParamValues | None = None
    max_depth: ParamValues | None = None
    min_child_weight: ParamValues | None = None
    subsample: ParamValues | None = None
    colsample_bytree: ParamValues | None = None
    reg_alpha: ParamValues | None = None
    reg_lambda: ParamValues | None = None
    gamma: ParamValues | None = None


class LightGBMSpace(_ModelSpace):
    """Narrowed LightGBM parameters (scikit-learn API names)."""

    MODEL = "lightgbm"

    n_estimators: ParamValues | None = None
    learning_rate: ParamValues | None = None
    num_leaves: ParamValues | None = None
    max_depth: ParamValues | None = None
    min_child_samples: ParamValues | None = None
    subsample: ParamValues | None = None
    colsample_bytree: ParamValues | None = None
    reg_alpha: ParamValues | None = None
    reg_lambda: ParamValues | None = None


class SearchSpace(_Spec):
    """Per-model overrides of the default search space."""

    xgboost: XGBoostSpace | None = None
    lightgbm: LightGBMSpace | None = None

    def for_model(self, model: ModelName) -> dict[str, tuple[Number, ...]]:
        """The overrides given for ``model``, by parameter name (empty when none)."""
        section = self.xgboost if model == "xgboost" else self.lightgbm
        if section is None:
            return {}
        return {k: v for k, v in section.model_dump().items() if v is not None}


def _check_data_path(value: Any) -> Any:
    if isinstance(value, str):
        if not value or "\x00" in value or len(value) > 4096:
            raise ValueError("must be a non-empty path without NUL characters")
        if not value.lower().endswith(DATA_SUFFIXES):
            raise ValueError(
                f"must name a CSV or Parquet file ({', '.join(DATA_SUFFIXES)}), got {value!r}"
            )
    return value


DataPath: TypeAlias = Annotated[str, BeforeValidator(_check_data_path)]


class DataSpec(_Spec):
    """Input files; relative paths are resolved by :func:`parse_job_file`."""

    transactions: DataPath
    identity: DataPath | None = None


class SearchSpec(_Spec):
    """The Optuna search: budget per model, concurrency, sampler, pruner and space."""

    n_trials: int = Field(default=50, ge=1, le=10_000)
    parallelism: int = Field(default=2, ge=1, le=64)
    sampler: Literal["tpe", "random"] = "tpe"
    pruner: Literal["median", "hyperband", "none"] = "median"
    # numpy and Optuna's samplers take seeds in [0, 2**32); refusing others here beats a
    # crash deep inside the search stage.
    seed: int = Field(default=42, ge=0, le=2**32 - 1)
    space: SearchSpace | None = None


class ValidationSpec(_Spec):
    """Time-ordered hold-outs: the last ``test_fraction``, then ``valid_fraction`` of the rest."""

    test_fraction: float = Field(default=0.2, gt=0.0, le=0.5)
    valid_fraction: float = Field(default=0.2, gt=0.0, le=0.5)


class QualityGate(_Spec):
    """What the best model must reach on the test split before it is promoted."""

    min_test_auc: float = Field(default=0.5, ge=0.0, le=1.0)
    #: False: the model must also score no worse than the last one promoted under this name.
    allow_regression: bool = False


class JobSpec(_Spec):
    """A validated job file (see DESIGN.md, "Contract: job file")."""

    name: str
    data: DataSpec
    models: tuple[ModelName, ...] = Field(default=("xgboost", "lightgbm"), min_length=1)
    search: SearchSpec = SearchSpec()
    validation: ValidationSpec = ValidationSpec()
    quality_gate: QualityGate = QualityGate()

    @field_validator("name")
    @classmethod
    def _name_is_safe(cls, value: str) -> str:
        # fullmatch, not match with "$": "$" also matches before a trailing newline.
        if not _NAME_RE.fullmatch(value):
            raise ValueError(
                "must be 1 to 63 lower-case letters, digits or '-', starting with a letter or "
                f"digit (it becomes part of file names and job ids), got {value!r}"
            )
        return value

    @field_validator("models")
    @classmethod
    def _models_unique(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for model in value:
            if value.count(model) > 1:
                raise ValueError(f"lists {model!r} more than once; list each model once")
        return value

    @model_validator(mode="after")
    def _space_only_for_trained_models(self) -> JobSpec:
        space = self.search.space
        for model in ("xgboost", "lightgbm"):
            if space is not None and getattr(space, model) is not None and model not in self.models:
                raise PydanticCustomError(
                    "space_for_untrained_model",
                    "the job does not train {model}; add it to `models` or remove this entry",
                    {"model": model, "field": f"search.space.{model}"},
                )
        return self

    @classmethod
    def from_raw(cls, raw: dict[str, Any]) -> JobSpec:
        """Rebuild a spec from :attr:`ParsedJob.raw` (as stored in ``job.submitted``)."""
        return cls.model_validate_json(json.dumps(raw))


@dataclass(frozen=True)
class ParsedJob:
    """An accepted job file: the spec, the file's sha256, and the spec as JSON-ready data.

    ``raw`` carries every default filled in and the data paths resolved, so replaying a
    ``job.submitted`` event gives the same job even after defaults change in a later version.
    """

    spec: JobSpec
    sha256: str
    raw: dict[str, Any]
    #: The data paths as the file writes them ("data.transactions" -> "data/tx.csv").
    data_as_written: dict[str, str] = dataclass_field(default_factory=dict)

    @property
    def job_id(self) -> JobId:
        return job_id(self.spec, self.sha256)


def job_id(spec: JobSpec, sha256: str) -> JobId:
    """``<name>-<first 8 hex digits of the file's sha256>``: a resubmitted file keeps its id."""
    if not _SHA256_RE.fullmatch(sha256):
        raise ValueError(f"not a lower-case hex sha256: {sha256!r}")
    return JobId(f"{spec.name}-{sha256[:8]}")


# ---- reading --------------------------------------------------------------------------


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
    if stat.S_ISLNK(mode):
        what = "a symbolic link; put the file itself in the inbox (links are not followed)"
    elif stat.S_ISDIR(mode):
        what = "a directory"
    elif stat.S_ISFIFO(mode):
        what = "a FIFO"
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        what = "a device"
    elif stat.S_ISSOCK(mode):
        what = "a socket"
    else:
        what = "not a regular file"
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
