"""The command line's arguments: every one has help, every command an example."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import pytest

from sentinel_daemon.tools.cliargs import UsageError, build_parser


def commands(
    parser: argparse.ArgumentParser, prefix: str = ""
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """``(name, parser)`` of every (sub)command, ``log verify`` included."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                full = f"{prefix} {name}".strip()
                yield full, sub
                yield from commands(sub, full)


def test_every_command_shows_an_example_under_its_help() -> None:
    found = dict(commands(build_parser()))
    assert {"run", "submit", "wait", "log verify", "log repair", "gen-data"} <= set(found)
    for name, parser in found.items():
        assert parser.epilog and parser.epilog.startswith("example:\n  "), name
        example = parser.epilog.split("\n")[1].strip()
        assert "sentinel " in example, (name, example)
        if name != "worker":  # `sentinel worker --help` is the worker's own parser
            assert "example:" in parser.format_help(), name


def test_every_argument_and_option_has_help_text() -> None:
    missing = []
    top = build_parser()
    for name, parser in [("sentinel", top), *commands(top)]:
        for action in parser._actions:
            if not action.help or action.help == argparse.SUPPRESS:
                missing.append(f"{name} {action.dest}")
    assert missing == []


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["gen-data", "--rows", "0", "--out", "x"], "must be 1 or more"),
        (["gen-data", "--rows", "5", "--out", "x", "--fraud-rate", "1.5"], "between 0 and 1"),
        (["wait", "j1", "--grace", "-1"], "must be 0 or more seconds"),
        (["wait"], "the following arguments are required: JOB"),
    ],
)
def test_bad_arguments_raise_a_usage_error_instead_of_exiting(
    argv: list[str], message: str
) -> None:
    with pytest.raises(UsageError) as raised:
        build_parser().parse_args(argv)
    assert message in raised.value.message and raised.value.usage.startswith("usage: sentinel")
