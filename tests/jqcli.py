"""A ``jq`` command for the tests, over libjq from the ``jq`` package on PyPI.

The documented recipes pipe the event log through ``jq``. A fresh machine (CI) has no jq
binary, and no registry the project reaches ships one; the ``jq`` wheel does ship libjq
itself, behind Python bindings. This is the command-line front of it: the programs are
compiled and run by libjq, this file only reads the inputs and prints the outputs the way
jq does. It takes the options the docs use (``-c -r -R -j -s -n -e --arg --argjson
--unbuffered``, short ones combined as in ``-rc``) and refuses any other with exit 2, so a
recipe using a new option fails loudly until the option is added here.

Inputs are a stream of JSON texts (files in order, or stdin), split with Python's decoder
and each handed to libjq as text, as jq reads them; a text that does not parse ends the
run with exit 2 (``tail`` without ``-q`` between segments: its ``==> file <==`` headers).
Without ``-s`` each input is processed as it arrives; as with jq, what it prints into a
pipe waits in a buffer unless ``--unbuffered`` is given (on a terminal, lines go at once).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import jq

USAGE = (
    "usage: jqcli.py [-c] [-r] [-R] [-j] [-s] [-n] [-e] [--unbuffered] [--arg N V] "
    "[--argjson N J] PROGRAM [FILE...]"
)
FLAGS = {
    "c": "compact",
    "r": "raw",
    "j": "join",
    "s": "slurp",
    "n": "null_input",
    "e": "exit_status",
    "R": "raw_input",
}


class Usage(Exception):
    pass


def parse(argv: list[str]) -> tuple[dict[str, bool], dict[str, Any], str, list[str]]:
    opts = {name: False for name in (*FLAGS.values(), "unbuffered")}
    named: dict[str, Any] = {}
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--unbuffered":
            opts["unbuffered"] = True
        elif arg in ("--arg", "--argjson"):
            if i + 2 >= len(argv):
                raise Usage(f"{arg} takes a name and a value")
            name, value = argv[i + 1], argv[i + 2]
            named[name] = value if arg == "--arg" else json.loads(value)
            i += 2
        elif arg.startswith("-") and len(arg) > 1 and not arg.startswith("--"):
            for letter in arg[1:]:
                if letter not in FLAGS:
                    raise Usage(f"unsupported option -{letter}")
                opts[FLAGS[letter]] = True
        elif arg.startswith("--"):
            raise Usage(f"unsupported option {arg}")
        else:
            rest.append(arg)
        i += 1
    if not rest:
        raise Usage("no program given")
    return opts, named, rest[0], rest[1:]


def texts(stream: TextIO, name: str) -> Iterator[str]:
    """Each JSON text of ``stream``, as it arrives (line by line)."""
    decoder = json.JSONDecoder()
    buffer = ""
    line_no = 0
    for line in stream:
        line_no += 1
        buffer += line
        while True:
            stripped = buffer.lstrip()
            if not stripped:
                buffer = ""
                break
            try:
                _, end = decoder.raw_decode(stripped)
            except json.JSONDecodeError as exc:
                if exc.pos >= len(stripped.rstrip()):  # cut short: wait for more lines
                    break
                raise ValueError(f"parse error at {name}:{line_no}: {exc.msg}") from None
            yield stripped[:end]
            buffer = stripped[end:]
    if buffer.strip():
        raise ValueError(f"parse error at {name}:{line_no}: unfinished JSON text at EOF")


def lines(stream: TextIO) -> Iterator[str]:
    """``-R``: each line of ``stream`` is one input, a string (as a JSON text)."""
    for line in stream:
        yield json.dumps(line.removesuffix("\n"), ensure_ascii=False)


def inputs(files: list[str], raw: bool = False) -> Iterator[str]:
    if not files:
        yield from lines(sys.stdin) if raw else texts(sys.stdin, "<stdin>")
        return
    for path in files:
        with open(path, encoding="utf-8") as fh:
            yield from lines(fh) if raw else texts(fh, path)


def render(value: Any, opts: dict[str, bool]) -> str:
    if (opts["raw"] or opts["join"]) and isinstance(value, str):
        return value
    if opts["compact"]:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return json.dumps(value, indent=2, ensure_ascii=False)


def main(argv: list[str]) -> int:
    try:
        opts, named, program, files = parse(argv)
    except (Usage, json.JSONDecodeError) as exc:
        print(f"jq: error: {exc}\n{USAGE}", file=sys.stderr)
        return 2
    try:
        compiled = jq.compile(program, args=named)
    except ValueError as exc:
        print(f"jq: error: {exc}\njq: 1 compile error", file=sys.stderr)
        return 3
    last: list[Any] = []
    end = "" if opts["join"] else "\n"

    def run(text: str | None) -> None:
        results = (compiled.input_value(None) if text is None else compiled.input_text(text)).all()
        for value in results:
            sys.stdout.write(render(value, opts) + end)
        if opts["unbuffered"]:  # as jq: into a pipe, output waits in a buffer unless asked
            sys.stdout.flush()
        last[:] = results[-1:] or last

    try:
        if opts["null_input"]:
            run(None)
        elif opts["slurp"]:
            run("[" + ",".join(inputs(files, opts["raw_input"])) + "]")
        else:
            for text in inputs(files, opts["raw_input"]):
                run(text)
    except ValueError as exc:  # libjq's runtime errors and unparsable input
        message = str(exc)
        print(f"jq: error: {message}", file=sys.stderr)
        return 2 if message.startswith("parse error") else 5
    except BrokenPipeError:
        return 0
    if opts["exit_status"]:
        return 0 if last and last[-1] not in (None, False) else 1
    return 0


def jq_bin_dir(provider: str, folder: Path) -> Path:
    """A folder holding a ``jq`` command of ``provider``, to put first on ``PATH``."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "jq"
    if provider == "libjq":
        target.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{Path(__file__).resolve()}" "$@"\n')
        target.chmod(0o755)
    else:
        binary = shutil.which("jq", path=os.environ.get("PATH", "").replace(str(folder), ""))
        if binary is None:
            raise FileNotFoundError("no jq binary on PATH")
        target.symlink_to(binary)
    return folder


def has_jq_binary() -> bool:
    return shutil.which("jq") is not None


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
