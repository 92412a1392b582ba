"""The Leadership contract, run against every adapter, plus what only a real lock can do."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from faena.orchestration.leadership import Leadership, SoleLeader
from faena.orchestration.postgres_lease import PostgresLease
from faena.store.port import Store
from faena.store.sql import SqlStore
from postgres import end_leader_session

Factory = Callable[[str], Leadership]


@pytest.fixture(params=["sole", "postgres"])
async def store_and_factory(
    request: pytest.FixtureRequest, tmp_path: object
) -> AsyncIterator[tuple[Store, Factory]]:
    if request.param == "sole":
        store: Store = SqlStore(f"sqlite:///{tmp_path}/faena.db")
        await store.open()
        yield store, lambda holder: SoleLeader()
    else:
        url = str(request.getfixturevalue("postgres_url"))
        store = SqlStore(url)
        await store.open()
        yield (
            store,
            lambda holder: PostgresLease(
                url, store, holder, f"http://{holder}", poll=0.05, check=0.1
            ),
        )
    await store.close()


async def test_campaign_returns_a_term(store_and_factory: tuple[Store, Factory]) -> None:
    _, make = store_and_factory
    lease = make("a")
    assert await asyncio.wait_for(lease.campaign(), 10) >= 1
    await lease.close()


async def test_a_leader_holds_until_it_resigns(store_and_factory: tuple[Store, Factory]) -> None:
    _, make = store_and_factory
    lease = make("a")
    await asyncio.wait_for(lease.campaign(), 10)
    holding = asyncio.create_task(lease.hold())
    await asyncio.sleep(0.3)
    assert not holding.done()
    await lease.close()
    await asyncio.wait_for(holding, 5)


# -- PostgreSQL only: contention, a killed leader, a lost connection -------------------


@pytest.fixture
async def pg(postgres_url: str) -> AsyncIterator[tuple[str, Store]]:
    store = SqlStore(postgres_url)
    await store.open()
    yield postgres_url, store
    await store.close()


def lease(url: str, store: Store, holder: str, check: float = 0.1) -> PostgresLease:
    return PostgresLease(url, store, holder, f"http://{holder}", poll=0.05, check=check)


async def test_the_term_is_recorded_and_the_next_leader_gets_a_higher_one(
    pg: tuple[str, Store],
) -> None:
    url, store = pg
    first = lease(url, store, "a")
    t1 = await first.campaign()
    leader = await store.leader()
    assert leader is not None
    assert (leader.term, leader.holder, leader.url) == (t1, "a", "http://a")
    await first.close()
    second = lease(url, store, "b")
    assert await second.campaign() > t1
    await second.close()


async def test_one_leader_at_a_time_and_the_follower_takes_over(
    pg: tuple[str, Store],
) -> None:
    url, store = pg
    a, b = lease(url, store, "a"), lease(url, store, "b")
    term_a = await a.campaign()
    waiting = asyncio.create_task(b.campaign())
    await asyncio.sleep(0.5)
    assert not waiting.done(), "two leaders at once"
    await a.close()
    term_b = await asyncio.wait_for(waiting, 5)
    assert term_b > term_a
    await b.close()


async def test_a_leader_whose_session_is_killed_is_replaced(pg: tuple[str, Store]) -> None:
    """Its connection ends as a killed process's would: the lock is free at once."""
    url, store = pg
    # ``a`` checks its connection once a second; ``b`` polls twenty times as often: ``b``
    # takes the free lock before ``a`` notices it has lost it.
    a, b = lease(url, store, "a", check=1.0), lease(url, store, "b")
    await a.campaign()
    held = asyncio.create_task(a.hold())
    waiting = asyncio.create_task(b.campaign())
    await end_leader_session(url)
    term_b = await asyncio.wait_for(waiting, 5)
    # The old leader notices: another took the lock and claimed a term; it is deposed.
    await asyncio.wait_for(held, 5)
    leader = await store.leader()
    assert leader is not None and (leader.holder, leader.term) == ("b", term_b)
    await a.close()
    await b.close()


async def test_a_leader_that_loses_its_connection_alone_keeps_its_term(
    pg: tuple[str, Store],
) -> None:
    url, store = pg
    a = lease(url, store, "a")
    term = await a.campaign()
    held = asyncio.create_task(a.hold())
    await end_leader_session(url)
    await asyncio.sleep(1.0)
    assert not held.done(), "a leader nobody replaced must keep leading"
    leader = await store.leader()
    assert leader is not None and (leader.holder, leader.term) == ("a", term)
    await a.close()
    await asyncio.wait_for(held, 5)


async def test_the_store_url_s_own_options_do_not_stop_the_lease(pg: tuple[str, Store]) -> None:
    """SQLAlchemy options in the URL (not server settings) reach the store, not the lock."""
    url, store = pg
    lease_ = lease(url + "?prepared_statement_cache_size=0", store, "a")
    assert await asyncio.wait_for(lease_.campaign(), 10) >= 1
    await lease_.close()
