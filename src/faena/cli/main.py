"""The ``faena`` command.

argparse rather than typer: typer 0.29 imports pydantic at start-up (~0.1 s here), which
alone would break the 150 ms budget of ``faena --help`` and ``faena validate``
(docs/decisions.md). Heavy libraries are imported inside the commands that need them.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from faena import __version__

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_INTERRUPTED = 0, 1, 2, 130

DESCRIPTION = "faena: pipelines as code, run as DAGs of jobs on ephemeral workers."
EPILOG = """\
exit codes: 0 success, 1 pipeline failed, 2 invalid input, 130 interrupted.
state lives in ./.faena unless FAENA_HOME says otherwise.
docs: docs/cli.md and docs/pipeline-format.md"""


def _positive(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="faena",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"faena {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_text, description=help_text)

    def json_flag(p: argparse.ArgumentParser) -> None:
        p.add_argument("--json", action="store_true", help="machine-readable output")

    run = command("run", "Run a pipeline on this machine and show its progress live.")
    run.add_argument(
        "file",
        nargs="?",
        type=Path,
        default=Path("faena.yml"),
        help="pipeline file (default: faena.yml)",
    )
    run.add_argument(
        "-j",
        "--jobs",
        type=_positive,
        default=None,
        help="jobs run at once (default: CPU count; env FAENA_JOBS)",
    )
    json_flag(run)
    run.add_argument(
        "--keep-workspace", action="store_true", help="keep each job's workspace directory"
    )

    validate = command("validate", "Check a pipeline file; print every error with its place.")
    validate.add_argument(
        "file",
        nargs="?",
        type=Path,
        default=Path("faena.yml"),
        help="pipeline file (default: faena.yml)",
    )
    json_flag(validate)

    resume = command("resume", "Continue a run whose process died; finished jobs stay done.")
    resume.add_argument("run_id", metavar="RUN", help="run id, unique prefix, or 'last'")
    resume.add_argument(
        "-j", "--jobs", type=_positive, default=None, help="jobs run at once (default: CPU count)"
    )
    json_flag(resume)

    runs = command("runs", "List recent runs, newest first.")
    runs.add_argument("-n", "--limit", type=_positive, default=20, help="how many (default 20)")
    json_flag(runs)

    logs = command("logs", "Print the output of a run, or of one of its jobs.")
    logs.add_argument("run_id", metavar="RUN", help="run id, unique prefix, or 'last'")
    logs.add_argument("job", metavar="JOB", nargs="?", help="job name, key or id (prefix ok)")
    logs.add_argument(
        "-t",
        "--timestamps",
        action="store_true",
        help="prefix each line with the time it was written",
    )
    json_flag(logs)
    return parser


def dispatch(args: argparse.Namespace) -> int:
    if args.command == "run":
        from faena.cli.run import run_command

        return run_command(args.file, jobs=args.jobs, json_out=args.json,
                           keep_workspace=args.keep_workspace)  # fmt: skip
    if args.command == "validate":
        from faena.cli.validate import validate_command

        return validate_command(args.file, args.json)
    if args.command == "resume":
        from faena.cli.run import resume_command

        return resume_command(args.run_id, jobs=args.jobs, json_out=args.json)
    if args.command == "runs":
        from faena.cli.inspect import runs_command

        return runs_command(args.limit, args.json)
    if args.command == "logs":
        from faena.cli.inspect import logs_command

        return logs_command(args.run_id, args.job, args.json, timestamps=args.timestamps)
    raise AssertionError(args.command)


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        sys.exit(EXIT_INVALID)
    from faena.settings import SettingsError

    try:
        code = dispatch(args)
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = EXIT_INVALID
    except BrokenPipeError:
        # `faena logs ... | head`: the reader left; say nothing more (Python's recipe).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        code = EXIT_FAILED
    sys.exit(code)
