"""The ``sentinel`` command line.

Every subcommand takes ``--state-dir`` (env ``SENTINEL_STATE_DIR``) and ``--config`` (env
``SENTINEL_CONFIG``); ``--json`` gives output for scripts, errors included (``{"error":
{"kind", "message", "exit_code"}}`` on stdout, the same exit code). Exit codes: 0 success,
1 the command ran and found a problem (damage, failure, a job that failed or was
cancelled, an unknown job, a refused request), 2 bad usage or settings (a state directory
that does not exist included), 4 ``wait`` timed out, 130 interrupted (Ctrl-C).

Only ``run`` creates the state directory; every other command that reads or writes one
refuses a missing one (``doctor`` reports it as a check, ``gen-data`` uses none).
"""

from __future__ import annotations

import argparse
import errno
import os
import re
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import orjson

from sentinel_daemon.errors import SentinelError, StateDirMissing
from sentinel_daemon.layout import EVENTS_DIR
from sentinel_daemon.logs import configure_logging
from sentinel_daemon.printable import json_safe, printable
from sentinel_daemon.settings import Settings, load_settings
from sentinel_daemon.tools.cliargs import UsageError, build_parser

EXIT_OK = 0
EXIT_PROBLEM = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 4
EXIT_INTERRUPTED = 130

#: Commands that need no existing state directory: ``run`` creates it, ``doctor`` says
#: whether it exists as one of its checks, ``gen-data`` writes elsewhere.
NO_STATE_DIR = frozenset({"run", "doctor", "gen-data"})


def _settings(args: argparse.Namespace) -> Settings:
    settings = load_settings(args.config)
    if args.state_dir is not None:
        settings.state_dir = args.state_dir
    return settings


def _print_json(obj: object) -> None:
    sys.stdout.write(orjson.dumps(obj, option=orjson.OPT_INDENT_2).decode() + "\n")


def cmd_tail(args: argparse.Namespace, settings: Settings) -> int:
    from sentinel_daemon.tools.tail import (
        Follower,
        RecordFilter,
        follow,
        human_line,
        last_records,
        raw_line,
    )

    events_dir = settings.state_dir / EVENTS_DIR
    keep = RecordFilter(tuple(args.type), args.job)
    fmt = raw_line if args.json else human_line
    # Take the follow position first, so nothing appended while the past records are
    # printed falls between the two; the follower skips seqs already printed.
    follower = Follower.at_end(events_dir)
    past = last_records(events_dir, None if args.all else max(args.lines, 0), keep)
    for record in past:
        print(fmt(record), flush=False)
    sys.stdout.flush()
    if not args.follow:
        return EXIT_OK
    if past:
        follower.after_seq = past[-1].seq
    stopping = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    try:
        for record in follow(events_dir, follower, stop=lambda: stopping):
            if keep(record):
                print(fmt(record), flush=True)
    except KeyboardInterrupt:
        pass
    return EXIT_OK


def cmd_log(args: argparse.Namespace, settings: Settings) -> int:
    from sentinel_daemon.tools.repair import render as render_repair
    from sentinel_daemon.tools.repair import repair
    from sentinel_daemon.tools.verify import render as render_verify
    from sentinel_daemon.tools.verify import verify

    if args.log_command == "verify":
        report = verify(settings.state_dir)
        if args.json:
            _print_json(report.as_dict())
        else:
            _print_lines(*render_verify(report))
        return EXIT_OK if report.ok else EXIT_PROBLEM
    result = repair(
        settings.state_dir,
        truncate_corrupt=args.truncate_corrupt,
        segment_bytes=settings.eventlog.segment_bytes,
    )
    if args.json:
        _print_json({"action": result.action, **result.detail})
    else:
        _print_lines(*render_repair(result))
    return EXIT_OK if result.ok else EXIT_PROBLEM


def _print_lines(out: list[str], err: list[str]) -> None:
    for line in out:
        print(printable(line))
    for line in err:
        print(printable(line), file=sys.stderr)


def cmd_gen_data(args: argparse.Namespace, settings: Settings) -> int:
    from sentinel_daemon.ml.synth import generate

    tx, ident = generate(args.rows, args.out, seed=args.seed, fraud_rate=args.fraud_rate)
    if args.json:
        _print_json({"transactions": str(tx), "identity": str(ident)})
    else:
        print(f"wrote {tx} and {ident}")
    return EXIT_OK


def cmd_submit(args: argparse.Namespace, settings: Settings) -> int:
    from sentinel_daemon.tools.submit import submit

    done = submit(args.file, settings)
    if args.json:
        _print_json(
            {
                "job_id": done.job_id,
                "file": str(done.file),
                "inbox_path": str(done.inbox_path),
                "daemon_running": done.daemon.running,
                "warnings": list(done.warnings),
            }
        )
    else:
        print(printable(done.job_id))
        for warning in done.warnings:
            print(f"sentinel: warning: {printable(warning)}", file=sys.stderr)
    return EXIT_OK


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    import psutil

    from sentinel_daemon.log.store import read_state
    from sentinel_daemon.ml.devices import discover_gpus
    from sentinel_daemon.tools.status import (
        claimed_commands,
        render_status,
        status_report,
        worker_beats,
    )

    state = read_state(settings.state_dir)
    pinned = settings.workers.gpus  # the daemon's GPUs, when the settings name them
    report = status_report(
        state,
        settings.state_dir,
        job_id=args.job,
        gpus=list(pinned) if pinned is not None else discover_gpus(),
        pid_alive=psutil.pid_exists,
        claimed=claimed_commands(settings.state_dir),
        beats=worker_beats(settings.state_dir),
    )
    if args.json:
        _print_json(report)
    else:
        print(render_status(report))
    return EXIT_OK


def cmd_wait(args: argparse.Namespace, settings: Settings) -> int:
    from sentinel_daemon.tools.wait import (
        DEFAULT_GRACE_S,
        Outcome,
        Pending,
        progress_line,
        terminal_width,
        wait_for_job,
    )

    tty = sys.stderr.isatty()
    drawn = False

    def draw(job: dict[str, Any] | None, pending: Pending | None) -> None:
        nonlocal drawn
        if tty:
            line = progress_line(args.job, job, terminal_width() - 1, pending)
            sys.stderr.write(f"\r{line}\x1b[K")
            sys.stderr.flush()
            drawn = True

    grace = DEFAULT_GRACE_S if args.grace is None else args.grace
    try:
        result = wait_for_job(
            settings.state_dir, args.job, timeout=args.timeout, grace=grace, on_poll=draw
        )
    except KeyboardInterrupt:
        if drawn:
            sys.stderr.write("\n")
        return EXIT_INTERRUPTED
    if drawn:
        sys.stderr.write("\n")
    job = result.job
    if result.outcome is Outcome.UNKNOWN:
        return _error(
            args,
            EXIT_PROBLEM,
            "unknown_job",
            f"no job {args.job!r} in {settings.state_dir}: not in the event log, and no file "
            f"of it in inbox/ or claimed/ for {grace:g}s; check the id with `sentinel status` "
            f"(a job's id is the one `sentinel submit` printed)",
            job_id=args.job,
        )
    if result.outcome is Outcome.REJECTED:
        return _error(
            args,
            EXIT_PROBLEM,
            "rejected",
            f"job {args.job} was rejected: {result.detail}",  # escaped by _error
            job_id=args.job,
        )
    if args.json:
        _print_json(job if job is not None else {"job_id": args.job, "status": "pending"})
    if result.outcome is Outcome.TIMED_OUT:
        if job:
            where = "still " + job["status"]
        elif result.detail:
            where = f"its file is still waiting: {result.detail}"
        else:
            where = "not in the log yet"
        print(
            printable(
                f"sentinel: timed out after {args.timeout:g}s waiting for job {args.job} ({where})"
            ),
            file=sys.stderr,
        )
        return EXIT_TIMEOUT
    assert job is not None
    if job["status"] == "completed":
        if not args.json:
            best = job["best_value"]
            tail = "" if best is None else f"; best {best:.4f} (trial {job['best_trial']})"
            print(printable(f"job {args.job} completed{tail}"))
        return EXIT_OK
    reason = f": {job['reason']}" if job["reason"] else ""
    print(printable(f"sentinel: job {args.job} {job['status']}{reason}"), file=sys.stderr)
    return EXIT_PROBLEM


def cmd_cancel(args: argparse.Namespace, settings: Settings) -> int:
    from datetime import UTC, datetime

    from sentinel_daemon.log.store import read_state
    from sentinel_daemon.tools.cancel import request_cancel

    state = read_state(settings.state_dir)
    path = request_cancel(settings.state_dir, args.job, state, now=datetime.now(UTC))
    if args.json:
        _print_json({"job_id": args.job, "request": str(path)})
    else:
        print(printable(f"cancel requested for {args.job}; the daemon records job.cancelled"))
    return EXIT_OK


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from sentinel_daemon.daemon.service import run_daemon

    if args.workers is not None and args.workers < 0:
        print("sentinel: --workers must be 0 or more", file=sys.stderr)
        return EXIT_USAGE
    return run_daemon(settings, workers=args.workers)


def cmd_report(args: argparse.Namespace, settings: Settings) -> int:
    from sentinel_daemon.core.ids import check_job_id
    from sentinel_daemon.layout import report_index
    from sentinel_daemon.tools.report import write_report

    index = report_index(settings.state_dir, check_job_id(args.job))
    written = args.force or not index.is_file()
    if written:
        index = write_report(settings.state_dir, args.job)
    if args.json:
        _print_json({"job_id": args.job, "report": str(index), "written": written})
    else:
        print(printable(index))
    return EXIT_OK


def cmd_export_optuna(args: argparse.Namespace, settings: Settings) -> int:
    from sentinel_daemon.tools.export import export_optuna

    counts = export_optuna(settings.state_dir, args.job, args.out, force=args.force)
    if args.json:
        _print_json({"job_id": args.job, "out": str(args.out), "studies": counts})
    else:
        for name, n in counts.items():
            print(printable(f"{name}: {n} trials"))
        print(printable(f"wrote {args.out}; open it with: optuna-dashboard {args.out}"))
    return EXIT_OK


def cmd_doctor(args: argparse.Namespace, settings: Settings) -> int:
    from sentinel_daemon.tools.doctor import failed, render, report, run_checks

    checks = run_checks(settings.state_dir, rescan_s=settings.inbox.rescan_seconds)
    if args.json:
        _print_json(report(settings.state_dir, checks))
    else:
        print("\n".join(map(printable, render(settings.state_dir, checks).split("\n"))))
    return EXIT_PROBLEM if failed(checks) else EXIT_OK


COMMANDS = {
    "run": cmd_run,
    "submit": cmd_submit,
    "status": cmd_status,
    "wait": cmd_wait,
    "cancel": cmd_cancel,
    "tail": cmd_tail,
    "log": cmd_log,
    "gen-data": cmd_gen_data,
    "doctor": cmd_doctor,
    "report": cmd_report,
    "export-optuna": cmd_export_optuna,
}


def _kind(exc: BaseException) -> str:
    """``UnknownJob`` -> ``unknown_job``: the ``kind`` of a JSON error."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(exc).__name__).lower()


def _error(
    args: argparse.Namespace | None, code: int, kind: str, message: str, **facts: Any
) -> int:
    """Report an error: as JSON on stdout under ``--json``, always as a line on stderr.

    The line escapes control characters (:func:`~sentinel_daemon.printable.printable`): a
    message may quote a file name or data from outside.
    """
    if args is not None and getattr(args, "json", False):
        safe = {k: json_safe(v) if isinstance(v, str) else v for k, v in facts.items()}
        error = {"kind": kind, "message": json_safe(message), "exit_code": code, **safe}
        _print_json({"error": error})
    print(f"sentinel: {printable(message)}", file=sys.stderr)
    return code


def _state_dir_source(args: argparse.Namespace) -> str:
    """Where the state directory setting came from, for an error that names it."""
    if args.state_dir is not None:
        return "--state-dir"
    if os.environ.get("SENTINEL_STATE_DIR"):
        return "SENTINEL_STATE_DIR"
    if args.config is not None:
        return f"state_dir in {args.config}, or its default"
    return "the default state_dir; set --state-dir or SENTINEL_STATE_DIR"


def _require_state_dir(args: argparse.Namespace, settings: Settings) -> None:
    state_dir = Path(settings.state_dir)
    if not state_dir.is_dir():
        raise StateDirMissing(state_dir, _state_dir_source(args), not_a_dir=state_dir.exists())


def _facts(exc: BaseException) -> dict[str, Any]:
    """The attributes of an error worth a field of its own in JSON."""
    keys = ("job_id", "state_dir", "path", "field", "where", "holder_pid", "segment", "line")
    return {k: str(v) if isinstance(v, Path) else v for k in keys if (v := getattr(exc, k, None))}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["worker"]:
        from sentinel_daemon.worker.loop import main as worker_main

        return worker_main(argv[1:])
    try:
        args = build_parser().parse_args(argv)
    except UsageError as exc:
        if "--json" in argv:
            _print_json(
                {"error": {"kind": "usage", "message": exc.message, "exit_code": EXIT_USAGE}}
            )
        sys.stderr.write(exc.usage + exc.message + "\n")
        return EXIT_USAGE
    try:
        settings = _settings(args)
    except SentinelError as exc:
        return _error(args, EXIT_USAGE, "settings", str(exc))
    configure_logging(settings.logging.level, settings.logging.format)
    try:
        if args.command not in NO_STATE_DIR:
            _require_state_dir(args, settings)
        return COMMANDS[args.command](args, settings)
    except StateDirMissing as exc:
        return _error(args, EXIT_USAGE, "state_dir_missing", str(exc), **_facts(exc))
    except SentinelError as exc:
        return _error(args, EXIT_PROBLEM, _kind(exc), str(exc), **_facts(exc))
    except PermissionError as exc:
        return _error(
            args,
            EXIT_PROBLEM,
            "permission_denied",
            f"{exc.filename or 'a file'}: permission denied; the state directory is "
            f"readable by the daemon's operators group only (see docs/install.md)",
        )
    except BrokenPipeError:
        # `sentinel tail | head` closes the pipe early; that is not an error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except OSError as exc:
        return _error(args, EXIT_PROBLEM, "os_error", os_error_message(exc))


def os_error_message(exc: OSError) -> str:
    """A failed system call, said for an operator: the path, what failed, what to do."""
    where = exc.filename if exc.filename is not None else "a file"
    what = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        todo = (
            f"the file system holding it is full; free space there (`df -h {where}` shows "
            f"how much is left) and run the command again: nothing half-written was left"
        )
    elif exc.errno == errno.EROFS:
        todo = "the file system is read-only; remount it read-write and run the command again"
    else:
        todo = "fix that and run the command again"
    return f"{where}: {what}; {todo}"


if __name__ == "__main__":
    sys.exit(main())
