from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from sentinel_daemon.ml import synth
from sentinel_daemon.ml.schema import IDENTITY_COLUMNS, TRANSACTION_COLUMNS

from .helpers import Synthetic


@pytest.fixture(scope="module")
def frames(synthetic: Synthetic) -> tuple[pd.DataFrame, pd.DataFrame]:
    return (
        pd.read_csv(synthetic.transactions, engine="pyarrow"),
        pd.read_csv(synthetic.identity, engine="pyarrow"),
    )


def test_generated_files_carry_the_ieee_cis_columns_in_order(frames) -> None:
    tx, ident = frames
    assert list(tx.columns) == list(TRANSACTION_COLUMNS)
    assert list(ident.columns) == list(IDENTITY_COLUMNS)
    assert len(tx.columns) == 394 and len(ident.columns) == 41


def test_generated_values_have_the_real_files_types(frames) -> None:
    tx, ident = frames
    assert tx["TransactionID"].is_unique and tx["TransactionDT"].is_monotonic_increasing
    assert set(tx["isFraud"].unique()) == {0, 1}
    assert 0.015 < tx["isFraud"].mean() < 0.07
    assert set(tx["ProductCD"].unique()) <= {"W", "C", "R", "H", "S"}
    for m in ("M1", "M2", "M3", "M5", "M6", "M7", "M8", "M9"):
        assert set(tx[m].dropna().unique()) <= {"T", "F"}
    assert set(tx["M4"].dropna().unique()) <= {"M0", "M1", "M2"}
    assert set(ident["id_12"].dropna().unique()) <= {"Found", "NotFound"}
    assert set(ident["id_15"].dropna().unique()) <= {"Found", "New", "Unknown"}
    assert ident["id_33"].dropna().map(lambda s: bool(re.fullmatch(r"\d+x\d+", s))).all()
    assert ident["id_34"].dropna().str.startswith("match_status:").all()
    assert ident["DeviceInfo"].dropna().str.contains(" ").any()  # free text, e.g. "... Build/..."
    assert pd.api.types.is_float_dtype(ident["id_13"]) and pd.api.types.is_float_dtype(tx["V300"])
    assert set(ident["TransactionID"]) <= set(tx["TransactionID"])


def test_generated_data_is_missing_where_the_real_data_is(frames) -> None:
    tx, ident = frames
    assert tx.loc[tx["ProductCD"] == "C", "addr1"].isna().all()  # product C has no address
    assert 0.5 < tx["dist1"].isna().mean() < 0.8
    assert tx["V1"].isna().mean() > 0.3 and tx["V300"].isna().mean() < 0.01
    assert 0.1 < len(ident) / len(tx) < 0.6


def test_the_same_seed_gives_the_same_bytes(tmp_path: Path) -> None:
    a = synth.generate(300, tmp_path / "a", seed=3)
    b = synth.generate(300, tmp_path / "b", seed=3)
    c = synth.generate(300, tmp_path / "c", seed=4)
    assert a[0].read_bytes() == b[0].read_bytes() and a[1].read_bytes() == b[1].read_bytes()
    assert a[0].read_bytes() != c[0].read_bytes()


@pytest.mark.parametrize(("rows", "rate"), [(0, 0.035), (10, 0.0), (10, 1.0)])
def test_generate_rejects_impossible_requests(tmp_path: Path, rows: int, rate: float) -> None:
    with pytest.raises(ValueError):
        synth.generate(rows, tmp_path, fraud_rate=rate)
