"""JetStreamBus against a real nats-server: duplicates, restarts, outbox relay, dead letters.

The contract every bus passes is tests/contract/test_bus.py; this file holds what only a
durable, out-of-process bus can show. Each test gets its own server (``nats_server``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import nats
import pytest

from faena.bus.nats import DLQ_CONSUMER, DLQ_DELIVERIES, DLQ_REASON, BusUnavailable, JetStreamBus
from faena.bus.relay import OutboxRelay
from faena.domain.events import Event, make_event
from faena.store.port import Commit
from faena.store.sql import SqlStore
from nats_server import NatsServer

STREAM = "FAENA_IT"


def job_event(job_id: str, attempt: int = 1) -> Event:
    return make_event(
        "ci.job.v1.requested",
        {"job_id": job_id, "spec_hash": "h", "attempt": attempt},
        correlation_id="run",
    )


def make_bus(server: NatsServer, **kw: Any) -> JetStreamBus:
    opts: dict[str, Any] = {
        "stream": STREAM,
        "fetch_timeout": 1.0,
        "reconnect_wait": 0.1,
        "ack_wait": 5.0,
    }
    opts.update(kw)
    return JetStreamBus(server.url, **opts)


@pytest.fixture
async def bus(nats_server: NatsServer) -> AsyncIterator[JetStreamBus]:
    b = make_bus(nats_server)
    await b.start()
    yield b
    await b.close()


async def wait_for(cond: Callable[[], bool], timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.02)


class Collector:
    def __init__(self) -> None:
        self.events: list[Event] = []

    async def __call__(self, e: Event) -> None:
        self.events.append(e)

    @property
    def jobs(self) -> list[str]:
        return [e.payload["job_id"] for e in self.events]


async def stream_messages(bus: JetStreamBus) -> int:
    info = await bus.js.stream_info(bus.stream)
    return int(info.state.messages)


async def test_a_duplicate_publish_is_stored_and_delivered_once(bus: JetStreamBus) -> None:
    got = Collector()
    await bus.subscribe("ci.job.>", got, durable="dedupe")
    e = job_event("x")
    await bus.publish([e])
    await bus.publish([e, e])  # a relay republishing, a retry after a lost ack
    await bus.publish([job_event("x", attempt=2)])  # a retry is a new attempt, not a dup
    await wait_for(lambda: len(got.events) == 2)
    await asyncio.sleep(0.2)
    assert [ev.payload["attempt"] for ev in got.events] == [1, 2]
    assert await stream_messages(bus) == 2


async def test_events_published_before_a_restart_are_consumed_after_it(
    nats_server: NatsServer,
) -> None:
    consumer = make_bus(nats_server)
    await consumer.start()
    got = Collector()
    sub = await consumer.subscribe("ci.job.>", got, durable="survivor")
    await sub.unsubscribe()
    await consumer.close()  # the consuming process is gone; its durable consumer stays

    producer = make_bus(nats_server)
    await producer.start()
    await producer.publish([job_event(f"j{i}") for i in range(50)])
    await producer.close()

    nats_server.restart(kill=True)  # a crash: the store dir and the port are kept

    consumer = make_bus(nats_server)
    await consumer.start()
    try:
        await consumer.subscribe("ci.job.>", got, durable="survivor")
        await wait_for(lambda: len(got.events) == 50)
        assert got.jobs == [f"j{i}" for i in range(50)]
    finally:
        await consumer.close()


async def test_a_live_bus_rides_out_a_restart(nats_server: NatsServer, bus: JetStreamBus) -> None:
    got = Collector()
    await bus.subscribe("ci.job.>", got, durable="live")
    await bus.publish([job_event(f"a{i}") for i in range(20)])
    await wait_for(lambda: len(got.events) == 20)

    nats_server.stop()
    with pytest.raises(BusUnavailable):
        await bus.ping()
    # Published while the server is down: publish retries until it is back.
    publishing = asyncio.create_task(bus.publish([job_event(f"b{i}") for i in range(20)]))
    await asyncio.sleep(0.5)
    assert not publishing.done()
    nats_server.start()
    await asyncio.wait_for(publishing, 15)
    await bus.publish([job_event(f"c{i}") for i in range(20)])

    await wait_for(lambda: len(got.events) == 60)
    await asyncio.sleep(0.2)
    expected = [f"{p}{i}" for p in "abc" for i in range(20)]
    assert got.jobs == expected
    await bus.ping()


async def test_an_unacked_event_is_redelivered_after_a_restart(
    nats_server: NatsServer, bus: JetStreamBus
) -> None:
    seen: list[str] = []
    release = asyncio.Event()

    async def slow(e: Event) -> None:
        seen.append(e.payload["job_id"])
        if len(seen) == 1:
            await release.wait()  # handling when the server dies
            raise RuntimeError("lost its connection half-way")

    await bus.subscribe("ci.job.>", slow, durable="unacked", retry_delay=0.1)
    await bus.publish([job_event("x"), job_event("y")])
    await wait_for(lambda: len(seen) == 1)
    nats_server.restart(kill=True)
    release.set()
    await wait_for(lambda: seen[-2:] == ["x", "y"] and len(seen) >= 3)
    assert seen[0] == "x"


async def test_publish_fails_while_down_and_the_outbox_relay_republishes(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    store = SqlStore(f"sqlite+aiosqlite:///{tmp_path / 'faena.db'}")
    await store.open()
    bus = make_bus(nats_server, publish_timeout=0.5)
    await bus.start()
    got = Collector()
    await bus.subscribe("ci.job.>", got, durable="relayed")
    relay = OutboxRelay(store, bus, flush_interval=0.05)
    await relay.start()
    try:
        first = [job_event(f"a{i}") for i in range(5)]
        await store.commit(Commit(events=first))
        await relay.publish_committed(first)
        await wait_for(lambda: len(got.events) == 5)

        nats_server.stop()
        lost = [job_event(f"b{i}") for i in range(5)]
        await store.commit(Commit(events=lost))
        await relay.publish_committed(lost)  # the bus refuses them: the relay falls behind
        assert relay.behind
        assert [e.event_id for e in await store.outbox_pending()] == [e.event_id for e in lost]

        nats_server.start()  # the relay's periodic catch-up publishes the outbox
        await wait_for(lambda: len(got.events) == 10)
        await asyncio.sleep(0.2)
        assert got.jobs == [f"a{i}" for i in range(5)] + [f"b{i}" for i in range(5)]
        await wait_for(lambda: not relay.behind)
        assert await store.outbox_pending() == []
    finally:
        await relay.close()
        await bus.close()
        await store.close()


async def test_dead_letters_carry_the_reason_and_do_not_loop(bus: JetStreamBus) -> None:
    calls = 0

    async def broken(e: Event) -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("boom: always")

    dead = Collector()
    # ``ci.>`` sees the dead letters too and fails on them: they must not be re-dead-lettered.
    await bus.subscribe("ci.>", broken, durable="everything", max_deliver=2, retry_delay=0.01)
    await bus.subscribe("ci.dlq.>", dead, durable="dlq")
    original = job_event("x")
    await bus.publish([original])
    await wait_for(lambda: len(dead.events) == 1 and calls >= 4)
    await asyncio.sleep(0.5)
    assert calls == 4  # two deliveries of the event, two of its dead letter
    assert [e.subject for e in dead.events] == ["ci.dlq.ci.job.v1.requested"]
    assert dead.events[0].event_id == original.event_id
    assert await stream_messages(bus) == 2

    nc = await nats.connect(bus.servers)
    try:
        js = nc.jetstream()
        raw = await js.get_last_msg(bus.stream, "ci.dlq.ci.job.v1.requested")
        assert raw.headers is not None
        assert "boom: always" in raw.headers[DLQ_REASON]
        assert raw.headers[DLQ_CONSUMER] == "everything"
        assert raw.headers[DLQ_DELIVERIES] == "2"
    finally:
        await nc.close()


async def test_durable_names_are_sanitised_and_shared(bus: JetStreamBus) -> None:
    a = Collector()
    b = Collector()
    # Two subscriptions with one durable (two replicas) split the work between them.
    await bus.subscribe("ci.job.>", a, durable="orchestrator.v1 *main*")
    await bus.subscribe("ci.job.>", b, durable="orchestrator.v1 *main*")
    await bus.publish([job_event(f"j{i}") for i in range(20)])
    await wait_for(lambda: len(a.events) + len(b.events) == 20)
    await asyncio.sleep(0.2)
    assert sorted(a.jobs + b.jobs) == sorted(f"j{i}" for i in range(20))


async def test_retention_follows_the_subject(nats_server: NatsServer) -> None:
    """Step events expire before job events (seconds here, where the seeds say 30 and 90
    days); the stream keeps the longest and says it allows per-message TTLs."""
    b = make_bus(nats_server, stream="FAENA_TTL", retention={"ci.step.": 1.0},
                 default_retention=3600.0)  # fmt: skip
    await b.start()
    try:
        info = await b.js.stream_info(b.stream)
        assert info.config.allow_msg_ttl and info.config.max_age == 3600.0
        step = make_event(
            "ci.step.v1.started",
            {"job_id": "j", "step_id": "s", "exec_id": "e"},
            correlation_id="r",
        )
        await b.publish([job_event("kept"), step])
        assert await stream_messages(b) == 2
        async with asyncio.timeout(15):
            while await stream_messages(b) != 1:
                await asyncio.sleep(0.1)
        kept = await b.js.get_last_msg(b.stream, "ci.job.v1.requested")
        assert kept.data is not None and b"kept" in kept.data
    finally:
        await b.close()


def test_the_default_retention_is_the_seeds() -> None:
    b = JetStreamBus("nats://127.0.0.1:1")
    day = 86400
    assert b.kept_for("ci.job.v1.completed") == 90 * day
    assert b.kept_for("ci.run.v1.requested") == 90 * day
    assert b.kept_for("ci.step.v1.completed") == 30 * day
    assert b.kept_for("ci.security.v1.denied") == 180 * day == b.max_age
    assert b.headers("ci.step.v1.started", "k") == {"Nats-Msg-Id": "k", "Nats-TTL": "2592000s"}
    assert b.headers("ci.security.v1.denied", "k") == {"Nats-Msg-Id": "k"}


async def test_an_unordered_durable_is_served_in_batches_and_can_be_changed(
    bus: JetStreamBus,
) -> None:
    got = Collector()
    sub = await bus.subscribe("ci.job.>", got, durable="wakeups")
    assert (await bus.js.consumer_info(bus.stream, "wakeups")).config.max_ack_pending == 1
    await sub.unsubscribe()
    # The same durable, now unordered (an older faena made it ordered): updated in place.
    await bus.subscribe("ci.job.>", got, durable="wakeups", ordered=False)
    info = await bus.js.consumer_info(bus.stream, "wakeups")
    assert info.config.max_ack_pending == 64
    await bus.publish([job_event(f"j{i}") for i in range(100)])
    await wait_for(lambda: len(got.events) == 100)


async def test_a_consumer_nobody_binds_goes_after_the_inactive_threshold(
    nats_server: NatsServer,
) -> None:
    b = make_bus(nats_server, stream="FAENA_IDLE", inactive_threshold=1.0)
    await b.start()
    try:
        got = Collector()
        kept = await b.subscribe("ci.job.>", got, durable="kept")
        gone = await b.subscribe("ci.job.>", got, durable="gone")
        await gone.unsubscribe()  # its replica went away for good
        await asyncio.sleep(3.0)
        names = [c.name for c in await b.js.consumers_info(b.stream)]
        assert names == ["kept"]
        await b.publish([job_event("still")])
        await wait_for(lambda: got.jobs == ["still"])
        await kept.unsubscribe()
    finally:
        await b.close()
