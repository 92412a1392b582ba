"""SqlStore on PostgreSQL, where writers run concurrently: several tasks of one process,
and several processes (replicas, each a SqlStore with its own pool). What is stored is the
contract suite's; this is about order, locks and connections."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from faena.domain.events import make_event
from faena.store.port import Commit, LogLine
from faena.store.sql import SqlStore

WRITERS = 8


@pytest.fixture
async def replicas(postgres_url: str) -> AsyncIterator[list[SqlStore]]:
    stores = [SqlStore(postgres_url), SqlStore(postgres_url)]
    for store in stores:
        await store.open()
    yield stores
    for store in stores:
        await store.close()


def started(run_id: str) -> Commit:
    events = [
        make_event("ci.run.v1.started", {"run_id": run_id}, correlation_id=run_id),
        make_event(
            "ci.job.v1.requested", {"job_id": "a", "spec_hash": "h1"}, correlation_id=run_id
        ),
    ]
    return Commit(events=events, runs=[{"run_id": run_id, "created_at": 1.0}])


async def tail_while(
    writing: Awaitable[object], page: Callable[[int], Awaitable[list[int]]]
) -> list[int]:
    """Page with a cursor (``page(cursor)`` gives the ids after it) until ``writing`` ends
    and a page comes back empty; every id seen, in order."""
    task = asyncio.ensure_future(writing)
    seen: list[int] = []
    while True:
        finished = task.done()  # before the page: a page read after the end is complete
        ids = await page(seen[-1] if seen else 0)
        seen += ids
        if not ids:
            if finished:
                break
            await asyncio.sleep(0.001)
    await task  # its errors
    return seen


async def test_a_reader_paging_the_event_log_misses_nothing_while_replicas_commit(
    replicas: list[SqlStore],
) -> None:
    """seq comes from a sequence at INSERT: without the commit lock a later seq could
    become visible first, and a reader's cursor would pass over the earlier one."""

    async def writer(w: int) -> None:
        for i in range(25):
            await replicas[w % 2].commit(started(f"w{w}-{i}"))

    async def page(cursor: int) -> list[int]:
        return [s.seq for s in await replicas[0].events_after(cursor, limit=7)]

    seen = await tail_while(asyncio.gather(*(writer(w) for w in range(WRITERS))), page)

    everything = [s.seq for s in await replicas[1].events_after(0, limit=10_000)]
    assert len(everything) == 2 * 25 * WRITERS
    assert seen == everything


async def test_a_reader_tailing_a_runs_logs_misses_nothing_while_replicas_append(
    replicas: list[SqlStore],
) -> None:
    async def writer(w: int) -> None:
        for i in range(25):
            lines = [
                LogLine("r", f"j{w}", 1, 0, "stdout", float(i), f"{w}-{i}-{k}") for k in range(3)
            ]
            await replicas[w % 2].append_logs(lines)
            await replicas[w % 2].append_logs([LogLine("other", "j", 1, 0, "stdout", 0.0, "x")])

    async def page(after: int) -> list[int]:
        return [line.id for line in await replicas[0].read_logs("r", after_id=after, limit=7)]

    seen = await tail_while(asyncio.gather(*(writer(w) for w in range(WRITERS))), page)

    everything = await replicas[1].read_logs("r")
    assert len(everything) == 3 * 25 * WRITERS
    assert seen == [line.id for line in everything]
    # A batch's lines stay together and in order.
    texts = [line.text for line in everything]
    for start in range(0, len(texts), 3):
        w, i = texts[start].split("-")[:2]
        assert texts[start : start + 3] == [f"{w}-{i}-{k}" for k in range(3)]


async def test_jobs_added_to_one_run_by_replicas_at_once_keep_distinct_positions(
    replicas: list[SqlStore],
) -> None:
    await replicas[0].commit(Commit(runs=[{"run_id": "r", "created_at": 1.0}]))

    async def add(w: int) -> None:
        for i in range(10):
            job = {"job_id": f"{chr(ord('z') - w)}-{i}", "run_id": "r", "state": "WAITING"}
            await replicas[w % 2].commit(Commit(jobs=[job]))

    await asyncio.gather(*(add(w) for w in range(WRITERS)))

    run = await replicas[0].get_run("r")
    assert run is not None and len(run["jobs"]) == 10 * WRITERS

    def positions(conn: object) -> list[int]:
        import sqlalchemy as sa

        assert isinstance(conn, sa.Connection)
        return list(conn.execute(sa.text("SELECT position FROM jobs ORDER BY position")).scalars())

    assert await replicas[0]._read(positions) == list(range(10 * WRITERS))
    # Each writer's jobs in the order it added them (ids sort against it).
    for w in range(WRITERS):
        mine = [j["job_id"] for j in run["jobs"] if j["job_id"].startswith(chr(ord("z") - w))]
        assert mine == [f"{chr(ord('z') - w)}-{i}" for i in range(10)]


async def test_replicas_marking_overlapping_outbox_pages_do_not_deadlock(
    replicas: list[SqlStore],
) -> None:
    for n in range(12):
        await replicas[0].commit(
            Commit(events=[e for r in range(50) for e in started(f"{n}-{r}").events])
        )
    pending = await replicas[0].outbox_pending(limit=10_000)
    ids = [e.event_id for e in pending]
    assert len(ids) == 1200  # more than one statement's worth (500 ids each)

    # The same ids in opposite orders, at once, several times over.
    await asyncio.wait_for(
        asyncio.gather(
            *(replicas[k % 2].mark_published(ids if k % 2 else ids[::-1]) for k in range(6))
        ),
        timeout=60,
    )
    assert await replicas[1].outbox_pending() == []


async def test_a_lost_connection_is_replaced(replicas: list[SqlStore]) -> None:
    store = replicas[0]
    await store.commit(started("r1"))
    await store._read(lambda conn: conn.invalidate())  # as a driver error would
    await store.commit(started("r2"))
    assert len(await store.list_runs()) == 2


async def test_the_server_terminating_connections_costs_one_call_at_most(
    replicas: list[SqlStore],
) -> None:
    """A database restart or failover drops every connection in the pool."""
    import sqlalchemy as sa

    store = replicas[0]
    await asyncio.gather(*(store.commit(started(f"r{i}")) for i in range(6)))  # fill the pool
    kill = sa.text(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )
    await replicas[1]._read(lambda conn: conn.execute(kill).scalar())

    outcomes = []
    for i in range(8):
        try:
            await store.commit(started(f"after-{i}"))
            outcomes.append("ok")
        except Exception:
            outcomes.append("error")
    assert outcomes[-1] == "ok"
    assert len(await store.list_runs(limit=100)) >= 6 + outcomes.count("ok")
