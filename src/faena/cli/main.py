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


COMMANDS = {
    "run": "Run a pipeline on this machine and show its progress live.",
    "validate": "Check a pipeline file; print every error with its place.",
    "resume": "Continue a run whose process died; finished jobs stay done.",
    "runs": "List recent runs, newest first.",
    "logs": "Print the output of a run, or of one of its jobs.",
    "server": "Serve the HTTP API; --with-agent also runs jobs on this machine.",
    "agent": "Make this machine a node of a faena server (runs its jobs).",
    "nodes": "List the nodes of a faena server, with their load.",
    "token": "Create, list or revoke API and agent tokens on a faena server.",
    "exec": "Run a command where a paused failed job ran (faena exec RUN JOB -- CMD).",
    "events": "faena events replay [--since N|TIME]: rebuild run rows from the event log.",
    "submit": "Submit a pipeline to a faena server (FAENA_SERVER, FAENA_TOKEN).",
    "status": "Show a run on a faena server.",
    "cancel": "Cancel a run or a job on a faena server.",
    "retry": "Re-run a finished run's failed and cancelled jobs on a faena server.",
}


def build_parser() -> argparse.ArgumentParser:
    """The top level: the command name; each command parses the rest on its own."""
    listing = "\n".join(f"  {name:<10}{text}" for name, text in COMMANDS.items())
    parser = argparse.ArgumentParser(
        prog="faena",
        usage="faena [-h] [--version] COMMAND [ARGS ...]",
        description=f"{DESCRIPTION}\n\ncommands:\n{listing}",
        epilog=EPILOG + "\nhelp on a command: faena COMMAND --help",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"faena {__version__}")
    parser.add_argument("command", nargs="?", choices=list(COMMANDS), metavar="COMMAND",
                        help=argparse.SUPPRESS)  # fmt: skip
    parser.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return parser


def command_parser(name: str) -> argparse.ArgumentParser:
    """One command's options; parsed intermixed, so flags may come after positionals."""
    p = argparse.ArgumentParser(prog=f"faena {name}", description=COMMANDS[name])

    def json_flag() -> None:
        p.add_argument("--json", action="store_true", help="machine-readable output")

    def pipeline_file() -> None:
        p.add_argument("file", nargs="?", type=Path, default=Path("faena.yml"),
                       help="pipeline file (default: faena.yml)")  # fmt: skip

    def server_flags() -> None:
        p.add_argument(
            "--server",
            default=None,
            help="server URL (env FAENA_SERVER; default http://127.0.0.1:8080)",
        )
        p.add_argument("--token", default=None, help="bearer token (env FAENA_TOKEN)")

    def profile_flag() -> None:
        p.add_argument("--profile", default=None,
                       help="config file profile (env FAENA_PROFILE)")  # fmt: skip

    def jobs_flag() -> None:
        p.add_argument("-j", "--jobs", type=_positive, default=None,
                       help="jobs run at once (default: CPU count; env FAENA_JOBS)")  # fmt: skip

    def pause_flag() -> None:
        p.add_argument("--pause-on-failure", metavar="DURATION", default=None,
                       help="keep a failed step's worker alive this long for debugging "
                            "(e.g. 10m)")  # fmt: skip

    def provider_flag() -> None:
        p.add_argument("--provider", default=None, choices=["local", "docker", "kubernetes"],
                       help="where jobs run: local processes, docker containers or "
                            "kubernetes pods (env FAENA_PROVIDER, default local)")  # fmt: skip

    if name == "run":
        pipeline_file()
        jobs_flag()
        json_flag()
        pause_flag()
        p.add_argument("--keep-workspace", action="store_true",
                       help="keep each job's workspace directory")  # fmt: skip
        provider_flag()
    elif name == "validate":
        pipeline_file()
        json_flag()
    elif name == "resume":
        p.add_argument("run_id", metavar="RUN", help="run id, unique prefix, or 'last'")
        jobs_flag()
        json_flag()
        p.add_argument("--keep-workspace", action="store_true",
                       help="keep each job's workspace directory")  # fmt: skip
    elif name in ("runs", "logs"):
        if name == "runs":
            p.add_argument("-n", "--limit", type=_positive, default=20,
                           help="how many (default 20)")  # fmt: skip
        else:
            p.add_argument("run_id", metavar="RUN", help="run id, unique prefix, or 'last'")
            p.add_argument("job", metavar="JOB", nargs="?",
                           help="job name, key or id (prefix ok)")  # fmt: skip
            p.add_argument("-t", "--timestamps", action="store_true",
                           help="prefix each line with the time it was written")  # fmt: skip
            p.add_argument("-f", "--follow", action="store_true",
                           help="keep printing new lines until the run ends (Ctrl-C stops "
                                "following, not the run)")  # fmt: skip
        json_flag()
        where = p.add_mutually_exclusive_group()
        where.add_argument("--server", default=None,
                           help="read from this server (env FAENA_SERVER or the config file; "
                                "default: the local store in FAENA_HOME)")  # fmt: skip
        where.add_argument("--local", action="store_true",
                           help="read the local store, even with a server configured")  # fmt: skip
        p.add_argument("--token", default=None, help="bearer token (env FAENA_TOKEN)")
        p.add_argument("--profile", default=None,
                       help="config file profile (env FAENA_PROFILE)")  # fmt: skip
    elif name in ("submit", "status", "cancel", "retry"):
        if name == "submit":
            pipeline_file()
        else:
            p.add_argument(
                "ref",
                metavar="RUN" if name == "status" else "RUN|JOB",
                help="run id, unique prefix or 'last' (or a job id for cancel)",
            )
        if name == "submit":
            pause_flag()
        if name in ("submit", "retry"):
            p.add_argument("-f", "--follow", action="store_true",
                           help="show job states and output until the run ends (Ctrl-C "
                                "stops following, not the run)")  # fmt: skip
        json_flag()
        server_flags()
        p.add_argument("--profile", default=None,
                       help="config file profile (env FAENA_PROFILE)")  # fmt: skip
    elif name == "nodes":
        json_flag()
        server_flags()
        profile_flag()
    elif name == "token":
        p.add_argument("action", choices=["create", "list", "revoke"])
        p.add_argument("name", nargs="?", metavar="NAME|ID",
                       help="create: the token's name; revoke: its id")  # fmt: skip
        p.add_argument("--agent", action="store_true",
                       help="create an agent token (may only register a node)")  # fmt: skip
        p.add_argument("--scope", action="append", default=[], metavar="SCOPE",
                       help="create: a scope to grant, e.g. job:create (repeat)")  # fmt: skip
        p.add_argument("--ttl-days", type=float, default=None, help="create: expiry in days")
        json_flag()
        server_flags()
        profile_flag()
    elif name == "events":
        p.add_argument("action", choices=["replay"])
        p.add_argument("--since", default=None, metavar="N|TIME",
                       help="events after this number, or from this time (ISO)")  # fmt: skip
        p.add_argument("--in-flight", action="store_true",
                       help="rebuild unfinished runs too (only while no server runs "
                            "them)")  # fmt: skip
        json_flag()
    elif name == "exec":
        p.usage = "faena exec [-h] RUN JOB -- COMMAND [ARG ...]\n       faena exec --resume RUN JOB"
        p.add_argument("run_id", metavar="RUN", help="run id, unique prefix, or 'last'")
        p.add_argument("job", metavar="JOB", help="job name, key or id")
        p.add_argument("--resume", action="store_true",
                       help="end the pause: the job finishes as failed")  # fmt: skip
        p.add_argument("--exec-id", default=None, help="repeat a request (its output again)")
        server_flags()
        profile_flag()
    elif name == "agent":
        p.add_argument("--server", default=None,
                       help="server URL, or every replica's URL comma-separated "
                            "(env FAENA_SERVER)")  # fmt: skip
        p.add_argument("--token", default=None, help="this agent's token (env FAENA_TOKEN)")
        p.add_argument("--name", default=None, help="node name (default: the host name)")
        p.add_argument(
            "--labels",
            default=None,
            help="extra labels, comma-separated (os, arch, provider are added)",
        )
        p.add_argument(
            "--capacity",
            default=None,
            help="what the node offers, e.g. cpu=2,memory=4Gi (cpu sets slots)",
        )
        provider_flag()
        jobs_flag()
    elif name == "server":
        p.add_argument("--host", default="127.0.0.1", help="address (default 127.0.0.1)")
        p.add_argument("--port", type=_positive, default=8080, help="port (default 8080)")
        p.add_argument("--admin-token", default=None,
                       help="admin token (env FAENA_ADMIN_TOKEN; default: created at first "
                            "start and printed once)")  # fmt: skip
        p.add_argument("--with-agent", action="store_true",
                       help="also run jobs on this machine (one command, one machine)")  # fmt: skip
        p.add_argument("--advertise-url", default=None,
                       help="where other replicas reach this one (env FAENA_ADVERTISE_URL; "
                            "default http://HOST:PORT)")  # fmt: skip
        p.add_argument("--replica", default=None,
                       help="this replica's stable name (env FAENA_REPLICA; default: "
                            "host name and port)")  # fmt: skip
        jobs_flag()
    return p


def dispatch(args: argparse.Namespace) -> int:
    if args.command == "run":
        from faena.cli.run import run_command

        return run_command(args.file, jobs=args.jobs, json_out=args.json,
                           keep_workspace=args.keep_workspace,
                           pause_on_failure=args.pause_on_failure,
                           provider=args.provider)  # fmt: skip
    if args.command == "validate":
        from faena.cli.validate import validate_command

        return validate_command(args.file, args.json)
    if args.command == "resume":
        from faena.cli.run import resume_command

        return resume_command(args.run_id, jobs=args.jobs, json_out=args.json,
                              keep_workspace=args.keep_workspace)  # fmt: skip
    if args.command == "runs":
        from faena.cli.inspect import runs_command

        return runs_command(args.limit, args.json, server=args.server, token=args.token,
                            profile=args.profile, local=args.local)  # fmt: skip
    if args.command == "logs":
        from faena.cli.inspect import logs_command

        return logs_command(args.run_id, args.job, args.json, timestamps=args.timestamps,
                            follow=args.follow, server=args.server, token=args.token,
                            profile=args.profile, local=args.local)  # fmt: skip
    if args.command in ("submit", "status", "cancel", "retry"):
        from faena.cli import client

        where = {"server": args.server, "token": args.token, "profile": args.profile}
        if args.command == "submit":
            return client.submit_command(args.file, follow=args.follow, json_out=args.json,
                                         pause_on_failure=args.pause_on_failure,
                                         **where)  # fmt: skip
        if args.command == "status":
            return client.status_command(args.ref, json_out=args.json, **where)
        if args.command == "retry":
            return client.retry_command(args.ref, follow=args.follow, json_out=args.json,
                                        **where)  # fmt: skip
        return client.cancel_command(args.ref, json_out=args.json, **where)
    if args.command == "server":
        from faena.cli.server import server_command

        return server_command(args.host, args.port, args.admin_token, args.jobs,
                              with_agent=args.with_agent, advertise_url=args.advertise_url,
                              replica=args.replica)  # fmt: skip
    if args.command == "events":
        from faena.cli.events import replay_command

        return replay_command(args.since, json_out=args.json, in_flight=args.in_flight)
    if args.command == "exec":
        from faena.cli.debug import exec_command

        return exec_command(args.run_id, args.job, args.command_line, resume=args.resume,
                            exec_id=args.exec_id, server=args.server,
                            token=args.token, profile=args.profile)  # fmt: skip
    if args.command == "agent":
        from faena.cli.agent import agent_command

        return agent_command(server=args.server, token=args.token, name=args.name,
                             labels=args.labels, capacity=args.capacity,
                             provider=args.provider,
                             jobs=args.jobs)  # fmt: skip
    if args.command == "nodes":
        from faena.cli import client

        return client.nodes_command(json_out=args.json, server=args.server, token=args.token,
                                    profile=args.profile)  # fmt: skip
    if args.command == "token":
        from faena.cli import client

        return client.token_command(args.action, args.name, agent=args.agent,
                                    scopes=args.scope, ttl_days=args.ttl_days,
                                    json_out=args.json, server=args.server,
                                    token=args.token, profile=args.profile)  # fmt: skip
    raise AssertionError(args.command)


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    top = parser.parse_args(argv)
    if top.command is None:
        parser.print_help()
        sys.exit(EXIT_INVALID)
    rest, command_line = list(top.args), []
    if top.command == "exec" and "--" in rest:
        cut = rest.index("--")
        rest, command_line = rest[:cut], rest[cut + 1 :]
    args = command_parser(top.command).parse_intermixed_args(rest)
    args.command = top.command
    args.command_line = command_line
    from faena.domain.errors import FaenaError
    from faena.settings import SettingsError

    try:
        code = dispatch(args)
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = EXIT_INVALID
    except (FaenaError, ConnectionError) as exc:
        # The store or the bus cannot be reached: said plainly, not as a traceback.
        prefix = "" if isinstance(exc, FaenaError) else "ORC-INFRA: "
        print(f"error: {prefix}{exc}", file=sys.stderr)
        code = EXIT_FAILED
    except BrokenPipeError:
        # `faena logs ... | head`: the reader left; say nothing more (Python's recipe).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        code = EXIT_FAILED
    sys.exit(code)
