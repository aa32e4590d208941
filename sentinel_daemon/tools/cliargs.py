"""The ``sentinel`` command line's arguments: every command and option, with help and an example.

Parsing raises :class:`UsageError` instead of exiting, so that ``cli.main`` can report a
usage error as JSON under ``--json`` (argparse itself prints to stderr and exits 2).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from sentinel_daemon import __version__

#: An example for each command, shown under its ``--help``.
EXAMPLES: dict[str, str] = {
    "run": "sentinel run --state-dir /var/lib/sentinel --workers 2",
    "submit": "sentinel submit ieee-fraud.yaml          # prints the job id, e.g. "
    "ieee-fraud-1a2b3c4d",
    "status": "sentinel status\n  sentinel status ieee-fraud-1a2b3c4d --json",
    "wait": "sentinel wait ieee-fraud-1a2b3c4d --timeout 3600; echo $?   "
    "# 0 completed, 1 failed, 4 timed out",
    "cancel": "sentinel cancel ieee-fraud-1a2b3c4d",
    "tail": "sentinel tail -n 50\n  sentinel tail -f --type 'trial.*' --job ieee-fraud-1a2b3c4d"
    "\n  sentinel tail --all --json | jq -c 'select(.type == \"job.failed\")'",
    "log": "sentinel log verify\n  sentinel log repair",
    "log verify": "sentinel log verify --json | jq .ok",
    "log repair": "systemctl stop sentinel && sentinel log repair --truncate-corrupt",
    "worker": "sentinel worker --help",
    "gen-data": "sentinel gen-data --rows 20000 --out /var/lib/sentinel/data --seed 1",
    "doctor": "sentinel doctor --json | jq '.checks[] | select(.level != \"ok\")'",
    "report": "sentinel report ieee-fraud-1a2b3c4d   # prints the path of index.html",
    "export-optuna": "sentinel export-optuna ieee-fraud-1a2b3c4d --out ieee.journal && "
    "optuna-dashboard ieee.journal",
}


class UsageError(Exception):
    """What argparse would have printed before exiting 2, raised instead (for ``--json``)."""

    def __init__(self, usage: str, message: str) -> None:
        self.usage = usage
        self.message = message
        super().__init__(message)


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` that raises :class:`UsageError` instead of exiting."""

    def error(self, message: str) -> Any:
        raise UsageError(self.format_usage(), f"{self.prog}: error: {message}")


def _add(sub: Any, name: str, help_: str, **kwargs: Any) -> argparse.ArgumentParser:
    """A subcommand with its help, and its example as the epilog."""
    example = EXAMPLES[kwargs.pop("example", name)]
    parser: argparse.ArgumentParser = sub.add_parser(
        name,
        help=help_,
        description=help_[0].upper() + help_[1:] + ".",
        epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        **kwargs,
    )
    return parser


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="state directory (env SENTINEL_STATE_DIR; default from settings)",
    )
    common.add_argument(
        "--config",
        type=Path,
        default=os.environ.get("SENTINEL_CONFIG") or None,
        help="settings file layered over the defaults (env SENTINEL_CONFIG)",
    )
    common.add_argument(
        "--json", action="store_true", help="machine-readable output (errors too, on stdout)"
    )
    return common


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be 0 or more seconds, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {text!r}")
    return value


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (exclusive), got {text!r}")
    return value


JOB_HELP = "the job id that `sentinel submit` printed (`sentinel status` lists them)"
#: ``status`` and ``wait`` also take a name that one job alone has.
JOB_OR_NAME_HELP = JOB_HELP + ", or a job name that one job alone has"


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = _Parser(
        prog="sentinel",
        description="Crash-safe training daemon for fraud-detection models.",
        epilog="example:\n  sentinel submit ieee-fraud.yaml && sentinel status\n\n"
        "`sentinel COMMAND --help` shows each command's options and an example.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"sentinel {__version__}")
    sub = parser.add_subparsers(
        dest="command",
        required=True,
        metavar="COMMAND",
        help="what to do (`sentinel COMMAND --help` for its options)",
    )

    run = _add(sub, "run", "the daemon, in the foreground", parents=[common])
    run.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="local worker processes in all: GPU workers first (workers.per_gpu a GPU), the "
        "rest CPU workers (default: workers.count, else workers.per_gpu on each GPU and "
        "CPU workers on the cores left; docs/gpu.md)",
    )

    submit = _add(sub, "submit", "validate a job file and place it in the inbox", parents=[common])
    submit.add_argument(
        "file",
        type=Path,
        metavar="FILE",
        help="job file (.yaml, .yml, .json); a relative data path in it must resolve in the "
        "daemon's working folder",
    )
    status = _add(
        sub, "status", "jobs, stages, trials, best scores, workers, GPUs", parents=[common]
    )
    status.add_argument(
        "job",
        nargs="?",
        default=None,
        metavar="JOB",
        help="show only this job (" + JOB_OR_NAME_HELP + ")",
    )
    wait = _add(
        sub,
        "wait",
        "block until a job ends; exit 0 completed, 1 failed, cancelled, rejected or unknown, "
        "4 timeout",
        parents=[common],
    )
    wait.add_argument("job", metavar="JOB", help=JOB_OR_NAME_HELP)
    wait.add_argument(
        "--timeout", type=_seconds, default=None, metavar="S", help="give up after S seconds"
    )
    wait.add_argument(
        "--grace",
        type=_seconds,
        default=None,
        metavar="S",
        help="give up on an id that is neither in the log nor a file in the inbox or "
        "claimed/ for S seconds (default 10)",
    )
    cancel = _add(sub, "cancel", "ask the daemon to cancel a running job", parents=[common])
    cancel.add_argument("job", metavar="JOB", help=JOB_HELP)

    tail = _add(sub, "tail", "show (and follow) the event log", parents=[common])
    tail.add_argument("-f", "--follow", action="store_true", help="keep printing new records")
    tail.add_argument(
        "-n", "--lines", type=int, default=20, metavar="N", help="how many past records (20)"
    )
    tail.add_argument("--all", action="store_true", help="every past record")
    tail.add_argument(
        "--type",
        action="append",
        default=[],
        metavar="T",
        help="only these types; shell patterns such as 'trial.*' (repeatable)",
    )
    tail.add_argument("--job", default=None, metavar="J", help="only records of job J")

    logp = _add(sub, "log", "check or repair the event log")
    logsub = logp.add_subparsers(
        dest="log_command", required=True, metavar="ACTION", help="verify or repair"
    )
    _add(
        logsub,
        "verify",
        "check every record; non-zero on damage",
        parents=[common],
        example="log verify",
    )
    rep = _add(
        logsub,
        "repair",
        "cut a torn tail after a backup (the daemon must be stopped)",
        parents=[common],
        example="log repair",
    )
    rep.add_argument(
        "--truncate-corrupt",
        action="store_true",
        help="also cut from a corrupt record in the middle on (records after it "
        "are lost; they stay in the backup)",
    )

    # `sentinel worker ...` is handed whole to sentinel_daemon.worker.loop.main (see main()); it
    # is listed here for --help.
    _add(sub, "worker", "one worker process (`sentinel worker --help`)", add_help=False)

    gen = _add(
        sub,
        "gen-data",
        "write a synthetic data set in the IEEE-CIS file layout",
        parents=[common],
    )
    gen.add_argument(
        "--rows", type=_positive_int, required=True, metavar="N", help="transactions to write"
    )
    gen.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="DIR",
        help="folder for train_transaction.csv and train_identity.csv (created)",
    )
    gen.add_argument(
        "--seed", type=int, default=0, metavar="N", help="random seed; same seed, same files (0)"
    )
    gen.add_argument(
        "--fraud-rate",
        type=_rate,
        default=0.035,
        metavar="R",
        help="share of fraudulent transactions, between 0 and 1 (0.035, as in IEEE-CIS)",
    )

    _add(
        sub,
        "doctor",
        "check this host for the daemon: state dir, inbox, disk, file system, inotify, "
        "GPUs, lock, systemd; exit 1 on any failure",
        parents=[common],
    )

    report = _add(
        sub,
        "report",
        "write an ended job's HTML report (if missing) and print its path",
        parents=[common],
    )
    report.add_argument("job", metavar="JOB", help=JOB_HELP + "; it must have ended")
    report.add_argument("--force", action="store_true", help="rewrite an existing report")

    export = _add(
        sub,
        "export-optuna",
        "write a job's studies to an Optuna journal file (for optuna-dashboard)",
        parents=[common],
    )
    export.add_argument("job", metavar="JOB", help=JOB_HELP)
    export.add_argument("--out", type=Path, required=True, metavar="FILE", help="journal file")
    export.add_argument("--force", action="store_true", help="replace an existing FILE")
    return parser
