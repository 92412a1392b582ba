"""PoolSet over fake providers: routing by runs-on labels, fallback, warm workers."""

from __future__ import annotations

import pytest
from worker_fakes import Clock, FakeProvider, FakeSleep, permanent, retryable

from faena.workers.breaker import BreakerState, CircuitBreaker
from faena.workers.pool import UnknownPool, WorkerInUse, WorkerPool
from faena.workers.pool_config import PoolConfig, parse_pools
from faena.workers.pools import NoPool, PoolSet, breaker_states, build_pool_set
from faena.workers.port import (
    ExecRequest,
    OutputLine,
    ProviderError,
    Worker,
    WorkerProvider,
    WorkerRequest,
)
from faena.workers.resilient import ResilientProvider


class Providers:
    def __init__(self) -> None:
        self.docker = FakeProvider(name="docker", enforces=frozenset({"cpu", "memory"}))
        self.local = FakeProvider(name="local", enforces=frozenset({"cpu"}))

    def mapping(self) -> dict[str, FakeProvider]:
        return {"docker": self.docker, "local": self.local}


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def fakes() -> Providers:
    return Providers()


@pytest.fixture
def pools(fakes: Providers, clock: Clock) -> PoolSet:
    configs = parse_pools("docker:provider=docker,labels=linux,min=1,max=4;local:provider=local")

    def wrap(inner: WorkerProvider) -> ResilientProvider:
        # No real sleeping between retries.
        breaker = CircuitBreaker(inner.name, clock=clock)
        return ResilientProvider(inner, breaker=breaker, sleep=FakeSleep(clock))

    return build_pool_set(configs, fakes.mapping(), clock=clock, wrap=wrap)


def job(worker_id: str, *runs_on: str, image: str | None = None) -> WorkerRequest:
    return WorkerRequest(worker_id, "r1", f"r1.{worker_id}", image, runs_on=runs_on)


def trip(pools: PoolSet, pool: str) -> None:
    breaker = pools.member(pool).breaker
    assert breaker is not None
    while breaker.state is BreakerState.CLOSED:
        breaker.failure(breaker.acquire())


async def nothing(_line: OutputLine) -> None:
    return None


def test_is_a_provider_enforcing_what_every_pool_does(pools: PoolSet) -> None:
    assert pools.name == "pools"
    assert pools.pools == ("docker", "local")
    assert pools.enforces == frozenset({"cpu"})


async def test_routes_to_the_first_pool_serving_the_labels(
    pools: PoolSet, fakes: Providers
) -> None:
    linux = await pools.create(job("w1", "linux"))
    assert linux.provider == "docker"
    assert linux.info["pool"] == "docker" and "fallback_from" not in linux.info
    anything = await pools.create(job("w2"))  # no runs-on: the first pool takes it
    assert anything.info["pool"] == "docker"
    gpu = await pools.create(job("w3", "gpu"))  # only the label-less pool serves gpu
    assert gpu.provider == "local" and gpu.info["pool"] == "local"
    assert "fallback_from" not in gpu.info
    assert sorted(fakes.docker.live) == ["w1", "w2"] and list(fakes.local.live) == ["w3"]


async def test_steps_and_destroy_reach_the_pool_that_made_the_worker(
    pools: PoolSet, fakes: Providers
) -> None:
    worker = await pools.create(job("w1", "gpu"))
    lines: list[OutputLine] = []

    async def sink(line: OutputLine) -> None:
        lines.append(line)

    await pools.exec(worker, ExecRequest("e1", "true"), sink)
    assert [ln.text for ln in lines] == ["local:w1"]
    await pools.cancel(worker, "e1")
    await pools.destroy(worker, keep_for=5.0)
    assert fakes.local.destroyed == ["w1"] and fakes.local.kept == {"w1": 5.0}
    assert fakes.docker.destroyed == []


async def test_falls_back_when_the_pool_breaker_is_open(pools: PoolSet, fakes: Providers) -> None:
    trip(pools, "docker")
    worker = await pools.create(job("w1", "linux"))
    assert worker.provider == "local"
    assert worker.info["pool"] == "local" and worker.info["fallback_from"] == "docker"
    assert fakes.docker.count("create") == 0
    await pools.destroy(worker)
    assert fakes.local.destroyed == ["w1"]


async def test_falls_back_when_create_keeps_failing(pools: PoolSet, fakes: Providers) -> None:
    fakes.docker.fail("create", *(retryable() for _ in range(5)))
    worker = await pools.create(job("w1", "linux"))
    assert worker.info["fallback_from"] == "docker"
    assert fakes.docker.count("create") == 5  # the ResilientProvider's attempts first
    assert "w1" in fakes.docker.destroyed  # its remains there cleared before falling back


async def test_a_permanent_error_does_not_fall_back(pools: PoolSet, fakes: Providers) -> None:
    fakes.docker.fail("create", permanent())
    with pytest.raises(ProviderError, match="no such image") as raised:
        await pools.create(job("w1", "linux"))
    assert not raised.value.retryable
    assert fakes.local.count("create") == 0


async def test_every_pool_unavailable_is_a_retryable_error(pools: PoolSet) -> None:
    trip(pools, "docker")
    trip(pools, "local")
    with pytest.raises(ProviderError, match="circuit open") as raised:
        await pools.create(job("w1"))
    assert raised.value.retryable


async def test_no_pool_for_the_labels_is_permanent(fakes: Providers, clock: Clock) -> None:
    pools = build_pool_set(parse_pools("d:provider=docker,labels=linux"), fakes.mapping())
    with pytest.raises(NoPool, match=r"no pool serves runs-on labels gpu \(pools: d \[linux\]\)"):
        await pools.create(job("w1", "gpu"))


async def test_destroy_of_an_unknown_worker_asks_every_pool(
    pools: PoolSet, fakes: Providers
) -> None:
    await pools.destroy(Worker("lost", "pools", ""))
    assert fakes.docker.destroyed == ["lost"] and fakes.local.destroyed == ["lost"]


async def test_exec_in_an_unknown_worker_is_a_permanent_error(pools: PoolSet) -> None:
    with pytest.raises(ProviderError, match="no pool created worker x"):
        await pools.exec(Worker("x", "pools", ""), ExecRequest("e", "true"), nothing)


async def test_warm_workers_by_pool(pools: PoolSet, fakes: Providers) -> None:
    first, created = await pools.prewarm("warm1")  # the first pool by default
    assert created and first.pool == "docker" and first.state == "idle"
    second, _ = await pools.prewarm("warm2", "local")
    assert second.pool == "local"
    again, created = await pools.prewarm("warm2", "local")
    assert again is second and not created
    with pytest.raises(WorkerInUse, match="belongs to pool local"):
        await pools.prewarm("warm2", "docker")
    with pytest.raises(UnknownPool, match=r"no pool 'gpu' here \(pools: docker, local\)"):
        await pools.prewarm(None, "gpu")
    assert [w["worker_id"] for w in pools.listing()] == ["warm1", "warm2"]
    # A job of the local pool takes the local warm worker.
    worker = await pools.create(job("j1", "gpu"))
    assert worker.info["pool_worker_id"] == "warm2" and worker.info["pool"] == "local"
    assert pools.require("j1").worker_id == "warm2"
    await pools.destroy(worker)
    assert pools.get("warm2") is not None and pools.get("warm2").state == "finished"  # type: ignore[union-attr]
    assert await pools.end("warm1") and not await pools.end("nope")
    assert pools.get("warm1").state == "ended"  # type: ignore[union-attr]


async def test_providers_and_breaker_states(pools: PoolSet) -> None:
    trip(pools, "docker")
    listed = pools.providers()
    assert [(p["name"], p["pools"], p["breaker"]["state"]) for p in listed] == [
        ("docker", ["docker"], "open"),
        ("local", ["local"], "closed"),
    ]
    assert breaker_states(pools) == {"docker": 2, "local": 0}


async def test_pools_of_one_provider_share_its_breaker(fakes: Providers) -> None:
    pools = build_pool_set(
        parse_pools("fast:provider=docker,labels=ssd;slow:provider=docker"), fakes.mapping()
    )
    assert pools.member("fast").breaker is pools.member("slow").breaker
    [entry] = pools.providers()
    assert entry["name"] == "docker" and entry["pools"] == ["fast", "slow"]


def test_a_bare_worker_pool_lists_its_provider_without_a_breaker(fakes: Providers) -> None:
    pool = WorkerPool(fakes.local)
    assert pool.providers() == [{"name": "local", "breaker": None, "pools": ["local"]}]
    assert breaker_states(pool) == {}


async def test_demand_is_counted_for_the_pool_jobs_ask_for(pools: PoolSet, clock: Clock) -> None:
    trip(pools, "docker")
    await pools.create(job("w1", "linux"))  # served by local, asked of docker
    clock.advance(30)
    await pools.create(job("w2", "gpu"))
    assert pools.demand("docker", 60) == 1 and pools.demand("local", 60) == 1
    assert pools.demand("docker", 20) == 0


def test_bad_sets_are_refused(fakes: Providers) -> None:
    with pytest.raises(ValueError):
        PoolSet([])
    a = PoolConfig("a", "local")
    with pytest.raises(ValueError):
        PoolSet([(a, WorkerPool(fakes.local)), (a, WorkerPool(fakes.local))])
    with pytest.raises(UnknownPool, match="no provider 'k8s'"):
        build_pool_set([PoolConfig("k", "k8s")], fakes.mapping())
