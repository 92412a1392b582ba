"""Autoscaler over a PoolSet of fake providers, with a fake clock: no mocks, no waiting."""

from __future__ import annotations

import asyncio

import pytest
from worker_fakes import Clock, FakeProvider, FakeSleep, retryable

from faena.workers.autoscaler import Autoscaler, Decision
from faena.workers.breaker import BreakerState, CircuitBreaker
from faena.workers.pool_config import parse_pools
from faena.workers.pools import PoolSet, build_pool_set
from faena.workers.port import WorkerProvider, WorkerRequest
from faena.workers.resilient import ResilientProvider


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def docker() -> FakeProvider:
    return FakeProvider(name="docker")


@pytest.fixture
def local() -> FakeProvider:
    return FakeProvider(name="local")


@pytest.fixture
def pools(docker: FakeProvider, local: FakeProvider, clock: Clock) -> PoolSet:
    def wrap(inner: WorkerProvider) -> ResilientProvider:
        breaker = CircuitBreaker(inner.name, clock=clock)
        return ResilientProvider(inner, breaker=breaker, attempts=1, sleep=FakeSleep())

    configs = parse_pools("docker:labels=linux,min=1,max=4;local:max=2")
    return build_pool_set(configs, {"docker": docker, "local": local}, clock=clock, wrap=wrap)


@pytest.fixture
def scaler(pools: PoolSet, clock: Clock) -> Autoscaler:
    return Autoscaler(pools, interval=10, window=60, clock=clock)


async def jobs(pools: PoolSet, n: int, *runs_on: str, start: int = 0) -> None:
    for i in range(start, start + n):
        w = await pools.create(WorkerRequest(f"job{i}", "r", f"r.j{i}", runs_on=runs_on))
        await pools.destroy(w)


def idle(pools: PoolSet, name: str) -> int:
    return pools.member(name).pool.idle


async def test_without_demand_it_keeps_the_minimum(scaler: Autoscaler, pools: PoolSet) -> None:
    decisions = await scaler.reconcile()
    assert decisions == [
        Decision("docker", demand=0, target=1, idle=0, started=1),
        Decision("local", demand=0, target=0, idle=0),
    ]
    assert idle(pools, "docker") == 1 and idle(pools, "local") == 0
    again = await scaler.reconcile()  # nothing to do: same state, same decision
    assert again[0] == Decision("docker", 0, 1, 1)


async def test_demand_raises_the_target_up_to_max(
    scaler: Autoscaler, pools: PoolSet, clock: Clock
) -> None:
    await jobs(pools, 18, "linux")  # 18 a minute: 3 every 10 s
    [docker, _] = await scaler.reconcile()
    assert (docker.demand, docker.target, docker.started) == (18, 3, 3)
    assert idle(pools, "docker") == 3
    await jobs(pools, 60, "linux", start=100)
    [docker, _] = await scaler.reconcile()
    assert docker.target == 4  # capped by max
    assert idle(pools, "docker") == 4


async def test_demand_that_leaves_the_window_lowers_it_again(
    scaler: Autoscaler, pools: PoolSet, clock: Clock, docker: FakeProvider
) -> None:
    await jobs(pools, 24, "linux")
    await scaler.reconcile()
    assert idle(pools, "docker") == 4
    clock.advance(61)
    [d, _] = await scaler.reconcile()
    assert (d.demand, d.target, d.ended) == (0, 1, 3)
    assert idle(pools, "docker") == 1
    ended = [w for w in docker.destroyed if not w.startswith("job")]
    assert len(ended) == 3


async def test_the_oldest_idle_workers_are_ended_first(
    scaler: Autoscaler, pools: PoolSet, clock: Clock
) -> None:
    pool = pools.member("local").pool
    for wid in ("a", "b", "c"):
        await pool.prewarm(wid, "local")
    [_, loc] = await scaler.reconcile()
    assert loc.ended == 3 - 0  # max is 2 but no demand: target 0
    assert pool.idle_ids() == []
    for wid in ("d", "e"):
        await pool.prewarm(wid, "local")
    await jobs(pools, 6, "gpu")  # the local pool's demand: target 1; jobs took d and e
    for wid in ("f", "g", "h"):
        await pool.prewarm(wid, "local")
    [_, loc] = await scaler.reconcile()
    assert loc.target == 1 and loc.ended == 2
    assert pool.idle_ids() == ["h"]


async def test_workers_being_created_count(
    scaler: Autoscaler, pools: PoolSet, docker: FakeProvider
) -> None:
    gate = docker.gates["create"] = asyncio.Event()
    first = asyncio.create_task(scaler.reconcile())
    for _ in range(20):
        await asyncio.sleep(0)
    assert pools.member("docker").pool.warming == 1
    second = await Autoscaler(pools, interval=10, window=60).reconcile()
    assert second[0].idle == 1 and second[0].started == 0  # the one in flight counts
    gate.set()
    await first
    assert idle(pools, "docker") == 1


async def test_an_open_breaker_leaves_the_pool_alone(
    scaler: Autoscaler, pools: PoolSet, docker: FakeProvider
) -> None:
    breaker = pools.member("docker").breaker
    assert breaker is not None
    while breaker.state is BreakerState.CLOSED:
        breaker.failure(breaker.acquire())
    [d, _] = await scaler.reconcile()
    assert d.skipped == "circuit open" and d.started == 0
    assert docker.count("create") == 0


async def test_failed_prewarms_are_counted_not_raised(
    scaler: Autoscaler, pools: PoolSet, docker: FakeProvider
) -> None:
    docker.fail("create", retryable())
    [d, _] = await scaler.reconcile()
    assert (d.started, d.failed) == (0, 1)
    [d, _] = await scaler.reconcile()
    assert d.started == 1


async def test_run_reconciles_every_interval_until_stopped(pools: PoolSet, clock: Clock) -> None:
    sleep = FakeSleep(clock)
    scaler = Autoscaler(pools, interval=10, window=60, clock=clock, sleep=sleep)
    scaler.start()
    for _ in range(50):
        await asyncio.sleep(0)
        if len(sleep.delays) >= 3:
            break
    await scaler.stop()
    assert sleep.delays[:3] == [10, 10, 10]
    assert idle(pools, "docker") == 1
    await scaler.stop()  # twice: fine


def test_settings_are_checked(pools: PoolSet) -> None:
    with pytest.raises(ValueError):
        Autoscaler(pools, interval=0)


async def test_passes_at_once_do_not_overshoot(scaler: Autoscaler, pools: PoolSet) -> None:
    # The loop's pass and an operator's (or a test's) may overlap: they take turns.
    await asyncio.gather(scaler.reconcile(), scaler.reconcile(), scaler.reconcile())
    assert idle(pools, "docker") == 1
    assert idle(pools, "local") == 0
