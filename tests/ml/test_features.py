from __future__ import annotations

import ctypes
import errno
import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from sentinel_daemon import ml
from sentinel_daemon.ml import cache, features
from sentinel_daemon.ml.loading import load
from sentinel_daemon.ml.splits import Split

from .helpers import Synthetic, minimal_transactions


def parts_equal(a: ml.Prepared, b: ml.Prepared) -> bool:
    return all(np.array_equal(a.parts[k], b.parts[k], equal_nan=True) for k in a.parts) and (
        np.array_equal(a.y, b.y) and a.feature_names == b.feature_names
    )


def test_second_prepare_comes_from_the_cache_with_identical_features(
    synthetic: Synthetic, cache_dir: Path, prepared: ml.Prepared, tmp_path: Path
) -> None:
    again = ml.prepare(
        synthetic.transactions, synthetic.identity, cache_dir, test_fraction=0.2, valid_fraction=0.2
    )
    fresh = ml.prepare(
        synthetic.transactions, synthetic.identity, tmp_path, test_fraction=0.2, valid_fraction=0.2
    )
    assert again.from_cache and not fresh.from_cache
    assert parts_equal(prepared, again) and parts_equal(prepared, fresh)
    assert again.data_hash == fresh.data_hash and again.cache_path.name == fresh.cache_path.name
    assert again.categorical == fresh.categorical and again.notes == fresh.notes


def test_features_equal_a_direct_build_without_any_cache(
    synthetic: Synthetic, prepared: ml.Prepared
) -> None:
    built = features.build(load(synthetic.transactions, synthetic.identity).frame)
    direct = np.column_stack([built.columns[n] for n in prepared.feature_names])
    cached = np.vstack([prepared.X_train, prepared.X_valid, prepared.X_test])
    assert np.array_equal(direct, cached, equal_nan=True)


def test_a_damaged_cache_file_is_rebuilt(synthetic: Synthetic, tmp_path: Path) -> None:
    first = ml.prepare(
        synthetic.transactions, synthetic.identity, tmp_path, test_fraction=0.2, valid_fraction=0.2
    )
    first.cache_path.write_bytes(first.cache_path.read_bytes()[:5000])
    second = ml.prepare(
        synthetic.transactions, synthetic.identity, tmp_path, test_fraction=0.2, valid_fraction=0.2
    )
    assert not second.from_cache and parts_equal(first, second)
    third = ml.prepare(
        synthetic.transactions, synthetic.identity, tmp_path, test_fraction=0.2, valid_fraction=0.2
    )
    assert third.from_cache


def test_a_cache_of_many_row_groups_and_column_blocks_reads_back_exactly(
    synthetic: Synthetic, prepared: ml.Prepared, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Row groups and column blocks that do not line up with the splits or each other.

    The reader decodes one block ahead in a thread and copies each block into the split
    arrays at the rows it covers; every feature must land where a direct build puts it.
    """
    monkeypatch.setattr(cache, "_ROW_GROUP", 317)  # split boundaries fall inside groups
    monkeypatch.setattr(cache, "_COLUMN_BLOCK", 29)  # the last block of a group is short
    first = ml.prepare(
        synthetic.transactions, synthetic.identity, tmp_path, test_fraction=0.2, valid_fraction=0.2
    )
    groups = pq.ParquetFile(first.cache_path).num_row_groups
    assert groups == -(-len(first.y) // 317) and len(first.feature_names) % 29 != 0
    again = ml.prepare(
        synthetic.transactions, synthetic.identity, tmp_path, test_fraction=0.2, valid_fraction=0.2
    )
    assert again.from_cache and parts_equal(prepared, again) and parts_equal(first, again)


def test_changed_input_bytes_change_the_cache_key(tmp_path: Path) -> None:
    path = tmp_path / "tx.csv"
    minimal_transactions().to_csv(path, index=False)
    a = ml.prepare(path, None, tmp_path / "c", test_fraction=0.25, valid_fraction=0.25)
    frame = minimal_transactions()
    frame.loc[3, "TransactionAmt"] = 99.0
    frame.to_csv(path, index=False)
    b = ml.prepare(path, None, tmp_path / "c", test_fraction=0.25, valid_fraction=0.25)
    assert a.data_hash != b.data_hash and a.cache_path != b.cache_path and not b.from_cache


def test_cache_holds_no_pickle(prepared: ml.Prepared) -> None:
    data = prepared.cache_path.read_bytes()
    assert data[:4] == b"PAR1" and data[-4:] == b"PAR1"
    assert b"pandas" not in data  # no pandas metadata, hence nothing pickled in it either


def test_aggregates_ignore_future_rows(synthetic: Synthetic, tmp_path: Path) -> None:
    tx = pd.read_csv(synthetic.transactions, engine="pyarrow")
    ident = pd.read_csv(synthetic.identity, engine="pyarrow")
    cutoff = tx["TransactionDT"].quantile(0.6)
    future = tx["TransactionDT"] > cutoff
    rng = np.random.default_rng(0)
    tx.loc[future, "TransactionAmt"] = tx.loc[future, "TransactionAmt"] * 3 + 0.07
    tx.loc[future, "card1"] = rng.permutation(tx.loc[future, "card1"].to_numpy())
    tx.loc[future, "addr1"] = 999.0
    tx.loc[future, "D1"] = 0.0
    tx.loc[future, "C1"] = 50.0
    tx.loc[future, "P_emaildomain"] = "brand-new.example"
    tx.loc[future, "TransactionDT"] += 3600  # still after the cutoff
    future_ids = set(tx.loc[future, "TransactionID"])
    ident.loc[ident["TransactionID"].isin(future_ids), "DeviceInfo"] = "NewPhone Build/X1"
    folder = tmp_path / "perturbed"
    folder.mkdir()
    tx.to_csv(folder / "tx.csv", index=False)
    ident.to_csv(folder / "id.csv", index=False)

    before = load(synthetic.transactions, synthetic.identity).frame
    after = load(folder / "tx.csv", folder / "id.csv").frame
    past = before["TransactionDT"].to_numpy() <= cutoff
    assert past.sum() == (after["TransactionDT"].to_numpy() <= cutoff).sum() > 1000
    a, b = features.build(before), features.build(after)
    changed_later = []
    for name in a.names:
        assert np.array_equal(a.columns[name][past], b.columns[name][past], equal_nan=True), name
        if not np.array_equal(a.columns[name][~past], b.columns[name][~past], equal_nan=True):
            changed_later.append(name)
    # The perturbation did reach the future rows, so the check above can fail.
    assert {"uid_count", "uid_amt_mean", "freq_card1", "uid_mean_C1"} <= set(changed_later)


def test_features_never_read_the_target(synthetic: Synthetic) -> None:
    frame = load(synthetic.transactions, synthetic.identity).frame
    flipped = frame.assign(isFraud=1 - frame["isFraud"])
    a, b = features.build(frame), features.build(flipped)
    assert all(np.array_equal(a.columns[n], b.columns[n], equal_nan=True) for n in a.names)


def test_client_aggregates_follow_each_clients_history(tmp_path: Path) -> None:
    frame = minimal_transactions(6)
    frame["card1"] = [1000, 2000, 1000, 1000, 2000, 1000]
    frame["D1"] = [0.0, 0.0, 0.0, 0.0, 0.0, 5.0]  # the last row is another client (day - D1)
    frame["TransactionAmt"] = [10.0, 7.0, 20.0, 30.0, 7.0, 99.0]
    frame["TransactionDT"] = 86_400 + np.array([0, 100, 200, 400, 500, 600])
    frame.to_csv(tmp_path / "tx.csv", index=False)
    built = features.build(load(tmp_path / "tx.csv").frame).columns
    np.testing.assert_array_equal(built["uid_count"], [1, 1, 2, 3, 2, 1])
    np.testing.assert_allclose(built["uid_amt_mean"], [10, 7, 15, 20, 7, 99])
    np.testing.assert_allclose(built["uid_amt_std"], [np.nan, np.nan, 7.0710678, 10, 0, np.nan])
    np.testing.assert_array_equal(
        built["uid_secs_since_prev"], [np.nan, np.nan, 200, 200, 400, np.nan]
    )
    np.testing.assert_allclose(built["freq_card1"], [1, 1 / 2, 2 / 3, 3 / 4, 2 / 5, 4 / 6])
    np.testing.assert_array_equal(built["card1"], [1000, 2000, 1000, 1000, 2000, 1000])
    np.testing.assert_array_equal(built["ProductCD"], [0, 1, 0, 1, 0, 1])  # first-seen codes
    np.testing.assert_allclose(built["amt_cents"], [0, 0, 0, 0, 0, 0])


def test_absent_optional_columns_become_missing_features_with_a_note(tmp_path: Path) -> None:
    path = tmp_path / "tx.csv"
    minimal_transactions().to_csv(path, index=False)
    prepared = ml.prepare(path, None, tmp_path / "c", test_fraction=0.25, valid_fraction=0.25)
    assert prepared.feature_names == features.feature_names("full")
    v1 = prepared.feature_names.index("V1")
    assert np.isnan(prepared.X_train[:, v1]).all()
    assert any("absent" in note for note in prepared.notes)


def test_raw_set_is_the_raw_columns_only() -> None:
    raw, full = set(features.feature_names("raw")), set(features.feature_names("full"))
    assert "uid_count" not in raw and "TransactionDT" in raw
    assert raw - {"TransactionDT"} < full and "TransactionDT" not in full
    with pytest.raises(ValueError):
        features.feature_names("fancy")  # type: ignore[arg-type]


def _fake_madvise(result: int, code: int, calls: list[tuple[int, int, int]]) -> object:
    def madvise(address: int, length: int, advice: int) -> int:
        calls.append((address, length, advice))
        ctypes.set_errno(code)
        return result

    return madvise


def test_the_reader_maps_in_every_column_of_every_split_before_copying_it(
    synthetic: Synthetic, prepared: ml.Prepared, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The mapping thread populates each block's columns, in every split, in column order."""
    real = cache._libc_madvise()
    if real is None:
        pytest.skip("no libc madvise on this platform")
    calls: list[tuple[int, int, int]] = []

    def recording(address: int, length: int, advice: int) -> int:
        calls.append((address, length, advice))
        return real(address, length, advice)

    monkeypatch.setattr(cache, "_libc_madvise", lambda: recording)
    monkeypatch.setattr(cache, "_COLUMN_BLOCK", 29)
    again = ml.prepare(
        synthetic.transactions, synthetic.identity, tmp_path, test_fraction=0.2, valid_fraction=0.2
    )
    assert not again.from_cache
    again = ml.prepare(
        synthetic.transactions, synthetic.identity, tmp_path, test_fraction=0.2, valid_fraction=0.2
    )
    assert again.from_cache and parts_equal(prepared, again)
    assert {advice for _, _, advice in calls} == {cache._MADV_POPULATE_WRITE}
    for part in again.parts.values():
        begin, end = part.ctypes.data, part.ctypes.data + part.nbytes
        ranges = sorted((a, a + n) for a, n, _ in calls if begin <= a < end)
        assert ranges[0][0] <= begin and ranges[-1][1] == end
        assert all(lo <= prev_hi for (_, prev_hi), (lo, _) in itertools.pairwise(ranges))
        assert len(ranges) == -(-len(again.feature_names) // 29)


def test_a_kernel_that_cannot_populate_still_reads_the_cache_exactly(
    synthetic: Synthetic, prepared: ml.Prepared, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before Linux 5.14 populating answers EINVAL: tried once, then the copy faults pages in."""
    ml.prepare(
        synthetic.transactions, synthetic.identity, tmp_path, test_fraction=0.2, valid_fraction=0.2
    )
    calls: list[tuple[int, int, int]] = []
    monkeypatch.setattr(cache, "_libc_madvise", lambda: _fake_madvise(-1, errno.EINVAL, calls))
    again = ml.prepare(
        synthetic.transactions, synthetic.identity, tmp_path, test_fraction=0.2, valid_fraction=0.2
    )
    assert again.from_cache and parts_equal(prepared, again) and len(calls) == 1


def test_a_matrix_that_cannot_be_populated_is_out_of_memory_not_a_cache_miss(
    synthetic: Synthetic, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ml.prepare(
        synthetic.transactions, synthetic.identity, tmp_path, test_fraction=0.2, valid_fraction=0.2
    )
    cached = list(tmp_path.glob("*.parquet"))
    monkeypatch.setattr(cache, "_libc_madvise", lambda: _fake_madvise(-1, errno.ENOMEM, []))
    with pytest.raises(MemoryError, match=r"cannot map in [\d,]+ bytes of a feature matrix"):
        ml.prepare(
            synthetic.transactions,
            synthetic.identity,
            tmp_path,
            test_fraction=0.2,
            valid_fraction=0.2,
        )
    assert list(tmp_path.glob("*.parquet")) == cached  # not taken for damage and rebuilt


def test_a_matrix_that_cannot_be_mapped_is_out_of_memory_not_a_cache_miss(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(*_: object, **__: object) -> None:
        raise OSError(12, "Cannot allocate memory")

    monkeypatch.setattr(cache.mmap, "mmap", refuse)
    split = Split(train=slice(0, 6), valid=slice(6, 8), test=slice(8, 10))
    with pytest.raises(MemoryError, match="cannot map 48 bytes"):
        cache.allocate(split, 2)
