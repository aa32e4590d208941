"""The ``backend`` fixture: each contract test runs over the file log and its in-memory twin."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .logkit import FileBackend, MemoryBackend


@pytest.fixture(params=[FileBackend, MemoryBackend], ids=["file", "memory"])
def backend(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[FileBackend | MemoryBackend]:
    b = request.param(tmp_path)
    yield b
    b.close()
