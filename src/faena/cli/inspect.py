"""``faena runs`` and ``faena logs``: what the store recorded, read here or from a server.

Without a server (no ``--server``, ``FAENA_SERVER`` or config file naming one, or with
``--local``) they read the store in ``FAENA_HOME``; with one, its API. Both paths build
the same pages (``faena.api.logs.read_log_page``) and print them with the same code, so
the output is the same.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from faena.cli.log_sections import step_name
from faena.settings import Settings

if TYPE_CHECKING:
    from faena.cli.client import Api
    from faena.cli.config import ClientConfig

EXIT_OK, EXIT_INVALID, EXIT_INTERRUPTED = 0, 2, 130
PAGE = 10_000  # lines per request
POLL = 0.4  # seconds between two reads while following
API_MAX_RUNS = 500  # GET /api/v1/pipelines answers at most this many rows at a time

# (run ref, job, after, limit) -> a page as GET /api/v1/pipelines/{run}/logs answers it.
Fetch = Callable[[str, str | None, int, int], dict[str, Any]]


def _open_store(settings: Settings) -> Any:
    from faena.app import open_store

    return open_store(settings)


def _server(
    server: str | None, token: str | None, profile: str | None, local: bool
) -> ClientConfig | None:
    """The server to read from, or None to read the local store."""
    if local:
        return None
    from faena.cli.config import resolve

    config = resolve(server=server, token=token, profile=profile)
    return config if config.server else None


def _api(config: ClientConfig) -> Api:
    from faena.cli.client import Api

    return Api.from_config(config)


def _no_store(settings: Settings) -> bool:
    return not (settings.home / "faena.db").exists() and settings.database_url is None


# -- faena runs ------------------------------------------------------------------------


def runs_command(
    limit: int,
    json_out: bool,
    *,
    server: str | None = None,
    token: str | None = None,
    profile: str | None = None,
    local: bool = False,
) -> int:
    remote = _server(server, token, profile, local)
    if remote is not None:
        return _remote_runs(remote, limit, json_out)
    settings = Settings.from_env()
    if _no_store(settings):
        if json_out:
            print("[]")
        else:
            print(f"no runs yet in {settings.home}/ (start one with: faena run)")
        return 0
    return asyncio.run(_runs(settings, limit, json_out))


def _remote_runs(config: ClientConfig, limit: int, json_out: bool) -> int:
    from faena.cli.client import ClientError

    api = _api(config)
    rows: list[dict[str, Any]] = []
    try:
        while len(rows) < limit:
            want = min(limit - len(rows), API_MAX_RUNS)
            page = api.call("GET", "/api/v1/pipelines",
                            params={"limit": want, "offset": len(rows)})["items"]  # fmt: skip
            rows += page
            if len(page) < want:
                break
    except ClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    _print_runs(rows, json_out, empty=f"no runs yet on {api.base}")
    return 0


async def _runs(settings: Settings, limit: int, json_out: bool) -> int:
    from faena.cli.locks import RunLock

    store = _open_store(settings)
    await store.open()
    try:
        rows = await store.list_runs(limit=limit)
    finally:
        await store.close()
    for row in rows:
        live = RunLock.held(settings.locks, row["run_id"])
        row["interrupted"] = row["state"] in ("PENDING", "RUNNING") and not live
    _print_runs(rows, json_out, empty="no runs yet (start one with: faena run)")
    return 0


def _print_runs(rows: list[dict[str, Any]], json_out: bool, *, empty: str) -> None:
    if json_out:
        print(json.dumps(rows, default=str))
        return
    if not rows:
        print(empty)
        return
    from rich.console import Console
    from rich.table import Table

    from faena.cli.progress import fmt_duration

    table = Table(box=None, pad_edge=False)
    for col in ("RUN", "PIPELINE", "STATE", "STARTED", "DURATION"):
        table.add_column(col)
    for row in rows:
        interrupted = row.get("interrupted")
        state = row["state"] + (" (interrupted: faena resume)" if interrupted else "")
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row["created_at"]))
        end = row.get("finished_at")
        duration = fmt_duration(end - row["created_at"]) if end else ""
        table.add_row(row["run_id"], row["pipeline"], state, started, duration)
    Console().print(table)


# -- faena logs ------------------------------------------------------------------------


def logs_command(
    ref: str,
    job: str | None,
    json_out: bool,
    *,
    timestamps: bool = False,
    follow: bool = False,
    server: str | None = None,
    token: str | None = None,
    profile: str | None = None,
    local: bool = False,
) -> int:
    remote = _server(server, token, profile, local)
    if remote is not None:
        return _remote_logs(remote, ref, job, json_out, timestamps, follow)
    settings = Settings.from_env()
    if _no_store(settings):
        print(
            f"error: no runs yet in {settings.home}/ (start one with: faena run)", file=sys.stderr
        )
        return EXIT_INVALID
    return _local_logs(settings, ref, job, json_out, timestamps, follow)


def _remote_logs(
    config: ClientConfig, ref: str, job: str | None, json_out: bool, timestamps: bool, follow: bool
) -> int:
    from faena.cli.client import ClientError

    api = _api(config)

    def fetch(run: str, wanted: str | None, after: int, limit: int) -> dict[str, Any]:
        params: dict[str, Any] = {"after": after, "limit": limit}
        if wanted is not None:
            params["job"] = wanted
        page: dict[str, Any] = api.call(
            "GET", f"/api/v1/pipelines/{quote(run, safe='')}/logs", params=params
        )
        return page

    try:
        return print_logs(fetch, ref, job, json_out=json_out, timestamps=timestamps,
                          follow=follow)  # fmt: skip
    except ClientError as exc:
        sys.stdout.flush()
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


def _local_logs(
    settings: Settings, ref: str, job: str | None, json_out: bool, timestamps: bool, follow: bool
) -> int:
    from faena.api.logs import RUN_DONE, read_log_page
    from faena.cli.locks import RunLock
    from faena.domain.errors import FaenaError

    # One event loop for every read: the store's connections belong to it.
    with asyncio.Runner() as runner:
        store = _open_store(settings)
        runner.run(store.open())

        def fetch(run: str, wanted: str | None, after: int, limit: int) -> dict[str, Any]:
            return runner.run(read_log_page(store, run, wanted, after, limit))

        def check_driver(page: dict[str, Any]) -> None:
            # A run left RUNNING by a dead `faena run` would be followed for ever: say so.
            if page["state"] not in RUN_DONE and not RunLock.held(settings.locks, page["run_id"]):
                print(f"note: no `faena run` on this machine is running {page['run_id']} "
                      f"(if its process died: faena resume {page['run_id']}); "
                      "Ctrl-C stops following", file=sys.stderr)  # fmt: skip

        try:
            return print_logs(fetch, ref, job, json_out=json_out, timestamps=timestamps,
                              follow=follow, on_follow=check_driver)  # fmt: skip
        except FaenaError as exc:
            sys.stdout.flush()
            print(f"error: {exc.message}", file=sys.stderr)
            return EXIT_INVALID
        finally:
            runner.run(store.close())


def print_logs(
    fetch: Fetch,
    ref: str,
    job: str | None,
    *,
    json_out: bool,
    timestamps: bool,
    follow: bool,
    poll: float = POLL,
    on_follow: Callable[[dict[str, Any]], None] | None = None,
) -> int:
    """Print the lines of run ``ref`` (or of the jobs ``job`` names) that ``fetch`` reads.

    Without ``follow``, or when the run has already finished: each job under its header,
    in the run's order. With it: every line as it comes, in the order written, a job's
    header repeated whenever the output switches to it (as ``tail -f`` does with files),
    until nothing more can come; Ctrl-C (KeyboardInterrupt) stops it."""
    from faena.api.logs import page_done

    printer = LogPrinter(json_out=json_out, timestamps=timestamps)
    page = fetch(ref, job, 0, PAGE)
    run_id = page["run_id"]  # `last` may name another run a moment later: pin it
    if not follow or page_done(page, job):
        lines = list(page["lines"])
        while len(page["lines"]) >= PAGE:
            page = fetch(run_id, job, page["next"], PAGE)
            lines += page["lines"]
        printer.whole(page["jobs"], lines)
        return EXIT_OK
    if on_follow is not None:
        on_follow(page)
    while True:
        printer.know(page["jobs"])
        printer.stream(page["lines"])
        if len(page["lines"]) < PAGE:
            if page_done(page, job):
                return EXIT_OK
            time.sleep(poll)
        page = fetch(run_id, job, page["next"], PAGE)


class LogPrinter:
    """``faena logs`` output: ``=== job [STATE]`` headers, ``--- step`` headers, the lines
    (``-t``: each after the time it was written), or one JSON object per line."""

    def __init__(self, *, json_out: bool, timestamps: bool) -> None:
        self.json_out = json_out
        self.timestamps = timestamps
        self.jobs: dict[str, dict[str, Any]] = {}
        self._job: str | None = None
        self._step: tuple[int, int] | None = None

    def know(self, jobs: list[dict[str, Any]]) -> None:
        """The latest view of the jobs (names, states, step names)."""
        for j in jobs:
            self.jobs[j["job_id"]] = j

    def whole(self, jobs: list[dict[str, Any]], lines: list[dict[str, Any]]) -> None:
        """Each job under its header, in the run's order, even one with no output."""
        self.know(jobs)
        by_job: dict[str, list[dict[str, Any]]] = {j["job_id"]: [] for j in jobs}
        for ln in lines:
            by_job.setdefault(ln["job_id"], []).append(ln)
        out: list[str] = []
        for job_id, job_lines in by_job.items():
            self._header(job_id, out)
            self._lines(job_lines, out)
        self._write(out)

    def stream(self, lines: list[dict[str, Any]]) -> None:
        out: list[str] = []
        self._lines(lines, out)
        self._write(out)

    def _name(self, job_id: str) -> str:
        return str(self.jobs.get(job_id, {}).get("name", job_id))

    def _header(self, job_id: str, out: list[str]) -> None:
        self._job, self._step = job_id, None
        if not self.json_out:
            state = self.jobs.get(job_id, {}).get("state", "?")
            out.append(f"=== {self._name(job_id)} [{state}]")

    def _lines(self, lines: list[dict[str, Any]], out: list[str]) -> None:
        for ln in lines:
            if self.json_out:
                out.append(json.dumps({
                    "job": self._name(ln["job_id"]), "job_id": ln["job_id"],
                    "attempt": ln["attempt"], "step": ln["step_index"],
                    "stream": ln["stream"], "ts": ln["ts"], "text": ln["text"],
                }))  # fmt: skip
                continue
            if ln["job_id"] != self._job:
                self._header(ln["job_id"], out)
            step = (ln["attempt"], ln["step_index"])
            if step != self._step:
                self._step = step
                out.append(f"--- {step_name(self.jobs.get(ln['job_id'], {}), step[1])}"
                           + (f" (job attempt {step[0]})" if step[0] > 1 else ""))  # fmt: skip
            out.append(f"{stamp(ln['ts'])} {ln['text']}" if self.timestamps else ln["text"])

    @staticmethod
    def _write(out: list[str]) -> None:
        if out:
            sys.stdout.write("\n".join(out) + "\n")
        sys.stdout.flush()


def stamp(ts: float) -> str:
    """``HH:MM:SS.mmm`` in local time."""
    return time.strftime("%H:%M:%S", time.localtime(ts)) + f".{int(ts * 1000) % 1000:03d}"
