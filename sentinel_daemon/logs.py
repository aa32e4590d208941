"""Structured logging with structlog: readable on a terminal, JSON lines otherwise.

When stderr is the journal (systemd sets ``JOURNAL_STREAM`` to the device and inode of
the stream it connected; sd-daemon(3), systemd.exec(5)), every line starts with a
``<N>`` syslog priority (``<3>`` error, ``<4>`` warning, ``<6>`` info, ``<7>`` debug).
journald strips the prefix and files the line at that priority (``SyslogLevelPrefix=``,
on by default), so ``journalctl -p warning`` shows the warnings and errors alone and the
line itself stays plain JSON. A child process that inherits both stderr and the variable
(a worker, a stage or report process) prefixes its lines the same way; one whose stderr
was redirected elsewhere does not, because the device and inode no longer match.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any, Literal, TextIO

import structlog

_LEVELS = {
    "debug": 10,
    "info": 20,
    "warning": 30,
    "error": 40,
}
#: syslog priorities (RFC 5424) of structlog's level names.
PRIORITIES = {
    "critical": 2,
    "exception": 3,
    "error": 3,
    "warn": 4,
    "warning": 4,
    "notice": 5,
    "info": 6,
    "debug": 7,
}
JOURNAL_STREAM_ENV = "JOURNAL_STREAM"


def stream_is_journal(stream: TextIO, environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``stream`` is the journal stream systemd named in ``JOURNAL_STREAM``."""
    value = (os.environ if environ is None else environ).get(JOURNAL_STREAM_ENV, "")
    dev, _, ino = value.partition(":")
    if not (dev.isdigit() and ino.isdigit()):
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError):  # closed, or not a real file (a test's StringIO)
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


def with_priority(renderer: structlog.types.Processor) -> structlog.types.Processor:
    """``renderer``, with each line of its output prefixed by the record's ``<N>`` priority.

    Every line, not only the first: journald files each line of a multi-line record (a
    readable traceback) as an entry of its own, at the priority its own prefix says.
    """

    def render(logger: Any, method_name: str, event_dict: Any) -> Any:
        level = str(event_dict.get("level", method_name)).lower()
        prefix = f"<{PRIORITIES.get(level, PRIORITIES['info'])}>"
        text = renderer(logger, method_name, event_dict)
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        return "\n".join(prefix + line for line in str(text).split("\n"))

    return render


def configure_logging(
    level: str = "info",
    fmt: Literal["auto", "console", "json"] = "auto",
    stream: TextIO | None = None,
) -> None:
    """Send structured logs to ``stream`` (stderr); journald keeps each JSON line as one entry."""
    stream = sys.stderr if stream is None else stream
    tty = stream.isatty()
    as_json = fmt == "json" or (fmt == "auto" and not tty)
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if as_json
        else structlog.dev.ConsoleRenderer(colors=tty)
    )
    if stream_is_journal(stream):
        renderer = with_priority(renderer)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
