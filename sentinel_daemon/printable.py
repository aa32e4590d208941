"""Text from outside, made safe to print for people and to store as JSON.

File names, job names, data errors and reasons come from outside: a file name may hold any
byte but ``/`` and NUL, and a name that is not UTF-8 reaches Python as lone surrogates
(``os.fsdecode``'s ``surrogateescape``). Printed raw, ``ESC [2J`` clears an operator's
screen, a ``CR`` or ``LF`` forges a line, ``BEL`` rings; stored raw, a lone surrogate makes
the event log's JSON encoder refuse the whole record.

:func:`printable` is the one way to print such a value for people: every control character
(C0, DEL, C1), every lone surrogate and a few invisible format characters become visible
escapes (``\\x1b``, ``\\n``, ``\\udce9``...) and the backslash itself becomes ``\\\\``, so that
the result can be read back unambiguously (:func:`unescape`). ``--json`` output does not use
it: JSON has escapes of its own.

:func:`json_safe` is the one way to store such a value: a str that any JSON encoder takes
(lone surrogates escaped as ``\\udcXX``, everything else as it was).
"""

from __future__ import annotations

import re
from typing import Any

_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}
#: What :func:`printable` escapes: the backslash, C0 controls, DEL, C1 controls, lone
#: surrogates, and the format characters that reorder or hide text (bidi overrides,
#: zero-width ones, the line and paragraph separators).
_UNSAFE = re.compile(
    "[\\\\\x00-\x1f\x7f-\x9f\ud800-\udfff\u200b-\u200f\u2028-\u202e\u2066-\u2069\ufeff]"
)
_SURROGATE = re.compile("[\ud800-\udfff]")
_ESCAPE = re.compile(r"\\(?:x[0-9a-f]{2}|u[0-9a-f]{4}|[nrt\\])")


_CONTROL = re.compile(
    "[\x00-\x1f\x7f-\x9f\ud800-\udfff\u200b-\u200f\u2028-\u202e\u2066-\u2069\ufeff]"
)


def has_control(text: str) -> bool:
    """Whether ``text`` holds a character that :func:`printable` escapes (but ``\\``)."""
    return _CONTROL.search(text) is not None


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _SHORT:
        return _SHORT[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(value: object) -> str:
    """``value`` as text with every control character and lone surrogate visibly escaped.

    The result holds no C0/C1 control character, no DEL and no surrogate, so it prints as one
    line on any terminal and encodes as UTF-8. A backslash is doubled, so :func:`unescape`
    gives back the exact text.
    """
    return _UNSAFE.sub(_escape, value if isinstance(value, str) else str(value))


def unescape(text: str) -> str:
    """The inverse of :func:`printable`."""

    def back(match: re.Match[str]) -> str:
        esc = match.group()
        if esc[1] in "xu":
            return chr(int(esc[2:], 16))
        return {"n": "\n", "r": "\r", "t": "\t", "\\": "\\"}[esc[1]]

    return _ESCAPE.sub(back, text)


def json_safe(value: str) -> str:
    """``value`` with each lone surrogate written as ``\\udcXX``: storable as JSON (UTF-8).

    Anything else is kept as it is (JSON escapes control characters itself).
    """
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", value)


def printable_all(value: Any) -> Any:
    """:func:`printable` applied to every str inside ``value`` (dicts, lists, tuples)."""
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, dict):
        return {printable_all(k): printable_all(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [printable_all(v) for v in value]
    return value


__all__ = ["has_control", "json_safe", "printable", "printable_all", "unescape"]
