"""OutboxRelay: nothing lost, order kept, when the bus refuses publishes for a while."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from faena.bus.memory import MemoryBus
from faena.bus.relay import OutboxRelay
from faena.domain.events import Event, make_event
from faena.store.memory import MemoryStore
from faena.store.port import Commit


class FlakyBus(MemoryBus):
    """A MemoryBus whose publishes fail while ``down`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False

    async def publish(self, events: Sequence[Event]) -> None:
        if self.down:
            raise ConnectionError("bus down")
        await super().publish(events)


def event(n: int) -> Event:
    return make_event("ci.run.v1.started", {"run_id": f"r{n}"}, correlation_id=f"r{n}")


async def test_events_refused_by_the_bus_go_out_later_in_order() -> None:
    store, bus = MemoryStore(), FlakyBus()
    await store.open()
    await bus.start()
    seen: list[str] = []

    async def record(e: Event) -> None:
        seen.append(e.correlation_id)

    await bus.subscribe("ci.>", record, durable="t")
    relay = OutboxRelay(store, bus, flush_interval=0.01)
    await relay.start()
    events = [event(n) for n in range(6)]

    async def commit_and_publish(batch: list[Event]) -> None:
        await store.commit(Commit(events=batch))
        await relay.publish_committed(batch)

    await commit_and_publish(events[:2])
    bus.down = True
    await commit_and_publish(events[2:4])  # refused: no exception reaches the committer
    assert relay.behind
    bus.down = False
    await commit_and_publish(events[4:])  # must wait behind the refused ones
    async with asyncio.timeout(5):
        while relay.behind or len(set(seen)) < 6:
            await asyncio.sleep(0.01)
            await bus.drain()
    order = list(dict.fromkeys(seen))  # at-least-once: repeats allowed, order kept
    assert order == [f"r{n}" for n in range(6)]
    await relay.close()
    await relay.flush()
    assert await store.outbox_pending() == []
    await bus.close()
