"""Log lines carry journald priorities when, and only when, stderr is the journal stream."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import structlog

from sentinel_daemon.logs import JOURNAL_STREAM_ENV, configure_logging, stream_is_journal

PREFIXED = re.compile(r"^<(\d)>(.*)$")


@pytest.fixture(autouse=True)
def structlog_restored() -> Iterator[None]:
    yield
    structlog.reset_defaults()


def journal_id(path: Path) -> str:
    st = os.stat(path)
    return f"{st.st_dev}:{st.st_ino}"


def log_everything(path: Path, fmt: str = "json") -> list[str]:
    with open(path, "w", encoding="utf-8") as stream:
        configure_logging("debug", fmt, stream=stream)  # type: ignore[arg-type]
        log = structlog.get_logger("test")
        log.debug("d")
        log.info("i")
        log.warning("w")
        log.error("e")
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("x")
    return path.read_text(encoding="utf-8").splitlines()


def test_lines_start_with_their_syslog_priority_when_the_stream_is_the_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "journal"
    path.touch()
    monkeypatch.setenv(JOURNAL_STREAM_ENV, journal_id(path))
    got = []
    for line in log_everything(path):
        match = PREFIXED.match(line)
        assert match is not None, line
        record = orjson.loads(match[2])  # journald strips the prefix: the rest is plain JSON
        got.append((record["event"], record["level"], int(match[1])))
    assert got == [("d", "debug", 7), ("i", "info", 6), ("w", "warning", 4),
                   ("e", "error", 3), ("x", "error", 3)]  # fmt: skip


def test_every_line_of_a_multi_line_record_carries_the_priority(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "journal"
    path.touch()
    monkeypatch.setenv(JOURNAL_STREAM_ENV, journal_id(path))
    lines = log_everything(path, fmt="console")
    traceback = lines[lines.index(next(x for x in lines if "ValueError" in x)) :]
    assert traceback and all(line.startswith("<3>") for line in traceback)
    assert all(PREFIXED.match(line) for line in lines)


def test_no_prefix_when_journal_stream_names_another_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = tmp_path / "elsewhere"
    other.touch()
    monkeypatch.setenv(JOURNAL_STREAM_ENV, journal_id(other))
    lines = log_everything(tmp_path / "stderr.log")
    assert [orjson.loads(line)["event"] for line in lines] == ["d", "i", "w", "e", "x"]


def test_a_missing_or_malformed_journal_stream_is_not_the_journal(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.touch()
    with open(path) as stream:
        assert not stream_is_journal(stream, {})
        assert not stream_is_journal(stream, {JOURNAL_STREAM_ENV: "garbage"})
        assert stream_is_journal(stream, {JOURNAL_STREAM_ENV: journal_id(path)})
