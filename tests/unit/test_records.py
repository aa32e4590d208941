from __future__ import annotations

import zlib

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sentinel_daemon.log.records import BadRecord, decode_line, encode_line

PAYLOAD = {"type": "trial.saved", "v": 1, "job_id": "j1", "trial": 3, "value": 0.91}


def test_a_record_is_one_flat_json_object_closed_by_its_checksum() -> None:
    line = encode_line(7, "2026-01-01T00:00:00.000000Z", PAYLOAD)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    obj = orjson.loads(line)
    assert list(obj)[:4] == ["seq", "ts", "type", "v"]
    assert obj["seq"] == 7 and obj["trial"] == 3
    head = line[: line.index(b',"crc"')]
    assert obj["crc"] == f"{zlib.crc32(head):08x}"


def test_decoding_returns_envelope_and_payload_without_the_checksum() -> None:
    line = encode_line(7, "2026-01-01T00:00:00.000000Z", PAYLOAD)
    record = decode_line(line[:-1])
    assert (record.seq, record.ts, record.payload) == (7, "2026-01-01T00:00:00.000000Z", PAYLOAD)


def test_an_event_field_named_like_the_envelope_is_refused() -> None:
    with pytest.raises(ValueError, match="seq"):
        encode_line(1, "2026-01-01T00:00:00.000000Z", {"type": "x", "seq": 3})


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=10,
)


@given(
    payload=st.dictionaries(
        st.text(max_size=8).filter(lambda k: k not in ("seq", "ts", "crc")), json_values, max_size=5
    ),
    data=st.data(),
)
def test_any_single_bit_flip_in_a_record_is_detected(payload: dict, data: st.DataObject) -> None:
    payload = {"type": "x", "v": 1, **payload}
    line = encode_line(1, "2026-01-01T00:00:00.000000Z", payload)[:-1]
    bit = data.draw(st.integers(0, len(line) * 8 - 1))
    damaged = bytearray(line)
    damaged[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(BadRecord):
        decode_line(bytes(damaged))


@pytest.mark.parametrize(
    "junk", [b"", b"{}", b'{"seq":1}', b"\x00" * 64, b'{"a":1,"crc":"zzzzzzzz"}']
)
def test_junk_is_not_a_record(junk: bytes) -> None:
    with pytest.raises(BadRecord):
        decode_line(junk)


def test_a_batch_encodes_to_exactly_the_lines_of_its_records() -> None:
    from sentinel_daemon.log.records import encode_batch

    ts = "2026-01-01T00:00:00.000000Z"
    payloads = [{**PAYLOAD, "trial": i} for i in range(5)]
    batch = encode_batch(10, ts, payloads)
    assert batch == b"".join(encode_line(10 + i, ts, p) for i, p in enumerate(payloads))
    records = [decode_line(line) for line in batch.split(b"\n")[:-1]]
    assert [(r.seq, r.payload["trial"]) for r in records] == [(10 + i, i) for i in range(5)]
