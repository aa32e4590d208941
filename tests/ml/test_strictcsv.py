"""CSV files are read strictly: malformed input is a DataError naming the file and the line,
never rows silently lost or a crash of the reading process."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from sentinel_daemon.ml import synth
from sentinel_daemon.ml.errors import DataError
from sentinel_daemon.ml.loading import load
from sentinel_daemon.ml.strictcsv import MAX_LINE_BYTES

from .helpers import minimal_transactions


def csv_lines(n: int = 40) -> list[bytes]:
    text = minimal_transactions(n).to_csv(index=False)
    return [line.encode() for line in text.splitlines()]


def write(path: Path, lines: list[bytes], end: bytes = b"\n") -> Path:
    path.write_bytes(end.join(lines) + end)
    return path


def refused(path: Path) -> DataError:
    with pytest.raises(DataError) as caught:
        load(path)
    assert caught.value.path == path and str(path) in str(caught.value)
    return caught.value


@pytest.fixture(scope="module")
def generated() -> Iterator[list[bytes]]:
    """The lines of a 3,000-row transaction file from the data generator (quoted header)."""
    with tempfile.TemporaryDirectory() as tmp:
        tx, _ident = synth.generate(3000, Path(tmp), seed=3)
        yield tx.read_bytes().split(b"\n")[:-1]


def test_an_unterminated_quote_in_row_3_of_3000_is_refused_naming_line_4(
    tmp_path: Path, generated: list[bytes]
) -> None:
    lines = list(generated)
    lines[3] = b'"' + lines[3]  # data row 3 (line 4); pyarrow alone read 1,552 rows of 3,000

    err = refused(write(tmp_path / "tx.csv", lines))

    assert err.line == 4 and "unbalanced double quote" in err.reason
    assert f"{tmp_path / 'tx.csv'} line 4:" in str(err)


def test_the_generated_file_itself_loads_every_row(tmp_path: Path, generated: list[bytes]) -> None:
    assert len(load(write(tmp_path / "tx.csv", generated)).frame) == 3000


def test_a_30_mb_header_field_is_a_data_error_not_a_crash(tmp_path: Path) -> None:
    lines = csv_lines()
    lines[0] = lines[0] + b',"' + b"x" * (30 << 20) + b'"'

    err = refused(write(tmp_path / "tx.csv", lines))

    assert err.line == 1 and "longer than 1 MiB" in err.reason


def test_a_header_field_over_the_csv_modules_limit_is_a_data_error(tmp_path: Path) -> None:
    lines = csv_lines()
    lines[0] = lines[0] + b"," + b"y" * (200 << 10)  # under 1 MiB, over csv's 128 KiB

    err = refused(write(tmp_path / "tx.csv", lines))

    assert err.line == 1 and "header does not parse" in err.reason


def test_an_over_long_field_in_a_data_row_names_its_line(tmp_path: Path) -> None:
    lines = csv_lines()
    lines[7] = lines[7] + b"z" * (MAX_LINE_BYTES + 10)

    assert refused(write(tmp_path / "tx.csv", lines)).line == 8


@pytest.mark.parametrize("change", ["fewer", "more"])
def test_a_row_whose_field_count_differs_from_the_header_names_its_line(
    tmp_path: Path, change: str
) -> None:
    lines = csv_lines()
    lines[20] = lines[20].rsplit(b",", 1)[0] if change == "fewer" else lines[20] + b",9"
    lines[5:5] = [b"", b""]  # blank lines before it: skipped, but counted as lines

    err = refused(write(tmp_path / "tx.csv", lines))

    assert err.line == 23 and "columns" in err.reason


def test_a_nul_byte_names_its_line(tmp_path: Path) -> None:
    lines = csv_lines()
    lines[12] = lines[12].replace(b",W,", b",W\x00,", 1).replace(b",C,", b",C\x00,", 1)

    err = refused(write(tmp_path / "tx.csv", lines))

    assert err.line == 13 and "NUL" in err.reason


def test_a_mistyped_value_names_line_and_column(tmp_path: Path) -> None:
    lines = csv_lines()
    cells = lines[30].split(b",")
    cells[5] = b"abc"  # card1
    lines[30] = b",".join(cells)

    err = refused(write(tmp_path / "tx.csv", lines))

    assert (err.line, err.column) == (31, "card1") and "abc" in err.reason


def test_crlf_blank_lines_and_doubled_quotes_are_read_as_written(tmp_path: Path) -> None:
    lines = csv_lines()
    lines[3] = lines[3].replace(b",W,", b',"W ""x"", y",', 1).replace(b",C,", b',"C ""x"", y",', 1)
    lines[9:9] = [b""]

    frame = load(write(tmp_path / "tx.csv", lines, end=b"\r\n")).frame

    assert len(frame) == 40
    assert {'W "x", y', 'C "x", y'} & set(frame["ProductCD"].astype(str))


def test_carriage_returns_alone_as_line_ends_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "tx.csv", csv_lines(), end=b"\r")
    assert refused(path).reason


# ---- property: never fewer rows than the file has, silently -------------------------------

_MUTATIONS = st.sampled_from(['"', "\x00", ",", "\n", "\r", "\n\n", '""', "x", "1.5", ""])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    where=st.lists(st.tuples(st.floats(0, 1), _MUTATIONS, st.booleans()), min_size=1, max_size=3)
)
def test_a_mutated_file_is_refused_or_read_with_a_row_for_each_line(
    where: list[tuple[float, str, bool]],
) -> None:
    data = b"\n".join(csv_lines()) + b"\n"
    for position, text, replace in where:
        at = min(int(position * len(data)), len(data) - 1)
        data = data[:at] + text.encode() + data[at + (1 if replace else 0) :]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tx.csv"
        path.write_bytes(data)
        try:
            frame = load(path).frame
        except DataError as exc:
            event("refused")
            assert exc.path == path
            return
    event("read")
    body = data.split(b"\n", 1)[1] if b"\n" in data else b""
    lines = [x for x in body.replace(b"\r\n", b"\n").split(b"\n") if x.strip(b"\r")]
    assert len(frame) == len(lines)
