"""The ``faena`` command. Heavy libraries are imported inside commands, never at the top."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from faena import __version__

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_INTERRUPTED = 0, 1, 2, 130

app = typer.Typer(
    name="faena",
    help="faena: pipelines as code, run as DAGs of jobs on ephemeral workers.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

FileArg = Annotated[Path, typer.Argument(help="Pipeline file.", show_default=True)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def _version(value: bool) -> None:
    if value:
        print(f"faena {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """faena: pipelines as code, run as DAGs of jobs on ephemeral workers."""


def fail(message: str, code: int = EXIT_INVALID) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise typer.Exit(code)


@app.command()
def validate(
    file: FileArg = Path("faena.yml"),
    json_out: JsonOpt = False,
) -> None:
    """Check a pipeline file; print every error with file, line, column and field."""
    from faena.cli.validate import validate_command

    raise typer.Exit(validate_command(file, json_out))


@app.command()
def run(
    file: FileArg = Path("faena.yml"),
    jobs: Annotated[
        int | None,
        typer.Option("-j", "--jobs", min=1, help="Jobs run at once (default: CPU count)."),
    ] = None,
    json_out: JsonOpt = False,
    keep_workspace: Annotated[
        bool, typer.Option("--keep-workspace", help="Keep each job's workspace directory.")
    ] = False,
) -> None:
    """Run a pipeline on this machine and show its progress live."""
    from faena.cli.run import run_command

    raise typer.Exit(run_command(file, jobs=jobs, json_out=json_out, keep_workspace=keep_workspace))


@app.command()
def resume(
    run_id: Annotated[str, typer.Argument(help="Run id, unique prefix, or 'last'.")],
    jobs: Annotated[int | None, typer.Option("-j", "--jobs", min=1)] = None,
    json_out: JsonOpt = False,
) -> None:
    """Continue a run whose process died: finished jobs stay done, interrupted ones rerun."""
    from faena.cli.run import resume_command

    raise typer.Exit(resume_command(run_id, jobs=jobs, json_out=json_out))


@app.command()
def runs(
    limit: Annotated[int, typer.Option("-n", "--limit", min=1, help="How many.")] = 20,
    json_out: JsonOpt = False,
) -> None:
    """List recent runs, newest first."""
    from faena.cli.inspect import runs_command

    raise typer.Exit(runs_command(limit, json_out))


@app.command()
def logs(
    run_id: Annotated[str, typer.Argument(help="Run id, unique prefix, or 'last'.")],
    job: Annotated[str | None, typer.Argument(help="Job name, key or id (prefix ok).")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Print the logs of a run, or of one of its jobs."""
    from faena.cli.inspect import logs_command

    raise typer.Exit(logs_command(run_id, job, json_out))


def main() -> None:
    app()
