"""The /api/v1/workers routes over a PoolSet of fake providers (in-process ASGI, no server):
named pools for prewarm, and each provider's breaker in the listing."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import httpx
from fastapi import FastAPI
from worker_fakes import Clock, FakeProvider

from faena.api.workers import workers_router
from faena.security.port import Principal
from faena.store.memory import MemoryStore
from faena.workers.breaker import BreakerState
from faena.workers.pool_config import parse_pools
from faena.workers.pools import build_pool_set


def allow_all(_scope: str) -> Callable[[], Awaitable[Principal]]:
    async def dependency() -> Principal:
        return Principal("tester", frozenset({"*"}))

    return dependency


async def test_listing_shows_each_provider_breaker_and_prewarm_takes_a_pool_name() -> None:
    clock = Clock()
    providers = {"docker": FakeProvider(name="docker"), "local": FakeProvider(name="local")}
    pools = build_pool_set(
        parse_pools("docker:labels=linux;spare:provider=docker;local"), providers, clock=clock
    )
    breaker = pools.member("docker").breaker
    assert breaker is not None
    while breaker.state is BreakerState.CLOSED:
        breaker.failure(breaker.acquire())
    app = FastAPI()
    app.include_router(workers_router(pool=pools, store=MemoryStore(), require=allow_all))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        r = await c.post("/api/v1/workers", json={"worker_id": "warm-l", "pool": "local"})
        assert r.status_code == 201, r.text
        assert r.json()["pool"] == "local" and r.json()["provider"] == "local"
        body = (await c.get("/api/v1/workers")).json()
    assert body["node_id"] == "local"
    assert [(w["worker_id"], w["pool"]) for w in body["items"]] == [("warm-l", "local")]
    by_name = {p["name"]: p for p in body["providers"]}
    assert by_name["docker"]["pools"] == ["docker", "spare"]
    assert by_name["docker"]["breaker"]["state"] == "open"
    assert by_name["docker"]["breaker"]["opened_at"] == clock.now
    assert by_name["local"]["breaker"] == {
        "state": "closed", "opened_at": None, "calls": 1, "failures": 0, "last_error": None,
    }  # fmt: skip
