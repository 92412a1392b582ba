"""How SqlStore runs its operations on SQLite: off the event loop, one at a time, and
closed only when the work handed to it is done. (What it stores is the contract suite's.)"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from faena.store.port import Commit
from faena.store.sql import SqlStore


def commit(run_id: str) -> Commit:
    return Commit(runs=[{"run_id": run_id, "state": "PENDING", "created_at": 1.0}])


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "faena.db"


@pytest.mark.parametrize("run_in_thread", [True, False], ids=["thread", "async"])
async def test_the_event_loop_runs_while_a_commit_waits_for_the_write_lock(
    db_path: Path, run_in_thread: bool
) -> None:
    store = SqlStore(f"sqlite:///{db_path}", run_in_thread=run_in_thread)
    await store.open()
    # Another process's connection, holding SQLite's one write lock.
    other = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
    try:
        other.execute("BEGIN IMMEDIATE")
        pending = asyncio.ensure_future(store.commit(commit("r1")))
        ticks = 0
        for _ in range(10):
            await asyncio.sleep(0.01)
            ticks += 1
        assert ticks == 10 and not pending.done()  # waiting (busy_timeout), loop free

        other.execute("COMMIT")
        await asyncio.wait_for(pending, timeout=10)
        assert await store.get_run("r1") is not None
    finally:
        other.close()
        await store.close()


async def test_close_waits_for_the_operations_in_flight(db_path: Path) -> None:
    url = f"sqlite:///{db_path}"
    store = SqlStore(url)
    await store.open()
    tasks = [asyncio.ensure_future(store.commit(commit(f"r{i}"))) for i in range(30)]
    await asyncio.sleep(0)  # every commit has handed its work to the store's thread
    await store.close()
    await asyncio.gather(*tasks)

    reopened = SqlStore(url)
    await reopened.open()
    try:
        assert len(await reopened.list_runs(limit=100)) == 30
    finally:
        await reopened.close()


async def test_a_closed_store_refuses_work_and_can_be_reopened(db_path: Path) -> None:
    store = SqlStore(f"sqlite:///{db_path}")
    await store.open()
    await store.commit(commit("r1"))
    await store.close()
    await store.close()  # twice is fine

    with pytest.raises(RuntimeError, match="not open"):
        await store.commit(commit("r2"))
    with pytest.raises(RuntimeError, match="not open"):
        await store.get_run("r1")

    await store.open()
    try:
        assert await store.get_run("r1") is not None
    finally:
        await store.close()


async def test_sqlite_urls_name_any_driver(db_path: Path) -> None:
    """The app passes sqlite+aiosqlite://; any SQLite URL reaches the same file."""
    for n, scheme in enumerate(("sqlite", "sqlite+pysqlite", "sqlite+aiosqlite")):
        store = SqlStore(f"{scheme}:///{db_path}")
        await store.open()
        try:
            await store.commit(commit(f"r{n}"))
            assert len(await store.list_runs()) == n + 1
        finally:
            await store.close()


def test_other_databases_are_refused() -> None:
    with pytest.raises(ValueError, match="unsupported database"):
        SqlStore("mysql://localhost/faena")


@pytest.mark.parametrize("run_in_thread", [True, False], ids=["thread", "async"])
async def test_a_lost_connection_is_replaced(db_path: Path, run_in_thread: bool) -> None:
    store = SqlStore(f"sqlite:///{db_path}", run_in_thread=run_in_thread)
    await store.open()
    try:
        await store.commit(commit("r1"))
        await store._read(lambda conn: conn.invalidate())  # as a driver error would
        await store.commit(commit("r2"))
        assert len(await store.list_runs()) == 2
    finally:
        await store.close()
