"""Text from outside made safe to print (printable) and to store (json_safe), and the names
the inbox refuses and the safe names it keeps them under (layout)."""

from __future__ import annotations

import os
import unicodedata

import orjson
from hypothesis import given
from hypothesis import strategies as st

from sentinel_daemon.layout import (
    JOB_SUFFIXES,
    MAX_JOB_NAME_BYTES,
    REASON_SUFFIX,
    inbox_name_problem,
    safe_name,
)
from sentinel_daemon.printable import has_control, json_safe, printable, printable_all, unescape

#: Any str Python can hold: every code point, lone surrogates included.
ANY_TEXT = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x10FFFF))
#: File names as a directory listing gives them: any bytes but NUL and '/'.
RAW_NAMES = st.binary(min_size=1, max_size=300).filter(lambda b: b"\0" not in b and b"/" not in b)


def _visible(text: str) -> bool:
    """No C0/C1 control, DEL, surrogate or line/paragraph separator."""
    return all(unicodedata.category(c) not in ("Cc", "Cs", "Zl", "Zp") for c in text)


@given(ANY_TEXT)
def test_printable_leaves_no_control_character_and_is_reversible(text: str) -> None:
    shown = printable(text)
    assert _visible(shown)
    assert not has_control(shown)
    shown.encode("utf-8")  # no surrogate left
    assert unescape(shown) == text


@given(ANY_TEXT, ANY_TEXT)
def test_printable_of_different_texts_differs(a: str, b: str) -> None:
    if a != b:
        assert printable(a) != printable(b)


def test_printable_escapes_the_terminal_attacks_visibly() -> None:
    assert printable("a\x1b[2Jb") == "a\\x1b[2Jb"
    assert printable("one\ntwo\r") == "one\\ntwo\\r"
    assert printable("\x07\x9b\x7f") == "\\x07\\x9b\\x7f"
    assert printable(os.fsdecode(b"caf\xe9")) == "caf\\udce9"
    assert printable("back\\slash") == "back\\\\slash"
    assert printable("plain é ü 日本") == "plain é ü 日本"
    assert printable_all({"k\n": ["\x1b", 3]}) == {"k\\n": ["\\x1b", 3]}


@given(ANY_TEXT)
def test_json_safe_text_is_always_storable_as_json(text: str) -> None:
    stored = json_safe(text)
    assert orjson.loads(orjson.dumps(stored)) == stored
    if not any(0xD800 <= ord(c) < 0xE000 for c in text):
        assert stored == text


@given(RAW_NAMES)
def test_every_name_is_taken_or_has_a_safe_name_within_name_max(raw: bytes) -> None:
    name = os.fsdecode(raw)
    problem = inbox_name_problem(name)
    kept = safe_name(name)
    assert inbox_name_problem(kept) is None
    encoded = kept.encode("utf-8")
    # What the daemon adds: a number when taken, .reason, and atomic_writer's .NAME.PID.tmp.
    assert len(encoded) + len(".999") + len(REASON_SUFFIX) + len("..4194304.tmp") <= 255
    assert "/" not in kept and "\0" not in kept
    if problem is None:
        assert kept == name
    else:
        assert not kept.startswith(".")
        suffix = next((s for s in JOB_SUFFIXES if name.lower().endswith(s)), "")
        assert kept.endswith(suffix)


@given(RAW_NAMES, RAW_NAMES)
def test_two_refused_names_never_share_a_safe_name(a: bytes, b: bytes) -> None:
    na, nb = os.fsdecode(a), os.fsdecode(b)
    if a != b and inbox_name_problem(na) and inbox_name_problem(nb):
        assert safe_name(na) != safe_name(nb)


def test_the_names_of_issue_13_are_refused_with_their_reason() -> None:
    assert inbox_name_problem(os.fsdecode(b"caf\xe9.yaml")) == "is not UTF-8"
    assert "bytes long" in str(inbox_name_problem("n" * 246 + ".yaml"))
    assert inbox_name_problem("x" * (MAX_JOB_NAME_BYTES - 5) + ".yaml") is None
    assert inbox_name_problem("clear-\x1b[2J.yaml") == "holds control characters"
    assert inbox_name_problem("ok-name.yaml") is None
