"""The ``sentinel`` command line.

Every subcommand takes ``--state-dir`` (env ``SENTINEL_STATE_DIR``) and ``--config`` (env
``SENTINEL_CONFIG``); ``--json`` gives output for scripts. Exit codes: 0 success, 1 the
command ran and found a problem (damage, failure, a job that failed or was cancelled, a
refused request), 2 bad usage or settings, 4 ``wait`` timed out, 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

import orjson

from sentinel_daemon import __version__
from sentinel_daemon.errors import LogError, SentinelError, StateDirLocked
from sentinel_daemon.logs import configure_logging
from sentinel_daemon.settings import Settings, load_settings

EXIT_OK = 0
EXIT_PROBLEM = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 4
EXIT_INTERRUPTED = 130


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
    common.add_argument("--json", action="store_true", help="machine-readable output")
    return common


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be 0 or more seconds, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = argparse.ArgumentParser(
        prog="sentinel", description="Crash-safe training daemon for fraud-detection models."
    )
    parser.add_argument("--version", action="version", version=f"sentinel {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", parents=[common], help="the daemon, in the foreground")
    run.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="local worker processes (default: workers.count, else one per GPU, else 1)",
    )

    submit = sub.add_parser(
        "submit", parents=[common], help="validate a job file and place it in the inbox"
    )
    submit.add_argument("file", type=Path, metavar="FILE", help="job file (.yaml, .yml, .json)")
    status = sub.add_parser(
        "status", parents=[common], help="jobs, stages, trials, best scores, workers, GPUs"
    )
    status.add_argument("job", nargs="?", default=None, metavar="JOB", help="only this job")
    wait = sub.add_parser(
        "wait",
        parents=[common],
        help="block until a job ends; exit 0 completed, 1 failed or cancelled, 4 timeout",
    )
    wait.add_argument("job", metavar="JOB")
    wait.add_argument(
        "--timeout", type=_seconds, default=None, metavar="S", help="give up after S seconds"
    )
    cancel = sub.add_parser(
        "cancel", parents=[common], help="ask the daemon to cancel a running job"
    )
    cancel.add_argument("job", metavar="JOB")

    tail = sub.add_parser("tail", parents=[common], help="show (and follow) the event log")
    tail.add_argument("-f", "--follow", action="store_true", help="keep printing new records")
    tail.add_argument("-n", "--lines", type=int, default=20, help="how many past records (20)")
    tail.add_argument("--all", action="store_true", help="every past record")
    tail.add_argument(
        "--type",
        action="append",
        default=[],
        metavar="T",
        help="only these types; shell patterns such as 'trial.*' (repeatable)",
    )
    tail.add_argument("--job", default=None, metavar="J", help="only records of job J")

    logp = sub.add_parser("log", help="check or repair the event log")
    logsub = logp.add_subparsers(dest="log_command", required=True, metavar="ACTION")
    logsub.add_parser("verify", parents=[common], help="check every record; non-zero on damage")
    rep = logsub.add_parser(
        "repair",
        parents=[common],
        help="cut a torn tail after a backup (the daemon must be stopped)",
    )
    rep.add_argument(
        "--truncate-corrupt",
        action="store_true",
        help="also cut from a corrupt record in the middle on (records after it "
        "are lost; they stay in the backup)",
    )

    # `sentinel worker ...` is handed whole to sentinel_daemon.worker.loop.main (see main()); it
    # is listed here for --help.
    sub.add_parser("worker", add_help=False, help="one worker process (`sentinel worker --help`)")

    gen = sub.add_parser(
        "gen-data", parents=[common], help="write a synthetic data set in the IEEE-CIS file layout"
    )
    gen.add_argument("--rows", type=int, required=True)
    gen.add_argument("--out", type=Path, required=True)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--fraud-rate", type=float, default=0.035)

    sub.add_parser(
        "doctor",
        parents=[common],
        help="check this host for the daemon: state dir, inbox, disk, file system, inotify, "
        "GPUs, lock, systemd; exit 1 on any failure",
    )

    report = sub.add_parser(
        "report",
        parents=[common],
        help="write an ended job's HTML report (if missing) and print its path",
    )
    report.add_argument("job", metavar="JOB")
    report.add_argument("--force", action="store_true", help="rewrite an existing report")

    export = sub.add_parser(
        "export-optuna",
        parents=[common],
        help="write a job's studies to an Optuna journal file (for optuna-dashboard)",
    )
    export.add_argument("job", metavar="JOB")
    export.add_argument("--out", type=Path, required=True, metavar="FILE", help="journal file")
    export.add_argument("--force", action="store_true", help="replace an existing FILE")
    return parser


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

    events_dir = settings.state_dir / "events"
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
        print(line)
    for line in err:
        print(line, file=sys.stderr)


def cmd_gen_data(args: argparse.Namespace, settings: Settings) -> int:
    from sentinel_daemon.ml.synth import generate

    tx, ident = generate(args.rows, args.out, seed=args.seed, fraud_rate=args.fraud_rate)
    if args.json:
        _print_json({"transactions": str(tx), "identity": str(ident)})
    else:
        print(f"wrote {tx} and {ident}")
    return EXIT_OK


def cmd_submit(args: argparse.Namespace, settings: Settings) -> int:
    from sentinel_daemon.core.jobspec import JobSpecError
    from sentinel_daemon.tools.submit import submit

    try:
        done = submit(args.file, settings)
    except JobSpecError as exc:
        print(f"sentinel: {exc}", file=sys.stderr)
        return EXIT_PROBLEM
    if args.json:
        _print_json(
            {"job_id": done.job_id, "file": str(done.file), "inbox_path": str(done.inbox_path)}
        )
    else:
        print(done.job_id)
    return EXIT_OK


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    import psutil

    from sentinel_daemon.log.store import read_state
    from sentinel_daemon.ml.devices import discover_gpus
    from sentinel_daemon.tools.status import render_status, status_report

    state = read_state(settings.state_dir)
    report = status_report(
        state,
        settings.state_dir,
        job_id=args.job,
        gpus=discover_gpus(),
        pid_alive=psutil.pid_exists,
    )
    if args.json:
        _print_json(report)
    else:
        print(render_status(report))
    return EXIT_OK


def cmd_wait(args: argparse.Namespace, settings: Settings) -> int:
    from sentinel_daemon.tools.wait import progress_line, terminal_width, wait_for_job

    tty = sys.stderr.isatty()
    drawn = False

    def draw(job: dict[str, object] | None) -> None:
        nonlocal drawn
        if tty:
            line = progress_line(args.job, job, terminal_width() - 1)
            sys.stderr.write(f"\r{line}\x1b[K")
            sys.stderr.flush()
            drawn = True

    try:
        ended, job = wait_for_job(settings.state_dir, args.job, timeout=args.timeout, on_poll=draw)
    except KeyboardInterrupt:
        if drawn:
            sys.stderr.write("\n")
        return EXIT_INTERRUPTED
    if drawn:
        sys.stderr.write("\n")
    if args.json:
        _print_json(job if job is not None else {"job_id": args.job, "status": "unknown"})
    if not ended:
        where = "still " + job["status"] if job else "not in the log yet"
        print(
            f"sentinel: timed out after {args.timeout:g}s waiting for job {args.job} ({where})",
            file=sys.stderr,
        )
        return EXIT_TIMEOUT
    assert job is not None
    if job["status"] == "completed":
        if not args.json:
            best = job["best_value"]
            tail = "" if best is None else f"; best {best:.4f} (trial {job['best_trial']})"
            print(f"job {args.job} completed{tail}")
        return EXIT_OK
    reason = f": {job['reason']}" if job["reason"] else ""
    print(f"sentinel: job {args.job} {job['status']}{reason}", file=sys.stderr)
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
        print(f"cancel requested for {args.job}; the daemon records job.cancelled")
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
        print(index)
    return EXIT_OK


def cmd_export_optuna(args: argparse.Namespace, settings: Settings) -> int:
    from sentinel_daemon.tools.export import export_optuna

    counts = export_optuna(settings.state_dir, args.job, args.out, force=args.force)
    if args.json:
        _print_json({"job_id": args.job, "out": str(args.out), "studies": counts})
    else:
        for name, n in counts.items():
            print(f"{name}: {n} trials")
        print(f"wrote {args.out}; open it with: optuna-dashboard {args.out}")
    return EXIT_OK


def cmd_doctor(args: argparse.Namespace, settings: Settings) -> int:
    from sentinel_daemon.tools.doctor import failed, render, report, run_checks

    checks = run_checks(settings.state_dir, rescan_s=settings.inbox.rescan_seconds)
    if args.json:
        _print_json(report(settings.state_dir, checks))
    else:
        print(render(settings.state_dir, checks))
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


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["worker"]:
        from sentinel_daemon.worker.loop import main as worker_main

        return worker_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        settings = _settings(args)
    except SentinelError as exc:
        print(f"sentinel: {exc}", file=sys.stderr)
        return EXIT_USAGE
    configure_logging(settings.logging.level, settings.logging.format)
    try:
        return COMMANDS[args.command](args, settings)
    except (LogError, StateDirLocked) as exc:
        print(f"sentinel: {exc}", file=sys.stderr)
        return EXIT_PROBLEM
    except SentinelError as exc:
        print(f"sentinel: {exc}", file=sys.stderr)
        return EXIT_PROBLEM
    except PermissionError as exc:
        print(
            f"sentinel: {exc.filename or 'a file'}: permission denied; the state directory is "
            f"readable by the daemon's operators group only (see docs/install.md)",
            file=sys.stderr,
        )
        return EXIT_PROBLEM
    except BrokenPipeError:
        # `sentinel tail | head` closes the pipe early; that is not an error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
