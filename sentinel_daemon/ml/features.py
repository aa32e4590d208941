"""Feature engineering, versioned as a whole by :data:`FEATURE_VERSION`.

Every feature of a row is a function of that row and the rows *before* it in
(TransactionDT, TransactionID) order, never of later rows and never of labels: category
codes are numbered in order of first appearance, frequencies are running shares, and
the per-client aggregates are expanding (or trailing-window) statistics. So a feature
means the same in training as it would when scoring a live transaction, and the
time-ordered validation and test scores are honest.

The client "uid" is ``card1 + addr1 + (day - D1)``: D1 counts days since the card's
first use, so ``day - D1`` is a fixed date per client, the key insight of the winning
IEEE-CIS solutions. Change anything here that alters a value, and bump the version:
cached feature files are keyed by it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

import numpy as np
import pandas as pd

from sentinel_daemon.ml.schema import (
    AMOUNT,
    IDENTITY_COLUMNS,
    KEY,
    TARGET,
    TIME,
    TRANSACTION_COLUMNS,
)

FEATURE_VERSION: Final = "1"
FeatureSet = Literal["full", "raw"]
FEATURE_SETS: Final = ("full", "raw")

_DAY = 86_400
_LAYOUT = {
    name: kind
    for name, kind in (TRANSACTION_COLUMNS | IDENTITY_COLUMNS).items()
    if name not in (KEY, TARGET)
}
_FREQUENCY = (
    "card1", "card2", "card3", "card5", "addr1", "addr2", "P_emaildomain", "R_emaildomain",
    "DeviceInfo", "id_30", "id_31", "id_33",
)  # fmt: skip
_D_NORMALISED = ("D1", "D4", "D10", "D15")
_UID_MEANS = ("C1", "C13", "C14", "dist1")
_UID_NUNIQUE = ("P_emaildomain", "DeviceInfo", "id_31")


@dataclass(frozen=True, eq=False)
class Features:
    """Feature columns (float32, in a fixed order) and which of them are category codes."""

    columns: dict[str, np.ndarray]
    categorical: dict[str, int]  # name -> number of categories (codes 0..n-1, NaN = missing)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.columns)


def feature_names(feature_set: FeatureSet = "full") -> tuple[str, ...]:
    """The column names :func:`build` returns, in order, without computing anything."""
    empty = pd.DataFrame({TIME: np.zeros(1, np.int64), AMOUNT: np.ones(1)})
    return build(empty, feature_set).names


def build(frame: pd.DataFrame, feature_set: FeatureSet = "full") -> Features:
    """Compute the feature columns of a time-sorted frame from :func:`loading.load`."""
    if feature_set not in FEATURE_SETS:
        raise ValueError(f"unknown feature set {feature_set!r}; choose one of {FEATURE_SETS}")
    n = len(frame)
    t = frame[TIME].to_numpy().astype(np.int64)
    amount = frame[AMOUNT].to_numpy().astype(np.float64)
    out: dict[str, np.ndarray] = {}
    categorical: dict[str, int] = {}
    if feature_set == "raw":
        out[TIME] = t.astype(np.float32)
    out[AMOUNT] = amount.astype(np.float32)
    for name, kind in _LAYOUT.items():
        if kind == "num":
            out[name] = _numeric(frame, name, n)
        elif kind == "cat":
            codes = _first_seen_codes(frame, name, n)
            out[name] = np.where(codes < 0, np.nan, codes).astype(np.float32)
            categorical[name] = int(codes.max()) + 1
    if feature_set == "full":
        out |= _engineered(frame, t, amount, n)
    return Features(out, categorical)


def _numeric(frame: pd.DataFrame, name: str, n: int) -> np.ndarray:
    if name not in frame.columns:
        return np.full(n, np.nan, np.float32)
    return np.asarray(frame[name].to_numpy(), dtype=np.float32)


def _values(frame: pd.DataFrame, name: str, n: int) -> np.ndarray:
    """Float64 values of a numeric column, or NaN where absent."""
    if name not in frame.columns:
        return np.full(n, np.nan)
    return np.asarray(frame[name].to_numpy(), dtype=np.float64)


def _first_seen_codes(frame: pd.DataFrame, name: str, n: int) -> np.ndarray:
    """Integer codes numbered by first appearance in time (so later rows cannot renumber)."""
    if name not in frame.columns:
        return np.full(n, -1, np.int64)
    codes, _ = pd.factorize(frame[name], sort=False, use_na_sentinel=True)
    return np.asarray(codes, dtype=np.int64)


def _group(parts: list[np.ndarray], valid: np.ndarray) -> np.ndarray:
    """Group ids for combinations of values, numbered by first appearance; -1 where invalid."""
    keys = pd.DataFrame({i: p for i, p in enumerate(parts)})
    ids = keys.groupby(list(keys.columns), sort=False, dropna=False).ngroup().to_numpy()
    return np.where(valid, ids, -1).astype(np.int64)


def _engineered(
    frame: pd.DataFrame, t: np.ndarray, amount: np.ndarray, n: int
) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    day = t // _DAY
    out["amt_log"] = np.log1p(amount)
    out["amt_cents"] = np.round(amount - np.floor(amount), 3)
    out["hour"] = (t // 3600) % 24
    out["weekday"] = day % 7
    for name in _D_NORMALISED:
        out[f"{name}n"] = day - _values(frame, name, n)
    p_email = _first_seen_codes(frame, "P_emaildomain", n)
    out["email_match"] = _match(frame, n)

    codes = {name: _key(frame, name, n) for name in _FREQUENCY}
    for name in _FREQUENCY:
        out[f"freq_{name}"] = _running_share(_group([codes[name]], codes[name] >= 0))
    card1, addr1 = codes["card1"], codes["addr1"]
    # A missing address is its own value in these keys, as in the winning solutions.
    card_addr = _group([card1, addr1], card1 >= 0)
    card_addr_email = _group([card1, addr1, p_email], card1 >= 0)
    d1n = out["D1n"]
    uid = _group([card1, addr1, d1n], (card1 >= 0) & ~np.isnan(d1n))
    out["freq_card1_addr1"] = _running_share(card_addr)
    out["freq_card1_addr1_P_emaildomain"] = _running_share(card_addr_email)
    out["freq_uid"] = _running_share(uid)

    out["uid_count"] = _running_count(uid)
    out["uid_count_24h"] = _window_count(uid, t, _DAY)
    out["uid_secs_since_prev"] = _since_previous(uid, t)
    out["uid_days_since_first"] = _since_first(uid, t) / _DAY
    mean, std = _running_mean_std(uid, amount)
    out["uid_amt_mean"], out["uid_amt_std"] = mean, std
    out["uid_amt_ratio"] = amount / mean
    for name in _UID_MEANS:
        out[f"uid_mean_{name}"] = _running_mean_std(uid, _values(frame, name, n))[0]
    for name in _UID_NUNIQUE:
        value = p_email if name == "P_emaildomain" else _first_seen_codes(frame, name, n)
        out[f"uid_nunique_{name}"] = _running_nunique(uid, value)
    for name, group in (("card1", _group([card1], card1 >= 0)), ("card1_addr1", card_addr)):
        mean = _running_mean_std(group, amount)[0]
        out[f"{name}_amt_mean"] = mean
        out[f"{name}_amt_ratio"] = amount / mean
    return {name: np.asarray(v, dtype=np.float32) for name, v in out.items()}


def _key(frame: pd.DataFrame, name: str, n: int) -> np.ndarray:
    """Codes for grouping (by first appearance): -1 for a missing value or absent column."""
    if name not in frame.columns:
        return np.full(n, -1, np.int64)
    col = frame[name]
    if isinstance(col.dtype, pd.CategoricalDtype):
        return _first_seen_codes(frame, name, n)
    codes, _ = pd.factorize(col.to_numpy(), sort=False, use_na_sentinel=True)
    return np.asarray(codes, dtype=np.int64)


def _match(frame: pd.DataFrame, n: int) -> np.ndarray:
    if "P_emaildomain" not in frame.columns or "R_emaildomain" not in frame.columns:
        return np.full(n, np.nan)
    p = frame["P_emaildomain"].astype("object").to_numpy()
    r = frame["R_emaildomain"].astype("object").to_numpy()
    known = pd.notna(p) & pd.notna(r)
    return np.where(known, (p == r).astype(np.float64), np.nan)


def _masked(group: np.ndarray, values: np.ndarray) -> np.ndarray:
    return np.where(group >= 0, values, np.nan)


def _running_count(group: np.ndarray) -> np.ndarray:
    """Rows so far in the row's group, itself included."""
    counts = pd.Series(group).groupby(group).cumcount().to_numpy() + 1
    return _masked(group, counts)


def _running_share(group: np.ndarray) -> np.ndarray:
    """Share of all rows so far that fall in the row's group: a causal frequency encoding."""
    return _running_count(group) / np.arange(1, len(group) + 1)


def _running_mean_std(group: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Expanding mean and sample std of ``x`` over the group so far, skipping missing x."""
    present = ~np.isnan(x)
    filled = np.where(present, x, 0.0)
    frame = pd.DataFrame({"n": present.astype(np.float64), "s": filled, "q": filled * filled})
    sums = frame.groupby(group).cumsum().to_numpy()
    count, total, squares = sums[:, 0], sums[:, 1], sums[:, 2]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total / count
        var = np.maximum(squares - total * mean, 0.0) / (count - 1)
    mean = np.where(count > 0, mean, np.nan)
    std = np.where(count > 1, np.sqrt(var), np.nan)
    return _masked(group, mean), _masked(group, std)


def _since_previous(group: np.ndarray, t: np.ndarray) -> np.ndarray:
    gap = pd.Series(t.astype(np.float64)).groupby(group).diff().to_numpy()
    return _masked(group, gap)


def _since_first(group: np.ndarray, t: np.ndarray) -> np.ndarray:
    first = pd.Series(t.astype(np.float64)).groupby(group).cummin().to_numpy()
    return _masked(group, t - first)


def _window_count(group: np.ndarray, t: np.ndarray, window: int) -> np.ndarray:
    """Rows of the group in the trailing ``window`` seconds up to and including this row."""
    perm = np.argsort(group, kind="stable")  # stable: time order survives inside a group
    g, s = group[perm], t[perm] - t.min()
    span = int(s.max()) + window + 1
    key = (g - g.min()) * span + s
    position = np.arange(len(key))
    first = np.searchsorted(key, key - window, side="right")
    out = np.empty(len(key), np.float64)
    out[perm] = position - first + 1
    return _masked(group, out)


def _running_nunique(group: np.ndarray, value: np.ndarray) -> np.ndarray:
    """Distinct non-missing values seen in the group so far."""
    pairs = pd.DataFrame({"g": group, "v": value})
    new = (~pairs.duplicated() & (value >= 0)).astype(np.int64)
    return _masked(group, pd.Series(new).groupby(group).cumsum().to_numpy())
