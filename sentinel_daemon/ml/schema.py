"""The IEEE-CIS file layout: column names, their kinds, and which ones are required.

One table drives the generator, the loader and the features, so the three agree on
every name. ``kind`` is how a column is parsed: ``id`` and ``time`` as 64-bit integers,
``target`` as 0/1, ``amount`` as float64 (cents survive), ``num`` as float32 and ``cat``
as a dictionary-encoded string (a pandas categorical).
"""

from __future__ import annotations

from typing import Final, Literal

Kind = Literal["id", "time", "target", "amount", "num", "cat"]

KEY: Final = "TransactionID"
TARGET: Final = "isFraud"
TIME: Final = "TransactionDT"
AMOUNT: Final = "TransactionAmt"

# Identity columns whose real values are strings (the rest of id_01..id_38 are numbers).
_ID_STRING = {12, 15, 16, 23, 27, 28, 29, 30, 31, 33, 34, 35, 36, 37, 38}


def _transaction_columns() -> dict[str, Kind]:
    cols: dict[str, Kind] = {
        KEY: "id",
        TARGET: "target",
        TIME: "time",
        AMOUNT: "amount",
        "ProductCD": "cat",
    }
    for i in range(1, 7):
        cols[f"card{i}"] = "cat" if i in (4, 6) else "num"
    cols |= {"addr1": "num", "addr2": "num", "dist1": "num", "dist2": "num"}
    cols |= {"P_emaildomain": "cat", "R_emaildomain": "cat"}
    cols |= {f"C{i}": "num" for i in range(1, 15)}
    cols |= {f"D{i}": "num" for i in range(1, 16)}
    cols |= {f"M{i}": "cat" for i in range(1, 10)}
    cols |= {f"V{i}": "num" for i in range(1, 340)}
    return cols


def _identity_columns() -> dict[str, Kind]:
    cols: dict[str, Kind] = {KEY: "id"}
    cols |= {f"id_{i:02d}": ("cat" if i in _ID_STRING else "num") for i in range(1, 39)}
    cols |= {"DeviceType": "cat", "DeviceInfo": "cat"}
    return cols


TRANSACTION_COLUMNS: Final[dict[str, Kind]] = _transaction_columns()
IDENTITY_COLUMNS: Final[dict[str, Kind]] = _identity_columns()

# Required because the features cannot be built without them (the client "uid" needs card1,
# addr1 and D1); every other known column is optional and read as all-missing when absent.
REQUIRED_TRANSACTION: Final = (KEY, TARGET, TIME, AMOUNT, "ProductCD", "card1", "addr1", "D1")
REQUIRED_IDENTITY: Final = (KEY,)

# The public test file of the competition spells identity columns "id-01"; accept both.
ALIASES: Final = {f"id-{i:02d}": f"id_{i:02d}" for i in range(1, 39)}

assert len(TRANSACTION_COLUMNS) == 394 and len(IDENTITY_COLUMNS) == 41
