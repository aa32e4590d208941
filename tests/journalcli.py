"""A ``journalctl`` for the doc-recipe tests, over a file of what the daemons wrote to stderr.

Under systemd the daemon's and workers' stderr is the journal, and each line starts with
its syslog priority (``<3>``, ``<4>``, ``<6>``...; see sentinel_daemon/logs.py), which
journald strips and files the line under. This reads such a file (``$JOURNAL``) and prints
its lines the way ``journalctl -o cat`` would: prefix removed, a line without one counted
as ``info`` (journald's default). It takes the options the docs use: ``-u UNIT``
(every line is Sentinel's), ``-p PRIORITY`` (a name or number: that priority and more
urgent ones), ``-o cat`` / ``-o short`` (the message alone either way), ``--since X`` and
``-b`` (ignored: the file is one boot of today), ``-f`` (prints what is there and ends: the
daemons have stopped, so the file grows no more), and refuses any other with exit 2, so a
recipe using a new option fails loudly until it is added here.
"""

from __future__ import annotations

import os
import re
import sys

PRIORITIES = ("emerg", "alert", "crit", "err", "warning", "notice", "info", "debug")
ALIASES = {"error": "err", "warn": "warning", "critical": "crit", "emergency": "emerg"}
PREFIX = re.compile(r"^<([0-7])>")
INFO = PRIORITIES.index("info")


class Usage(Exception):
    pass


def priority(value: str) -> int:
    if value.isdigit() and int(value) < len(PRIORITIES):
        return int(value)
    name = ALIASES.get(value, value)
    if name not in PRIORITIES:
        raise Usage(f"unknown priority {value!r}")
    return PRIORITIES.index(name)


def parse(argv: list[str]) -> int:
    """The most urgent priority to leave out (all when no ``-p``)."""
    worst = len(PRIORITIES) - 1
    takes_value = {"-u", "--unit", "-p", "--priority", "-o", "--output", "--since", "-S"}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in takes_value:
            if i + 1 >= len(argv):
                raise Usage(f"{arg} takes a value")
            value = argv[i + 1]
            if arg in ("-p", "--priority"):
                worst = priority(value)
            elif arg in ("-o", "--output") and value not in ("cat", "short"):
                raise Usage(f"unsupported output {value!r}")
            i += 2
        elif arg in ("-b", "--no-pager", "-f", "--follow"):
            i += 1
        else:
            raise Usage(f"unsupported option {arg}")
    return worst


def main(argv: list[str]) -> int:
    try:
        worst = parse(argv)
    except Usage as exc:
        print(f"journalctl (test stand-in): {exc}", file=sys.stderr)
        return 2
    with open(os.environ["JOURNAL"], encoding="utf-8") as fh:
        for line in fh:
            match = PREFIX.match(line)
            level = int(match[1]) if match else INFO
            if level <= worst:
                sys.stdout.write(line[match.end() :] if match else line)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except BrokenPipeError:
        sys.exit(0)
