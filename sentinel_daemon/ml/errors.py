"""Errors raised by the machine-learning library.

Each carries its facts as attributes so that the daemon can put them in events, and a
message that names the file or parameter and what to do next. :class:`SpaceError` is the
core's (:mod:`sentinel_daemon.core.space`): the job check raises it too.
"""

from __future__ import annotations

from pathlib import Path

from sentinel_daemon.core.space import SpaceError
from sentinel_daemon.errors import SentinelError

__all__ = [
    "ArtifactError",
    "DataError",
    "MLError",
    "MetricsError",
    "SpaceError",
    "SplitError",
]


class MLError(SentinelError):
    """Base of every error raised on purpose by ``sentinel_daemon.ml``."""


class DataError(MLError):
    """An input data file is missing, unreadable, empty or breaks the layout rules.

    ``line`` is the 1-based line of a CSV file the problem is on, when known.
    """

    def __init__(
        self, path: Path, column: str | None, reason: str, line: int | None = None
    ) -> None:
        self.path = Path(path)
        self.column = column
        self.reason = reason
        self.line = line
        where = str(self.path) + (f" line {line}" if line else "")
        where += f": column {column!r}" if column else ""
        super().__init__(
            f"{where}: {reason}. Fix the data file (or point the job at another one) "
            f"and submit the job again."
        )


class SplitError(MLError):
    """The requested time-ordered split cannot be made from this data."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(
            f"cannot split the data by time: {reason}. Adjust validation.test_fraction / "
            f"validation.valid_fraction in the job file, or use more data."
        )


class MetricsError(MLError):
    """Metrics are undefined for these labels (for example a single class)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"cannot compute metrics: {reason}")


class ArtifactError(MLError):
    """A model file is corrupt, was replaced, or cannot be parsed."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(
            f"model artifact {self.path}: {reason}. Do not use this file: restore it from "
            f"backup or retrain the trial."
        )
