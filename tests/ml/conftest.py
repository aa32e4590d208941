"""Shared fixtures: one small synthetic data set, generated and prepared once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from sentinel_daemon import ml
from sentinel_daemon.ml import synth

from .helpers import ROWS, Synthetic


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Synthetic:
    folder = tmp_path_factory.mktemp("synthetic")
    tx, ident = synth.generate(ROWS, folder, seed=7)
    return Synthetic(folder, tx, ident)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def prepared(synthetic: Synthetic, cache_dir: Path) -> ml.Prepared:
    return ml.prepare(
        synthetic.transactions,
        synthetic.identity,
        cache_dir,
        test_fraction=0.2,
        valid_fraction=0.2,
    )
