"""In-process EventBus: one queue and one delivery task per subscription."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import replace

from faena.bus.port import DLQ_PREFIX, Handler
from faena.domain.events import Event, subject_matches

log = logging.getLogger(__name__)


class _MemorySubscription:
    def __init__(
        self,
        bus: MemoryBus,
        pattern: str,
        handler: Handler,
        durable: str,
        max_deliver: int,
        retry_delay: float,
    ) -> None:
        self.bus = bus
        self.pattern = pattern
        self.handler = handler
        self.durable = durable
        self.max_deliver = max_deliver
        self.retry_delay = retry_delay
        self.queue: asyncio.Queue[Event] = asyncio.Queue()
        self.busy = False
        self.task = asyncio.create_task(self._deliver(), name=f"bus:{durable}")

    async def _deliver(self) -> None:
        while True:
            event = await self.queue.get()
            self.busy = True
            try:
                await self._handle(event)
            finally:
                self.busy = False
                self.queue.task_done()

    async def _handle(self, event: Event) -> None:
        for attempt in range(1, self.max_deliver + 1):
            try:
                await self.handler(event)
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning(
                    "handler %s failed on %s (delivery %d/%d)",
                    self.durable,
                    event.subject,
                    attempt,
                    self.max_deliver,
                    exc_info=True,
                )
                if attempt < self.max_deliver:
                    await asyncio.sleep(self.retry_delay)
        dead = replace(event, subject=DLQ_PREFIX + event.subject)
        await self.bus.publish([dead])

    async def unsubscribe(self) -> None:
        with contextlib.suppress(ValueError):
            self.bus._subs.remove(self)
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


class MemoryBus:
    """Delivers within the process; nothing survives a restart (the outbox does)."""

    def __init__(self) -> None:
        self._subs: list[_MemorySubscription] = []
        self._open = False

    async def start(self) -> None:
        self._open = True

    async def close(self) -> None:
        self._open = False
        for sub in list(self._subs):
            await sub.unsubscribe()

    async def ping(self) -> None:
        if not self._open:
            raise ConnectionError("the in-process bus is not started")

    async def publish(self, events: Sequence[Event]) -> None:
        for event in events:
            for sub in self._subs:
                if subject_matches(sub.pattern, event.subject):
                    sub.queue.put_nowait(event)

    async def subscribe(
        self,
        pattern: str,
        handler: Handler,
        *,
        durable: str,
        max_deliver: int = 5,
        retry_delay: float = 0.05,
        ordered: bool = True,  # delivered in order regardless: it costs nothing here
    ) -> _MemorySubscription:
        sub = _MemorySubscription(self, pattern, handler, durable, max_deliver, retry_delay)
        self._subs.append(sub)
        return sub

    def depths(self) -> dict[str, int]:
        """Events waiting per subscription pattern (``tel_queue_depth``)."""
        out: dict[str, int] = {}
        for sub in self._subs:
            out[sub.pattern] = out.get(sub.pattern, 0) + sub.queue.qsize()
        return out

    async def drain(self) -> None:
        """Wait until every subscription has handled everything published so far."""
        while any(s.queue.qsize() or s.busy for s in self._subs):
            await asyncio.gather(*(s.queue.join() for s in self._subs))
