"""One contract for every EventBus adapter: in-process (memory) and NATS JetStream.

The NATS adapter runs against a real ``nats-server -js`` started per test (tests/conftest.py,
``nats_server``): a fresh server, store and stream for each test.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from faena.bus.memory import MemoryBus
from faena.bus.port import EventBus
from faena.domain.events import Event, make_event


def memory_bus(request: pytest.FixtureRequest) -> EventBus:
    return MemoryBus()


def nats_bus(request: pytest.FixtureRequest) -> EventBus:
    from faena.bus.nats import JetStreamBus

    server = request.getfixturevalue("nats_server")
    return JetStreamBus(server.url, stream="FAENA_CONTRACT", fetch_timeout=1.0)


ADAPTERS: dict[str, Callable[[pytest.FixtureRequest], EventBus]] = {
    "memory": memory_bus,
    "nats": nats_bus,
}


@pytest.fixture(params=sorted(ADAPTERS))
async def bus(request: pytest.FixtureRequest) -> AsyncIterator[EventBus]:
    b: EventBus = ADAPTERS[request.param](request)
    await b.start()
    yield b
    await b.close()


def job_event(job_id: str, attempt: int = 1) -> Event:
    return make_event(
        "ci.job.v1.requested",
        {"job_id": job_id, "spec_hash": "h", "attempt": attempt},
        correlation_id="run",
    )


async def wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.01)


async def test_delivers_in_publish_order(bus: EventBus) -> None:
    got: list[str] = []

    async def handler(e: Event) -> None:
        got.append(e.payload["job_id"])

    await bus.subscribe("ci.job.v1.*", handler, durable="t")
    await bus.publish([job_event(f"j{i}") for i in range(100)])
    await wait_for(lambda: len(got) == 100)
    assert got == [f"j{i}" for i in range(100)]


async def test_wildcards_filter_subjects(bus: EventBus) -> None:
    got: list[str] = []

    async def handler(e: Event) -> None:
        got.append(e.subject)

    await bus.subscribe("ci.run.>", handler, durable="runs")
    await bus.publish(
        [
            job_event("a"),
            make_event("ci.run.v1.started", {"run_id": "r"}, correlation_id="r"),
        ]
    )
    await wait_for(lambda: len(got) == 1)
    await asyncio.sleep(0.05)
    assert got == ["ci.run.v1.started"]


async def test_every_subscription_gets_its_copy(bus: EventBus) -> None:
    a: list[Event] = []
    b: list[Event] = []

    async def ha(e: Event) -> None:
        a.append(e)

    async def hb(e: Event) -> None:
        b.append(e)

    await bus.subscribe("ci.>", ha, durable="a")
    await bus.subscribe("ci.>", hb, durable="b")
    await bus.publish([job_event("x")])
    await wait_for(lambda: len(a) == 1 and len(b) == 1)
    assert a[0].event_id == b[0].event_id


async def test_redelivers_when_a_handler_raises(bus: EventBus) -> None:
    calls: list[int] = []

    async def flaky(e: Event) -> None:
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("transient")

    await bus.subscribe("ci.job.>", flaky, durable="flaky", retry_delay=0.01)
    await bus.publish([job_event("x")])
    await wait_for(lambda: len(calls) == 3)
    await asyncio.sleep(0.05)
    assert len(calls) == 3


async def test_dead_letters_after_max_deliver(bus: EventBus) -> None:
    dead: list[Event] = []

    async def broken(e: Event) -> None:
        raise RuntimeError("always")

    async def dlq(e: Event) -> None:
        dead.append(e)

    await bus.subscribe("ci.dlq.>", dlq, durable="dlq")
    await bus.subscribe("ci.job.>", broken, durable="broken", max_deliver=2, retry_delay=0.01)
    original = job_event("x")
    await bus.publish([original])
    await wait_for(lambda: len(dead) == 1)
    assert dead[0].subject == "ci.dlq.ci.job.v1.requested"
    assert dead[0].event_id == original.event_id
    assert dead[0].payload == original.payload


async def test_idempotent_consumer_drops_duplicates(bus: EventBus) -> None:
    processed: list[str] = []
    inbox: set[str] = set()

    async def handler(e: Event) -> None:
        if e.idempotency_key in inbox:
            return
        inbox.add(e.idempotency_key)
        processed.append(e.payload["job_id"])

    await bus.subscribe("ci.job.>", handler, durable="idem")
    e = job_event("x")
    await bus.publish([e, e, job_event("x", attempt=2)])
    await wait_for(lambda: len(processed) == 2)
    await asyncio.sleep(0.05)
    assert processed == ["x", "x"]  # attempt 1 once, attempt 2 once


async def test_unsubscribe_stops_delivery(bus: EventBus) -> None:
    got: list[Event] = []

    async def handler(e: Event) -> None:
        got.append(e)

    sub = await bus.subscribe("ci.>", handler, durable="u")
    await bus.publish([job_event("a")])
    await wait_for(lambda: len(got) == 1)
    await sub.unsubscribe()
    await bus.publish([job_event("b")])
    await asyncio.sleep(0.05)
    assert len(got) == 1


async def test_ping_answers_while_started(bus: EventBus) -> None:
    await bus.ping()
    await bus.close()
    with pytest.raises(Exception):  # noqa: B017 - each adapter raises its own error
        await bus.ping()


async def test_delivers_the_envelope_unchanged(bus: EventBus) -> None:
    got: list[Event] = []

    async def handler(e: Event) -> None:
        got.append(e)

    await bus.subscribe("ci.>", handler, durable="envelope")
    original = make_event(
        "ci.step.v1.completed",
        {"step_id": "s", "result_ref": "r", "duration_ms": 12, "nested": {"a": [1, "x"]}},
        correlation_id="run-1",
        tenant_id="acme",
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    )
    await bus.publish([original])
    await wait_for(lambda: len(got) == 1)
    assert got[0] == original


async def test_a_retry_keeps_publish_order(bus: EventBus) -> None:
    got: list[str] = []
    failed: set[str] = set()

    async def handler(e: Event) -> None:
        job = e.payload["job_id"]
        if job == "j1" and job not in failed:
            failed.add(job)
            raise RuntimeError("transient")
        got.append(job)

    await bus.subscribe("ci.job.>", handler, durable="ordered", retry_delay=0.05)
    await bus.publish([job_event(f"j{i}") for i in range(5)])
    await wait_for(lambda: len(got) == 5)
    assert got == [f"j{i}" for i in range(5)]


async def test_redelivery_is_the_same_event(bus: EventBus) -> None:
    seen: list[Event] = []

    async def flaky(e: Event) -> None:
        seen.append(e)
        if len(seen) < 2:
            raise RuntimeError("transient")

    await bus.subscribe("ci.job.>", flaky, durable="same", retry_delay=0.01)
    await bus.publish([job_event("x")])
    await wait_for(lambda: len(seen) == 2)
    assert seen[0] == seen[1]


async def test_a_new_subscription_starts_at_the_present(bus: EventBus) -> None:
    got: list[str] = []

    async def handler(e: Event) -> None:
        got.append(e.payload["job_id"])

    await bus.publish([job_event("before")])
    await bus.subscribe("ci.job.>", handler, durable="late")
    await bus.publish([job_event("after")])
    await wait_for(lambda: len(got) == 1)
    await asyncio.sleep(0.05)
    assert got == ["after"]


async def test_an_unordered_subscription_gets_every_event_once(bus: EventBus) -> None:
    got: list[str] = []
    failed: set[str] = set()

    async def handler(e: Event) -> None:
        job = e.payload["job_id"]
        if job == "j7" and job not in failed:  # one retry among them
            failed.add(job)
            raise RuntimeError("once")
        got.append(job)

    await bus.subscribe("ci.job.v1.*", handler, durable="counter", ordered=False)
    await bus.publish([job_event(f"j{i}") for i in range(200)])
    await wait_for(lambda: len(got) == 200)
    await asyncio.sleep(0.2)  # nothing more arrives
    assert sorted(got) == sorted(f"j{i}" for i in range(200))
