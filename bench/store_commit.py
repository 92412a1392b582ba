"""Store latency per operation: MemoryStore against SqlStore on SQLite, in the same run.

    .venv/bin/python bench/store_commit.py [--commits 2000] [--jobs 500] [--reads 300]
        [--url postgresql+asyncpg://user@127.0.0.1:5432/db]

Prints one JSON object per figure (mean and p95 in milliseconds), then, per operation,
the SQLite/memory ratio of the means. The typical commit is what the orchestrator writes
for one state change: 1 run row, 2 job rows and 3 events (which also go to the outbox).
Runs take 7 commits each, so job rows are both inserted and replaced. ``commit_concurrent``
is the wall time per commit when 8 tasks commit at once (what the store sees under load,
without the orchestrator's group commit). ``get_run_<N>_jobs`` reads a run of ``--jobs``
jobs; the other reads are the event log of one run, 50-line log appends, 200-line log
reads from a run of 15,000 lines, and the relay's loop (a 20-event outbox page, then
mark_published). SQLite runs in a temporary directory, on the URL the app passes.
``--url`` measures SqlStore on that database too (store "postgresql" for a PostgreSQL
URL): give it an empty database, the bench leaves its rows there.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from faena.domain.events import Event, make_event
from faena.domain.run import PipelineRun, new_job
from faena.domain.states import JobState, RunState
from faena.store.memory import MemoryStore
from faena.store.port import Commit, LogLine, Store
from faena.store.sql import SqlStore

COMMITS_PER_RUN = 7
JOBS_PER_RUN = 4
CONCURRENCY = 8


def emit(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]
    return {
        "mean_ms": round(statistics.fmean(samples) * 1000, 4),
        "p95_ms": round(p95 * 1000, 4),
    }


def job_rows(run_id: str, count: int) -> list[dict[str, Any]]:
    rows = []
    for j in range(count):
        job = new_job({"job_id": f"{run_id}-j{j}", "key": f"j{j}", "steps": ["checkout", "make"]})
        rows.append(job.to_row() | {"run_id": run_id})
    return rows


def event(subject: str, run_id: str, job_id: str, attempt: int) -> Event:
    payload = {"job_id": job_id, "spec_hash": "h1", "attempt": attempt, "step_id": "s0"}
    payload |= {"assignment_id": f"a-{job_id}", "node_id": "n1", "worker_id": "w1", "policy": "p"}
    return make_event(subject, payload, correlation_id=run_id)


_SUBJECTS = ("ci.job.v1.requested", "ci.assignment.v1.created", "ci.job.v1.started")


def typical_batches(count: int, prefix: str) -> list[Commit]:
    """``count`` commits of 1 run row + 2 job rows + 3 events, 7 commits per run."""
    batches = []
    for i in range(count):
        run_id = f"{prefix}-run-{i // COMMITS_PER_RUN:05d}"
        step = i % COMMITS_PER_RUN
        run = PipelineRun(run_id, "bench", "h1", state=RunState.RUNNING, created_at=float(i))
        jobs = job_rows(run_id, JOBS_PER_RUN)
        picked = [jobs[step % JOBS_PER_RUN], jobs[(step + 1) % JOBS_PER_RUN]]
        for row in picked:
            row["state"] = str(JobState.RUNNING)
            row["attempt"] = 1
        events = [event(_SUBJECTS[k], run_id, picked[k % 2]["job_id"], step + 1) for k in range(3)]
        batches.append(Commit(events=events, runs=[run.to_row()], jobs=picked))
    return batches


async def timed(calls: list[Callable[[], Awaitable[Any]]]) -> list[float]:
    samples = []
    for call in calls:
        start = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - start)
    return samples


async def measure(store: Store, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    figures: dict[str, dict[str, float]] = {}
    batches = typical_batches(args.commits, "seq")
    figures["commit"] = summary(await timed([lambda b=b: store.commit(b) for b in batches]))

    # Under load: several tasks commit at once; the figure is wall time per commit.
    loaded = typical_batches(args.commits, "conc")
    per_task = [loaded[t::CONCURRENCY] for t in range(CONCURRENCY)]

    async def task(mine: list[Commit]) -> None:
        for b in mine:
            await store.commit(b)

    start = time.perf_counter()
    await asyncio.gather(*(task(mine) for mine in per_task))
    wall = (time.perf_counter() - start) / len(loaded)
    figures["commit_concurrent"] = {"mean_ms": round(wall * 1000, 4)}

    big = "big-run"
    run = PipelineRun(big, "bench", "h1", state=RunState.RUNNING, created_at=1e9)
    await store.commit(Commit(runs=[run.to_row()], jobs=job_rows(big, args.jobs)))
    reads = [lambda: store.get_run(big)] * args.reads
    figures[f"get_run_{args.jobs}_jobs"] = summary(await timed(reads))

    some_run = batches[0].runs[0]["run_id"]
    reads = [lambda: store.run_events(some_run)] * args.reads
    figures["run_events"] = summary(await timed(reads))

    lines = [
        LogLine(big, f"{big}-j{i % 4}", 1, 0, "stdout", float(i), f"line {i} " + "x" * 60)
        for i in range(50)
    ]
    figures["append_logs_50"] = summary(
        await timed([lambda: store.append_logs(lines)] * args.reads)
    )
    figures["read_logs_200"] = summary(
        await timed([lambda: store.read_logs(big, limit=200)] * args.reads)
    )

    # The relay's loop: read a page of the outbox, mark it published.
    async def relay_page() -> None:
        pending = await store.outbox_pending(limit=20)
        await store.mark_published([e.event_id for e in pending])

    figures["outbox_page_20"] = summary(await timed([relay_page] * args.reads))
    return figures


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--commits", type=int, default=2000)
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--reads", type=int, default=300)
    parser.add_argument("--url", help="also measure SqlStore on this (empty) database")
    args = parser.parse_args()

    results: dict[str, dict[str, dict[str, float]]] = {}
    memory = MemoryStore()
    await memory.open()
    results["memory"] = await measure(memory, args)
    await memory.close()

    with tempfile.TemporaryDirectory() as home:
        sqlite = SqlStore(f"sqlite+aiosqlite:///{Path(home) / 'faena.db'}")
        await sqlite.open()
        try:
            results["sqlite"] = await measure(sqlite, args)
        finally:
            await sqlite.close()

    if args.url:
        other = SqlStore(args.url)
        await other.open()
        try:
            # Named by database: "postgresql" for postgresql+asyncpg://...
            results[args.url.split(":", 1)[0].split("+", 1)[0]] = await measure(other, args)
        finally:
            await other.close()

    for store_name, figures in results.items():
        for bench, figure in figures.items():
            emit({"bench": bench, "store": store_name} | figure)
    for store_name in results:
        if store_name == "memory":
            continue
        for bench, figure in results[store_name].items():
            base = results["memory"][bench]["mean_ms"]
            ratio = figure["mean_ms"] / base if base else float("inf")
            emit({"bench": bench, f"ratio_{store_name}_memory": round(ratio, 1)})
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
