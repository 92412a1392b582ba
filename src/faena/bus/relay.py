"""Outbox relay: publishes committed events to the bus, then marks them published.

Events are published right after their commit; marking them is batched. After a crash the
unmarked ones are published again at start-up, which at-least-once delivery allows. When
the bus refuses a publish (a NATS restart), nothing is lost: the events are in the outbox,
the relay falls behind, and its periodic flush publishes the outbox again, oldest first,
before any newer event goes out directly.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from faena.bus.port import EventBus
from faena.domain.events import Event
from faena.periodic import PeriodicFlush
from faena.store.port import Store

log = logging.getLogger(__name__)


class OutboxRelay:
    def __init__(self, store: Store, bus: EventBus, flush_interval: float = 0.2) -> None:
        self._store = store
        self._bus = bus
        self._published: list[str] = []
        self._periodic = PeriodicFlush(self.flush, flush_interval, "outbox-relay")
        self._lock = asyncio.Lock()
        self.behind = False

    async def start(self, *, republish: bool = True) -> None:
        """Publish what a previous process committed but never marked, then run."""
        while pending := await self._store.outbox_pending(limit=1000):
            if republish:
                await self._bus.publish(pending)
            await self._store.mark_published([e.event_id for e in pending])
        self._periodic.start()

    async def publish_committed(self, events: Sequence[Event]) -> None:
        """Publish events just committed; never raises for a bus that is down."""
        async with self._lock:
            if self.behind:
                return  # in the outbox: the catch-up sends them in order
            try:
                await self._bus.publish(events)
            except Exception as exc:
                log.warning("bus unavailable (%s); events wait in the outbox", exc)
                self.behind = True
                return
            self._published.extend(e.event_id for e in events)

    async def flush(self) -> None:
        if self.behind:
            await self._catch_up()
        ids, self._published = self._published, []
        if ids:
            try:
                await self._store.mark_published(ids)
            except Exception:
                self._published[:0] = ids
                raise

    async def _catch_up(self) -> None:
        async with self._lock:
            while pending := await self._store.outbox_pending(limit=1000):
                try:
                    await self._bus.publish(pending)
                except Exception as exc:
                    log.debug("bus still unavailable: %s", exc)
                    return
                await self._store.mark_published([e.event_id for e in pending])
            self.behind = False
            log.warning("bus back: the outbox is published")

    async def close(self) -> None:
        await self._periodic.close()
