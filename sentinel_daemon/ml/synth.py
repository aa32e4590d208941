"""Synthetic transactions in the IEEE-CIS file layout, for demos, tests and benchmarks.

The generator simulates clients (a card, an address and an account opening day, which is
what the real data's ``card1 + addr1 + (day - D1)`` recovers) who transact repeatedly with
their own habits: amount level, hour of day, e-mail domain, device. Fraudulent clients
differ mostly in *behaviour over time*: they come in bursts, their amounts vary wildly,
they switch devices and favour risky products, hours and domains. Each transaction alone
carries only a weak signal, so features that aggregate a client's history measurably
help, as they did on the real data. Missingness follows the real files' patterns
(product C has no address, identity exists for a minority, V columns go missing in
blocks). Everything is drawn from one seeded generator, so a seed fixes the output.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from sentinel_daemon.ml.schema import IDENTITY_COLUMNS, TRANSACTION_COLUMNS

_DAYS = 182
_START_ID = 2_987_000
_FRAUD_IN_FRAUD_CLIENT = 0.92  # a fraudulent client's transactions are nearly all fraud
_FRAUD_IN_GOOD_CLIENT = 0.0015  # a stolen card now and then among the honest

_PRODUCTS = ["W", "C", "R", "H", "S"]
_P_PRODUCT = ([0.74, 0.11, 0.065, 0.065, 0.02], [0.45, 0.38, 0.05, 0.07, 0.05])
_EMAILS = [
    "gmail.com", "yahoo.com", "hotmail.com", "anonymous.com", "aol.com", "comcast.net",
    "icloud.com", "outlook.com", "msn.com", "att.net", "live.com", "sbcglobal.net",
    "verizon.net", "ymail.com", "bellsouth.net", "yahoo.com.mx", "me.com", "cox.net",
    "mail.com", "protonmail.com", "hotmail.es", "outlook.es", "live.com.mx", "aim.com",
]  # fmt: skip
_P_EMAIL_GOOD = np.array([45, 19, 8, 7, 3, 1.5, 1.3, 1, 1, 1, 1, 1, .8, .7, .6, .5, .4, .4,
                          .1, .05, .2, .1, .2, .1])  # fmt: skip
_P_EMAIL_FRAUD = np.array([40, 10, 12, 4, 1, .5, 3, 9, .5, .3, .8, .3, .2, .6, .3, 2, .5, .2,
                           4, 3, 1.5, 2, 1.5, .2])  # fmt: skip
_DEVICES = [  # (DeviceType, DeviceInfo, id_30 OS, id_31 browser, id_33 screen)
    ("desktop", "Windows", "Windows 10", "chrome 63.0", "1920x1080"),
    ("desktop", "Windows", "Windows 7", "ie 11.0 for desktop", "1366x768"),
    ("desktop", "MacOS", "Mac OS X 10_12_6", "safari generic", "2880x1800"),
    ("desktop", "Trident/7.0", "Windows 8.1", "ie 11.0 for desktop", "1600x900"),
    ("desktop", "rv:57.0", "Linux", "firefox 57.0", "1920x1080"),
    ("mobile", "iOS Device", "iOS 11.2.1", "mobile safari 11.0", "2208x1242"),
    ("mobile", "iOS Device", "iOS 10.3.3", "mobile safari generic", "1334x750"),
    ("mobile", "SM-G930V Build/NRD90M", "Android 7.0", "chrome 63.0 for android", "1920x1080"),
    ("mobile", "SM-J700M Build/MMB29K", "Android 6.0.1", "chrome 62.0 for android", "1280x720"),
    ("mobile", "Moto G (4) Build/NPJ25.93-14.7", "Android 7.0", "chrome 63.0 for android",
     "1920x1080"),
    ("mobile", "SAMSUNG SM-G892A Build/NRD90M", "Android 7.0", "samsung browser 6.2",
     "2220x1080"),
    ("mobile", "LG-H870 Build/NRD90U", "Android 7.0", "chrome 64.0 for android", "2880x1440"),
]  # fmt: skip
_P_DEVICE_GOOD = np.array([30, 12, 8, 5, 2, 20, 8, 5, 4, 2, 3, 1])
_P_DEVICE_FRAUD = np.array([15, 4, 3, 8, 6, 15, 3, 8, 10, 9, 12, 7])
# V columns go missing in blocks in the real data; (first, last, share present, client risk lift)
_V_BLOCKS = [
    (1, 11, 0.53, 0.0), (12, 34, 0.87, 0.2), (35, 52, 0.72, 0.0), (53, 74, 0.87, 0.3),
    (75, 94, 0.85, 0.0), (95, 137, 0.999, 0.1), (138, 166, 0.14, 0.4), (167, 216, 0.24, 0.6),
    (217, 278, 0.23, 0.8), (279, 321, 0.999, 0.5), (322, 339, 0.14, 0.2),
]  # fmt: skip


def generate(rows: int, out: Path, seed: int = 0, fraud_rate: float = 0.035) -> tuple[Path, Path]:
    """Write ``train_transaction.csv`` and ``train_identity.csv`` into ``out``.

    About ``fraud_rate`` of the rows are fraud (the draw is random, so not exactly).
    Returns the two paths. The same ``rows``, ``seed`` and ``fraud_rate`` give the same
    bytes.
    """
    if rows < 1:
        raise ValueError(f"rows must be at least 1, not {rows}")
    if not 0.0 < fraud_rate < 1.0:
        raise ValueError(f"fraud_rate must lie strictly between 0 and 1, not {fraud_rate}")
    rng = np.random.default_rng(seed)
    tx, ident = _simulate(rows, fraud_rate, rng)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = (out / "train_transaction.csv", out / "train_identity.csv")
    options = pacsv.WriteOptions(quoting_style="none")  # the real files quote nothing
    pacsv.write_csv(_table(tx, TRANSACTION_COLUMNS), paths[0], options)
    pacsv.write_csv(_table(ident, IDENTITY_COLUMNS), paths[1], options)
    return paths


def _table(cols: dict[str, np.ndarray], layout: dict[str, Any]) -> pa.Table:
    arrays = []
    for name, kind in layout.items():
        values = cols[name]
        if kind == "cat":
            arrays.append(pa.array(values, type=pa.string()))
        elif values.dtype.kind == "f":
            arrays.append(pa.array(values, from_pandas=True))  # NaN -> empty field
        else:
            arrays.append(pa.array(values))
    return pa.Table.from_arrays(arrays, names=list(layout))


def _pick(rng: np.random.Generator, labels: list[str], p: np.ndarray, n: int) -> np.ndarray:
    out = np.array(labels, dtype=object)[rng.choice(len(labels), size=n, p=p / p.sum())]
    return out


def _mask(values: np.ndarray, missing: np.ndarray) -> np.ndarray:
    out = values.astype(object if values.dtype == object else np.float64, copy=True)
    out[missing] = None if out.dtype == object else np.nan
    return out


def _clients(rows: int, fraud_rate: float, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Transaction counts per client and each client's fraud flag."""
    fraud_rows = round(rows * fraud_rate / _FRAUD_IN_FRAUD_CLIENT)
    fraud_counts = 1 + rng.geometric(0.22, size=max(1, fraud_rows))
    fraud_counts = fraud_counts[np.cumsum(fraud_counts) <= fraud_rows]
    good_rows = rows - int(fraud_counts.sum())
    n_good = max(1, good_rows // 7)
    weights = rng.lognormal(0.0, 1.0, size=n_good)
    good_counts = rng.multinomial(good_rows, weights / weights.sum())
    counts = np.concatenate([good_counts, fraud_counts])
    is_fraud = np.concatenate([np.zeros(n_good, bool), np.ones(len(fraud_counts), bool)])
    keep = counts > 0
    return counts[keep], is_fraud[keep]


def _simulate(
    rows: int, fraud_rate: float, rng: np.random.Generator
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    counts, bad = _clients(rows, fraud_rate, rng)
    k = len(counts)
    who = np.repeat(np.arange(k), counts)  # client of each row
    b = bad[who]
    n = rows

    # --- the client: card, address, account age, habits -------------------------------
    n_cards = max(50, min(13_000, k // 3))
    card_pop = rng.zipf(1.3, size=k) % n_cards
    card1_of = 1000 + (np.arange(n_cards) * 7919) % 17_000
    card2_of = np.where(rng.random(n_cards) < 0.02, np.nan, rng.integers(100, 600, n_cards))
    card3_of = np.where(rng.random(n_cards) < 0.88, 150, rng.choice([185, 144, 117, 143], n_cards))
    card4_of = _pick(rng, ["visa", "mastercard", "american express", "discover"],
                     np.array([65, 32, 1.5, 1.5]), n_cards)  # fmt: skip
    card5_of = rng.choice([226, 224, 166, 102, 117, 138, 195, 137, 126, 219], n_cards)
    card6_of = _pick(rng, ["debit", "credit", "debit or credit", "charge card"],
                     np.array([74.5, 25.3, 0.1, 0.1]), n_cards)  # fmt: skip
    product_c = np.where(
        bad, rng.choice(5, size=k, p=_P_PRODUCT[1]), rng.choice(5, size=k, p=_P_PRODUCT[0])
    )
    addr1_c = 100 + (rng.zipf(1.5, size=k) * 37) % 440
    no_addr = (product_c == 1) | (rng.random(k) < 0.03)
    addr2_c = np.where(rng.random(k) < 0.99, 87, rng.choice([60, 96, 32, 65], size=k))
    # Each client is active in a window; honest ones for weeks or months, fraud in a burst.
    begin = np.where(bad, rng.uniform(0, _DAYS, k), rng.uniform(-_DAYS / 2, _DAYS, k))
    length = np.where(bad, rng.exponential(1.2, k), rng.uniform(3, _DAYS, k))
    first_day = np.clip(begin, 0, _DAYS - 1e-3)
    span = np.clip(begin + length, 0, _DAYS - 1e-3) - first_day
    new_account = rng.random(k) < np.where(bad, 0.4, 0.25)
    age = np.where(new_account, rng.uniform(0, 5, k), rng.uniform(0, 640, k))
    opened = np.floor(first_day - age)  # D1 = day - opened, so day - D1 names the client
    night = bad & (rng.random(k) < 0.4)
    hour_c = np.where(night, rng.normal(7, 4, k), rng.normal(19, 3, k)) % 24
    amt_c = np.where(bad, rng.lognormal(np.log(110), 1.0, k), rng.lognormal(np.log(55), 0.8, k))
    amt_sd = np.where(bad, rng.uniform(0.6, 1.2, k), rng.uniform(0.05, 0.35, k))
    odd_cents = rng.random(k) < np.where(bad, 0.45, 0.08)
    email_c = np.where(bad, rng.choice(24, size=k, p=_P_EMAIL_FRAUD / _P_EMAIL_FRAUD.sum()),
                       rng.choice(24, size=k, p=_P_EMAIL_GOOD / _P_EMAIL_GOOD.sum()))  # fmt: skip
    email_missing = rng.random(k) < 0.15
    has_id_c = rng.random(k) < np.where(bad, 0.55, 0.2) + 0.4 * (product_c != 0)
    device_c = np.where(
        bad,
        rng.choice(12, size=k, p=_P_DEVICE_FRAUD / _P_DEVICE_FRAUD.sum()),
        rng.choice(12, size=k, p=_P_DEVICE_GOOD / _P_DEVICE_GOOD.sum()),
    )
    dist_c = np.where(bad, rng.lognormal(2.2, 1.4, k), rng.lognormal(1.5, 1.2, k))
    c_level = np.where(bad, rng.gamma(1.5, 0.7, k), rng.gamma(1.0, 0.6, k))

    # --- each transaction: when, how much, from where -------------------------------
    t_day = first_day[who] + rng.uniform(0, 1, n) * span[who]
    day = np.floor(t_day)
    hour = (hour_c[who] + rng.normal(0, np.where(b, 4.0, 2.0), n)) % 24
    seconds = (86_400 * (1 + day) + np.floor(hour * 3600)).astype(np.int64)
    order = np.lexsort((rng.random(n), seconds))  # time order, ties broken at random
    who, b, day, hour, seconds = who[order], b[order], day[order], hour[order], seconds[order]
    prev_gap = _days_since_previous(who, seconds)
    nth = _running_count(who)
    fraud = np.where(
        b, rng.random(n) < _FRAUD_IN_FRAUD_CLIENT, rng.random(n) < _FRAUD_IN_GOOD_CLIENT
    )

    product = product_c[who]
    amount = amt_c[who] * rng.lognormal(0.0, amt_sd[who], n)
    amount = np.where(product == 3, np.round(amount / 25) * 25 + 25, amount)  # H: round sums
    cents = np.where(odd_cents[who] | (product == 1), np.round(amount, 3), np.round(amount, 0))
    amount = np.where(rng.random(n) < 0.15, np.floor(amount) + 0.95, cents)
    amount = np.maximum(np.round(amount, 3), 0.25)

    tx: dict[str, np.ndarray] = {
        "TransactionID": np.arange(_START_ID, _START_ID + n, dtype=np.int64),
        "isFraud": fraud.astype(np.int64),
        "TransactionDT": seconds,
        "TransactionAmt": amount,
        "ProductCD": np.array(_PRODUCTS, dtype=object)[product],
    }
    card = card_pop[who]
    tx["card1"] = card1_of[card].astype(np.int64)
    tx["card2"] = card2_of[card]
    tx["card3"] = card3_of[card].astype(np.float64)
    tx["card4"] = _mask(card4_of[card], rng.random(n) < 0.003)
    tx["card5"] = _mask(card5_of[card].astype(np.float64), rng.random(n) < 0.007)
    tx["card6"] = _mask(card6_of[card], rng.random(n) < 0.003)
    tx["addr1"] = _mask(addr1_c[who].astype(np.float64), no_addr[who])
    tx["addr2"] = _mask(addr2_c[who].astype(np.float64), no_addr[who])
    jitter = rng.lognormal(0, np.where(b, 0.8, 0.1), n)
    tx["dist1"] = _mask(np.round(dist_c[who] * jitter), (product == 1) | (rng.random(n) < 0.55))
    tx["dist2"] = _mask(np.round(dist_c[who] * jitter * 3), rng.random(n) < 0.93)
    emails = np.array(_EMAILS, dtype=object)
    p_email = _mask(emails[email_c[who]], email_missing[who])
    tx["P_emaildomain"] = p_email
    same = rng.random(n) < np.where(b, 0.4, 0.9)
    r_email = np.where(same, p_email, emails[rng.integers(0, 24, n)])
    tx["R_emaildomain"] = _mask(r_email, rng.random(n) < np.where(product == 1, 0.1, 0.85))
    tx |= _c_columns(rng, c_level[who], nth, product, b)
    tx |= _d_columns(rng, day, opened[who], prev_gap, hour, who)
    tx |= _m_columns(rng, product, b)
    has_id = has_id_c[who]
    tx |= _v_columns(rng, n, b, product, has_id, amount)

    ident = _identity(rng, tx["TransactionID"][has_id], device_c[who][has_id], b[has_id])
    return tx, ident


def _running_count(group: np.ndarray) -> np.ndarray:
    """For rows in time order: how many earlier rows share the group (0 for the first)."""
    out = np.empty(len(group), dtype=np.int64)
    perm = np.argsort(group, kind="stable")
    sorted_g = group[perm]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_g)) + 1]
    rank = np.arange(len(group)) - np.repeat(starts, np.diff(np.r_[starts, len(group)]))
    out[perm] = rank
    return out


def _days_since_previous(group: np.ndarray, seconds: np.ndarray) -> np.ndarray:
    perm = np.argsort(group, kind="stable")
    g, s = group[perm], seconds[perm].astype(np.float64)
    gap = np.r_[np.nan, np.diff(s)] / 86_400
    gap[np.r_[True, g[1:] != g[:-1]]] = np.nan
    out: np.ndarray = np.empty_like(gap)
    out[perm] = gap
    return out


def _c_columns(
    rng: np.random.Generator, level: np.ndarray, nth: np.ndarray, product: np.ndarray,
    b: np.ndarray,
) -> dict[str, np.ndarray]:  # fmt: skip
    n = len(level)
    base = 1 + rng.poisson(level)
    cols = {"C1": base, "C2": base + rng.poisson(0.3 + level / 2), "C3": rng.poisson(0.005, n)}
    is_c = product == 1
    cols["C4"] = np.where(is_c, rng.poisson(level), 0)
    cols["C5"] = np.where(is_c, 0, rng.poisson(1.5 / (1 + level), n))
    cols["C6"] = np.maximum(base - rng.poisson(0.2, n), 0)
    cols["C7"] = np.where(is_c, rng.poisson(level), 0)
    cols["C8"] = np.where(is_c, rng.poisson(level * 1.2), 0)
    cols["C9"] = np.where(is_c, 0, rng.poisson(1.0, n) + nth // 3)
    cols["C10"] = np.where(is_c, cols["C8"], 0)
    cols["C11"] = np.maximum(base - rng.poisson(0.1, n), 1)
    cols["C12"] = np.where(is_c, rng.poisson(level * 0.8), 0)
    cols["C13"] = nth + rng.poisson(6.0, n)
    cols["C14"] = np.maximum(base - rng.poisson(0.4, n), 0)
    return {name: v.astype(np.float64) for name, v in cols.items()}


def _d_columns(
    rng: np.random.Generator, day: np.ndarray, opened: np.ndarray, gap: np.ndarray,
    hour: np.ndarray, who: np.ndarray,
) -> dict[str, np.ndarray]:  # fmt: skip
    n = len(day)
    d1 = np.maximum(day - opened, 0)
    # Other "days since" anchors of the client: constant per client after day - D.
    anchors = {i: rng.uniform(0, 1, who.max() + 1)[who] for i in (4, 10, 11, 15)}
    share = {2: 0.53, 3: 0.55, 4: 0.71, 5: 0.48, 6: 0.12, 7: 0.07, 8: 0.13, 9: 0.13,
             10: 0.87, 11: 0.53, 12: 0.11, 13: 0.1, 14: 0.11, 15: 0.85}  # fmt: skip
    cols = {"D1": _mask(d1, rng.random(n) < 0.002)}
    for i in range(2, 16):
        if i in anchors:
            values = np.floor(d1 * anchors[i])
        elif i in (3, 5):
            values = np.floor(gap)
        elif i == 8:
            values = np.round(d1 + hour / 24, 4)
        elif i == 9:
            values = np.round(hour / 24, 4)
        elif i == 2:
            values = d1
        else:
            values = rng.poisson(30, n).astype(np.float64)
        cols[f"D{i}"] = _mask(values, rng.random(n) >= share[i])
    return cols


def _m_columns(
    rng: np.random.Generator, product: np.ndarray, b: np.ndarray
) -> dict[str, np.ndarray]:
    n = len(product)
    w = product == 0
    tf = np.array(["F", "T"], dtype=object)
    p_true = {1: (1.0, 1.0), 2: (0.9, 0.85), 3: (0.8, 0.7), 5: (0.45, 0.6), 6: (0.47, 0.3),
              7: (0.13, 0.2), 8: (0.36, 0.3), 9: (0.84, 0.75)}  # fmt: skip
    cols: dict[str, np.ndarray] = {}
    for i in range(1, 10):
        if i == 4:
            m4 = np.where(
                b, rng.choice(3, n, p=[0.35, 0.15, 0.5]), rng.choice(3, n, p=[0.63, 0.2, 0.17])
            )
            values = np.array(["M0", "M1", "M2"], dtype=object)[m4]
            cols["M4"] = _mask(values, (product == 0) & (rng.random(n) < 0.7))
            continue
        p = np.where(b, p_true[i][1], p_true[i][0])
        cols[f"M{i}"] = _mask(
            tf[(rng.random(n) < p).astype(int)], ~w | (rng.random(n) < 0.1 * i / 3)
        )
    return cols


def _v_columns(
    rng: np.random.Generator, n: int, b: np.ndarray, product: np.ndarray, has_id: np.ndarray,
    amount: np.ndarray,
) -> dict[str, np.ndarray]:  # fmt: skip
    cols: dict[str, np.ndarray] = {}
    for first, last, present, lift in _V_BLOCKS:
        width = last - first + 1
        identity_block = first in (138, 167, 217, 322)
        shown = has_id if identity_block else rng.random(n) < present
        if first in (1, 35):
            shown &= product == 0
        latent = rng.poisson(np.where(b, 0.6 + lift * 0.5, 0.6), n).astype(np.float32)
        weights = rng.choice([0.0, 1.0, 1.0, 2.0], width).astype(np.float32)
        noise = rng.poisson(0.15, (n, width)).astype(np.float32)
        block = latent[:, None] * weights[None, :] + noise
        if first == 95:  # V126-V137 are sums of amounts in the real data
            block[:, 31:] = np.round(block[:, 31:] * amount[:, None].astype(np.float32), 2)
        block[~shown] = np.nan
        for j in range(width):
            cols[f"V{first + j}"] = block[:, j].astype(np.float64)
    return cols


def _identity(
    rng: np.random.Generator, ids: np.ndarray, device: np.ndarray, b: np.ndarray
) -> dict[str, np.ndarray]:
    n = len(ids)
    switch = rng.random(n) < np.where(b, 0.45, 0.03)  # fraudsters change devices
    device = np.where(switch, rng.integers(0, len(_DEVICES), n), device)
    dev = np.array(_DEVICES, dtype=object)[device]
    miss = rng.random

    def pick(labels: list[str], p_good: list[float], p_bad: list[float]) -> np.ndarray:
        good = rng.choice(len(labels), n, p=p_good)
        worse = rng.choice(len(labels), n, p=p_bad)
        return np.array(labels, dtype=object)[np.where(b, worse, good)]

    num = {
        1: -5.0 * rng.poisson(np.where(b, 1.4, 2.0)),
        2: np.round(rng.lognormal(11, 1.2, n)),
        3: rng.poisson(0.05, n), 4: rng.poisson(0.05, n) * -1.0,
        5: rng.integers(-10, 10, n) * (rng.random(n) < 0.3), 6: -rng.poisson(2, n) * 1.0,
        7: rng.integers(-40, 50, n), 8: rng.integers(-100, 0, n), 9: rng.poisson(0.1, n),
        10: -rng.poisson(0.1, n) * 1.0, 11: np.where(rng.random(n) < 0.95, 100.0, 95.0),
        13: rng.choice([49.0, 52.0, 64.0, 33.0], n),
        14: rng.choice([-300.0, -360, -420, -480, 60], n),
        17: rng.choice([166.0, 225.0, 102.0], n), 18: rng.integers(10, 30, n),
        19: rng.integers(100, 672, n), 20: rng.integers(100, 662, n), 21: rng.integers(100, 855, n),
        22: rng.choice([14.0, 41.0], n), 24: rng.integers(11, 26, n), 25: rng.integers(100, 549, n),
        26: rng.integers(100, 216, n), 32: rng.choice([24.0, 32.0, 16.0], n),
    }  # fmt: skip
    missing = {1: 0, 2: .02, 3: .54, 4: .54, 5: .05, 6: .05, 7: .96, 8: .96, 9: .48, 10: .48,
               11: .02, 13: .12, 14: .45, 17: .03, 18: .69, 19: .03, 20: .03, 21: .96, 22: .96,
               24: .97, 25: .96, 26: .96, 32: .46}  # fmt: skip
    cols: dict[str, np.ndarray] = {"TransactionID": ids}
    for i, values in num.items():
        cols[f"id_{i:02d}"] = _mask(np.asarray(values, np.float64), miss(n) < missing[i])
    cols["id_12"] = pick(["NotFound", "Found"], [0.75, 0.25], [0.85, 0.15])
    cols["id_15"] = _mask(
        pick(["Found", "New", "Unknown"], [0.6, 0.3, 0.1], [0.3, 0.6, 0.1]), miss(n) < 0.02
    )
    cols["id_16"] = _mask(pick(["Found", "NotFound"], [0.6, 0.4], [0.4, 0.6]), miss(n) < 0.1)
    cols["id_23"] = _mask(pick(["IP_PROXY:TRANSPARENT", "IP_PROXY:ANONYMOUS", "IP_PROXY:HIDDEN"],
                               [.7, .2, .1], [.3, .6, .1]), miss(n) < .95)  # fmt: skip
    cols["id_27"] = _mask(pick(["Found", "NotFound"], [0.9, 0.1], [0.9, 0.1]), miss(n) < 0.99)
    cols["id_28"] = _mask(pick(["Found", "New"], [0.6, 0.4], [0.3, 0.7]), miss(n) < 0.02)
    cols["id_29"] = _mask(pick(["Found", "NotFound"], [0.6, 0.4], [0.35, 0.65]), miss(n) < 0.02)
    cols["id_30"] = _mask(dev[:, 2], miss(n) < 0.45)
    cols["id_31"] = _mask(dev[:, 3], miss(n) < 0.03)
    cols["id_33"] = _mask(dev[:, 4], miss(n) < 0.48)
    cols["id_34"] = _mask(pick(["match_status:2", "match_status:1", "match_status:0",
                                "match_status:-1"], [.6, .38, .01, .01], [.5, .46, .02, .02]),
                          miss(n) < .46)  # fmt: skip
    for i in (35, 36, 37, 38):
        cols[f"id_{i}"] = _mask(pick(["T", "F"], [0.55, 0.45], [0.45, 0.55]), miss(n) < 0.02)
    cols["DeviceType"] = _mask(dev[:, 0], miss(n) < 0.02)
    cols["DeviceInfo"] = _mask(dev[:, 1], miss(n) < 0.18)
    return cols
