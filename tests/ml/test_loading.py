from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sentinel_daemon.ml.errors import DataError
from sentinel_daemon.ml.loading import load

from .helpers import Synthetic, minimal_transactions


def write_csv(frame: pd.DataFrame, path: Path) -> Path:
    frame.to_csv(path, index=False)
    return path


def test_missing_required_column_names_file_and_column(tmp_path: Path) -> None:
    path = write_csv(minimal_transactions().drop(columns=["card1"]), tmp_path / "tx.csv")
    with pytest.raises(DataError) as caught:
        load(path)
    assert caught.value.path == path and caught.value.column == "card1"
    assert "tx.csv" in str(caught.value) and "card1" in str(caught.value)


def test_mistyped_numeric_value_names_file_column_and_value(tmp_path: Path) -> None:
    frame = minimal_transactions().astype({"card1": object})
    frame.loc[7, "card1"] = "abc"
    path = write_csv(frame, tmp_path / "tx.csv")
    with pytest.raises(DataError) as caught:
        load(path)
    assert caught.value.column == "card1" and "abc" in caught.value.reason


def test_fractional_transaction_id_is_a_mistyped_column(tmp_path: Path) -> None:
    frame = minimal_transactions().astype({"TransactionID": float})
    frame.loc[3, "TransactionID"] = 1.5
    with pytest.raises(DataError) as caught:
        load(write_csv(frame, tmp_path / "tx.csv"))
    assert caught.value.column == "TransactionID"


@pytest.mark.parametrize("content", [b"", b"\n", b"TransactionID,isFraud\n"])
def test_empty_or_headerless_file_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "tx.csv"
    path.write_bytes(content)
    with pytest.raises(DataError) as caught:
        load(path)
    assert caught.value.path == path


def test_header_without_rows_is_refused(tmp_path: Path) -> None:
    path = write_csv(minimal_transactions().iloc[:0], tmp_path / "tx.csv")
    with pytest.raises(DataError, match="no data rows"):
        load(path)


@pytest.mark.parametrize("bad", [2, -1, 0.5])
def test_target_other_than_0_or_1_is_refused(tmp_path: Path, bad: float) -> None:
    frame = minimal_transactions().astype({"isFraud": float})
    frame.loc[4, "isFraud"] = bad
    with pytest.raises(DataError) as caught:
        load(write_csv(frame, tmp_path / "tx.csv"))
    assert caught.value.column == "isFraud" and "0 or 1" in caught.value.reason


def test_missing_or_textual_target_is_refused(tmp_path: Path) -> None:
    frame = minimal_transactions().astype({"isFraud": object})
    frame.loc[1, "isFraud"] = None
    with pytest.raises(DataError, match="no value"):
        load(write_csv(frame, tmp_path / "a.csv"))
    frame.loc[1, "isFraud"] = "yes"
    with pytest.raises(DataError) as caught:
        load(write_csv(frame, tmp_path / "b.csv"))
    assert caught.value.column == "isFraud"


def test_duplicate_transaction_ids_are_refused(tmp_path: Path) -> None:
    frame = minimal_transactions()
    frame.loc[5, "TransactionID"] = frame.loc[6, "TransactionID"]
    with pytest.raises(DataError) as caught:
        load(write_csv(frame, tmp_path / "tx.csv"))
    assert caught.value.column == "TransactionID" and "more than once" in caught.value.reason


def test_duplicate_ids_in_the_identity_file_are_refused(tmp_path: Path) -> None:
    tx = write_csv(minimal_transactions(), tmp_path / "tx.csv")
    ident = write_csv(
        pd.DataFrame({"TransactionID": [3_000_001, 3_000_001], "DeviceType": ["mobile"] * 2}),
        tmp_path / "id.csv",
    )
    with pytest.raises(DataError) as caught:
        load(tx, ident)
    assert caught.value.path == ident and caught.value.column == "TransactionID"


def test_missing_file_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        load(tmp_path / "nope.csv")


def test_identity_is_optional_and_left_joined(tmp_path: Path) -> None:
    tx = write_csv(minimal_transactions(), tmp_path / "tx.csv")
    alone = load(tx).frame
    assert "DeviceType" not in alone.columns and len(alone) == 40
    ident = write_csv(
        pd.DataFrame({"TransactionID": [3_000_002, 3_999_999], "DeviceType": ["mobile", "x"]}),
        tmp_path / "id.csv",
    )
    joined = load(tx, ident)
    device = joined.frame.set_index("TransactionID")["DeviceType"]
    assert device[3_000_002] == "mobile" and device.isna().sum() == 39
    assert any("match no transaction" in note for note in joined.notes)


def test_hyphenated_identity_names_of_the_test_file_are_accepted(tmp_path: Path) -> None:
    tx = write_csv(minimal_transactions(), tmp_path / "tx.csv")
    ident = write_csv(
        pd.DataFrame({"TransactionID": [3_000_002], "id-01": [-5.0]}), tmp_path / "i.csv"
    )
    assert load(tx, ident).frame["id_01"].notna().sum() == 1


def test_frame_is_time_sorted_whatever_the_file_order(tmp_path: Path) -> None:
    frame = minimal_transactions().sample(frac=1.0, random_state=1)
    loaded = load(write_csv(frame, tmp_path / "tx.csv")).frame
    assert loaded["TransactionDT"].is_monotonic_increasing
    assert loaded["TransactionID"].tolist() == sorted(frame["TransactionID"])


def test_loaded_columns_are_downcast_to_compact_types(synthetic: Synthetic) -> None:
    frame = load(synthetic.transactions, synthetic.identity).frame
    assert frame["TransactionAmt"].dtype == np.float64  # the only float64: cents matter
    wide = [c for c in frame.columns if frame[c].dtype == np.float64 and c != "TransactionAmt"]
    assert wide == []
    assert frame["card1"].dtype == np.int16 and frame["isFraud"].dtype == np.int8
    assert isinstance(frame["DeviceInfo"].dtype, pd.CategoricalDtype)
    assert frame["V300"].dtype in (np.float32, np.int8, np.int16)


def test_parquet_input_loads_like_csv(tmp_path: Path, synthetic: Synthetic) -> None:
    raw = pd.read_csv(synthetic.transactions, engine="pyarrow")
    parquet = tmp_path / "tx.parquet"
    raw.to_parquet(parquet)
    from_csv = load(synthetic.transactions).frame
    from_parquet = load(parquet).frame
    pd.testing.assert_frame_equal(from_csv, from_parquet, check_categorical=False)


def test_parquet_with_a_textual_numeric_column_is_refused(tmp_path: Path) -> None:
    frame = minimal_transactions().astype({"addr1": str})
    frame.loc[2, "addr1"] = "north"
    path = tmp_path / "tx.parquet"
    pq.write_table(pa.Table.from_pandas(frame), path)
    with pytest.raises(DataError) as caught:
        load(path)
    assert caught.value.column == "addr1"


def test_unreadable_parquet_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "tx.parquet"
    path.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(DataError, match="Parquet"):
        load(path)


def test_a_remembered_digest_is_reused_only_while_the_file_is_unchanged(tmp_path: Path) -> None:
    import os

    from sentinel_daemon.ml import cache

    data = tmp_path / "t.csv"
    data.write_bytes(b"a,b\n1,2\n")
    memo = tmp_path / "cache"
    assert cache.remembered_sha256(data, memo) == cache.file_sha256(data)
    assert not (memo / "digests").exists()  # just written: too recent to be trusted
    first = cache.remembered_sha256(data, memo, racy_seconds=0)
    (entry,) = (memo / "digests").iterdir()
    entry.write_bytes(entry.read_bytes().replace(first.encode(), b"f" * 64))
    assert cache.remembered_sha256(data, memo) == "f" * 64  # the memo is what answers
    stat = data.stat()
    data.write_bytes(b"a,b\n1,3\n4,5\n")  # the file changed
    os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # even with the old mtime back
    assert cache.remembered_sha256(data, memo) == cache.file_sha256(data) != first
