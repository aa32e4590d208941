"""Keep native libraries' console chatter out of the worker's stderr (the journal).

LightGBM's OpenCL learner (``device_type=gpu``) has the OpenCL runtime compile its kernels
when a booster is built, and the compiler prints to file descriptor 2 ("1 warning
generated.", 33 lines a trial on an H200 with the PyPI wheel). That is C code in this
process or in a child it starts, so redirecting ``sys.stderr`` cannot catch it:
:func:`quiet_stderr` points descriptor 2 itself at a temporary file for the duration,
then puts it back. What was written meanwhile is sorted line by line: compiler output
(the "N warnings generated." counts, ``file:line:col: warning:`` diagnostics, their
source and caret lines) is dropped and summarised in one debug log line; any other line
(a log line of the worker's own, say) is written to the real stderr after the guard, so
nothing else is lost, only delayed.

Descriptor 2 is one per process: the guard is not for two threads at once. A guard
entered while another is open (nested, or another thread) does nothing and lets the
outer one capture.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import structlog

log = structlog.get_logger(__name__)

#: Read back at most this much; the rest is counted, never read (a runaway library).
MAX_CAPTURED_BYTES = 4 << 20

_COUNT = re.compile(rb"^\s*\d+ (warnings?|errors?)( and \d+ (warnings?|errors?))? generated\.?\s*$")
_DIAGNOSTIC = re.compile(rb"^.*:\d+:\d+: (warning|note|error|remark): ")
_CARET = re.compile(rb"^[\s~]*\^[\s~^]*$")

_lock = threading.Lock()
_active = False


@dataclass
class Captured:
    """What a guard kept out of stderr; filled in when it closes."""

    what: str
    bytes: int = 0
    dropped_lines: int = 0
    passed_lines: int = 0  # other lines (written to stderr after the guard, if passed on)
    first_dropped: str = ""
    nested: bool = False


def split_chatter(data: bytes) -> tuple[list[bytes], list[bytes]]:
    """``(dropped, passed)``: the compiler lines of ``data`` and the others, in order.

    A source line is compiler output when a caret line follows it; so is everything
    between a diagnostic and its caret line.
    """
    lines = data.splitlines()
    chatter = [False] * len(lines)
    in_diagnostic = False
    for i, line in enumerate(lines):
        if _COUNT.match(line):
            chatter[i] = True
            in_diagnostic = False
        elif _DIAGNOSTIC.match(line):
            chatter[i] = in_diagnostic = True
        elif _CARET.match(line) and line.strip():
            chatter[i] = True
            if i > 0:
                chatter[i - 1] = True  # the source line the caret points into
            in_diagnostic = False
        elif in_diagnostic:
            chatter[i] = True
    dropped = [line for line, c in zip(lines, chatter, strict=True) if c]
    passed = [line for line, c in zip(lines, chatter, strict=True) if not c]
    return dropped, passed


@contextlib.contextmanager
def quiet_stderr(what: str, *, pass_others: bool = True) -> Iterator[Captured]:
    """While open, file descriptor 2 of this process (and of children started meanwhile)
    goes to a temporary file; compiler chatter written there never reaches stderr.

    ``what`` names the guarded work in the debug summary (``stderr.captured``). With
    ``pass_others`` False nothing is passed on (a probe whose failure is its answer).
    """
    global _active
    captured = Captured(what)
    with _lock:
        nested, _active = _active, True
    if nested:
        captured.nested = True
        yield captured
        return
    try:
        with tempfile.TemporaryFile(prefix="sentinel-stderr-") as sink:
            sys.stderr.flush()
            saved = os.dup(2)
            try:
                os.dup2(sink.fileno(), 2)
                try:
                    yield captured
                finally:
                    with contextlib.suppress(ValueError, OSError):  # a closed sys.stderr
                        sys.stderr.flush()  # Python's buffered writes land in the sink
                    os.dup2(saved, 2)
            finally:
                os.close(saved)
            captured.bytes = sink.seek(0, os.SEEK_END)
            sink.seek(0)
            _sort(captured, sink.read(MAX_CAPTURED_BYTES), pass_others)
    finally:
        with _lock:
            _active = False


def _sort(captured: Captured, data: bytes, pass_others: bool) -> None:
    dropped, passed = split_chatter(data)
    captured.dropped_lines = len(dropped)
    captured.passed_lines = len(passed)
    captured.first_dropped = dropped[0].decode(errors="replace")[:200] if dropped else ""
    if passed and pass_others:
        out = memoryview(b"\n".join(passed) + b"\n")
        with contextlib.suppress(OSError):
            while out:
                out = out[os.write(2, out) :]
    if captured.bytes:
        log.debug(
            "stderr.captured",
            what=captured.what,
            bytes=captured.bytes,
            dropped_lines=captured.dropped_lines,
            passed_lines=captured.passed_lines,
            first_dropped=captured.first_dropped,
        )
