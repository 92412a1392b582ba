"""Outbox relay: publishes committed events to the bus, then marks them published.

Events are published right after their commit; marking them is batched. After a crash the
unmarked ones are published again at start-up, which at-least-once delivery allows.
"""

from __future__ import annotations

from collections.abc import Sequence

from faena.bus.port import EventBus
from faena.domain.events import Event
from faena.periodic import PeriodicFlush
from faena.store.port import Store


class OutboxRelay:
    def __init__(self, store: Store, bus: EventBus, flush_interval: float = 0.2) -> None:
        self._store = store
        self._bus = bus
        self._published: list[str] = []
        self._periodic = PeriodicFlush(self.flush, flush_interval, "outbox-relay")

    async def start(self, *, republish: bool = True) -> None:
        """Publish what a previous process committed but never marked, then run."""
        while pending := await self._store.outbox_pending(limit=1000):
            if republish:
                await self._bus.publish(pending)
            await self._store.mark_published([e.event_id for e in pending])
        self._periodic.start()

    async def publish_committed(self, events: Sequence[Event]) -> None:
        await self._bus.publish(events)
        self._published.extend(e.event_id for e in events)

    async def flush(self) -> None:
        ids, self._published = self._published, []
        if ids:
            try:
                await self._store.mark_published(ids)
            except Exception:
                self._published[:0] = ids
                raise

    async def close(self) -> None:
        await self._periodic.close()
