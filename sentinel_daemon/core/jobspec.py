"""The job file's schema (:class:`JobSpec`), pure: no file is read here.

:mod:`sentinel_daemon.jobfile` reads a job file (safely: untrusted input) and validates it
against this schema in strict mode, so ``"50"`` is not silently taken for ``50`` nor ``yes``
for ``true``. Search-space entries are checked by :mod:`sentinel_daemon.core.space`, the same
code the job actor and the trainer resolve the space with (integer or float, log scale,
bounds), so an accepted job is never refused when its studies are built. Every problem is a
:class:`JobSpecError` naming the file, the field and what to do about it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeAlias

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from sentinel_daemon.core.ids import JobId
from sentinel_daemon.core.space import SpaceError, override
from sentinel_daemon.errors import SentinelError

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
