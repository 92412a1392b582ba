"""``faena runs`` and ``faena logs``: read what the store recorded."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

from faena.settings import Settings


def _open_store(settings: Settings) -> Any:
    from faena.app import open_store

    return open_store(settings)


def runs_command(limit: int, json_out: bool) -> int:
    settings = Settings.from_env()
    if not (settings.home / "faena.db").exists() and settings.database_url is None:
        if json_out:
            print("[]")
        else:
            print(f"no runs yet in {settings.home}/ (start one with: faena run)")
        return 0
    return asyncio.run(_runs(settings, limit, json_out))


async def _runs(settings: Settings, limit: int, json_out: bool) -> int:
    from faena.cli.locks import RunLock
    from faena.cli.progress import fmt_duration

    store = _open_store(settings)
    await store.open()
    try:
        rows = await store.list_runs(limit=limit)
    finally:
        await store.close()
    for row in rows:
        live = RunLock.held(settings.locks, row["run_id"])
        row["interrupted"] = row["state"] in ("PENDING", "RUNNING") and not live
    if json_out:
        print(json.dumps(rows, default=str))
        return 0
    if not rows:
        print("no runs yet (start one with: faena run)")
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for col in ("RUN", "PIPELINE", "STATE", "STARTED", "DURATION"):
        table.add_column(col)
    for row in rows:
        state = row["state"] + (" (interrupted: faena resume)" if row["interrupted"] else "")
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row["created_at"]))
        end = row.get("finished_at")
        duration = fmt_duration(end - row["created_at"]) if end else ""
        table.add_row(row["run_id"], row["pipeline"], state, started, duration)
    Console().print(table)
    return 0


def logs_command(ref: str, job: str | None, json_out: bool, *, timestamps: bool = False) -> int:
    settings = Settings.from_env()
    if not (settings.home / "faena.db").exists() and settings.database_url is None:
        print(
            f"error: no runs yet in {settings.home}/ (start one with: faena run)", file=sys.stderr
        )
        return 2
    return asyncio.run(_logs(settings, ref, job, json_out, timestamps))


def _match_jobs(jobs: list[dict[str, Any]], wanted: str) -> list[dict[str, Any]]:
    for field in ("job_id", "name", "key"):
        exact = [j for j in jobs if j[field] == wanted]
        if exact:
            return exact
    return [j for j in jobs if j["name"].startswith(wanted) or j["key"].startswith(wanted)]


async def _logs(
    settings: Settings, ref: str, job: str | None, json_out: bool, timestamps: bool
) -> int:
    from faena.store.port import AmbiguousRef

    store = _open_store(settings)
    await store.open()
    try:
        try:
            run_id = await store.resolve_run_id(ref)
        except AmbiguousRef as exc:
            print(f"error: {exc.message}", file=sys.stderr)
            return 2
        if run_id is None:
            print(f"error: no run matches '{ref}'", file=sys.stderr)
            return 2
        run = await store.get_run(run_id)
        assert run is not None
        jobs = run["jobs"]
        if job is not None:
            jobs = _match_jobs(jobs, job)
            if not jobs:
                names = ", ".join(j["name"] for j in run["jobs"])
                print(f"error: run {run_id} has no job '{job}' (jobs: {names})", file=sys.stderr)
                return 2
        for j in jobs:
            lines = await _all_lines(store, run_id, j["job_id"])
            if json_out:
                for ln in lines:
                    print(
                        json.dumps(
                            {
                                "job": j["name"],
                                "job_id": j["job_id"],
                                "attempt": ln.attempt,
                                "step": ln.step_index,
                                "stream": ln.stream,
                                "ts": ln.ts,
                                "text": ln.text,
                            }
                        )
                    )
                continue
            _print_job(j, lines, timestamps)
    finally:
        await store.close()
    return 0


async def _all_lines(store: Any, run_id: str, job_id: str) -> list[Any]:
    """Every line of the job, read a page at a time."""
    lines: list[Any] = []
    after = 0
    while page := await store.read_logs(run_id, job_id, after_id=after, limit=10_000):
        lines.extend(page)
        after = page[-1].id
    return lines


def _print_job(job: dict[str, Any], lines: list[Any], timestamps: bool) -> None:
    steps = job.get("steps", [])
    print(f"=== {job['name']} [{job['state']}]")
    current: tuple[int, int] | None = None
    for ln in lines:
        if (ln.attempt, ln.step_index) != current:
            current = (ln.attempt, ln.step_index)
            name = steps[ln.step_index]["name"] if ln.step_index < len(steps) else ln.step_index
            suffix = f" (job attempt {ln.attempt})" if ln.attempt > 1 else ""
            print(f"--- {name}{suffix}")
        if timestamps:
            stamp = (
                time.strftime("%H:%M:%S", time.localtime(ln.ts))
                + f".{int(ln.ts * 1000) % 1000:03d}"
            )
            print(f"{stamp} {ln.text}")
        else:
            print(ln.text)
