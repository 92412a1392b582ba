"""Scheduler v0: first in, first out, within a fixed number of slots on one node.

Consumes ``ci.job.v1.requested`` (honouring ``not_before`` for retry back-off), places
the oldest queued job when a slot is free, and frees the slot when the job's attempt
ends. Duplicate deliveries are dropped by an in-memory inbox of idempotency keys.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque

from faena.bus.port import EventBus, Subscription
from faena.domain.events import Event
from faena.scheduling.ports import AssignmentRecorder

POLICY = "fifo"
_INBOX_SIZE = 100_000


class FifoScheduler:
    def __init__(
        self,
        bus: EventBus,
        recorder: AssignmentRecorder,
        *,
        node_id: str = "local",
        slots: int = 1,
    ) -> None:
        self._bus = bus
        self._recorder = recorder
        self.node_id = node_id
        self.slots = max(1, slots)
        self._queue: deque[tuple[str, int]] = deque()
        self._held: dict[str, int] = {}
        self._inbox: OrderedDict[str, None] = OrderedDict()
        self._subs: list[Subscription] = []
        self._timers: set[asyncio.TimerHandle] = set()
        self._placing = asyncio.Lock()

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def running(self) -> int:
        return len(self._held)

    async def start(self) -> None:
        self._subs.append(
            await self._bus.subscribe("ci.job.v1.>", self._on_job, durable="scheduler")
        )

    async def close(self) -> None:
        for t in self._timers:
            t.cancel()
        for s in self._subs:
            await s.unsubscribe()

    def _first_time(self, event: Event) -> bool:
        if event.idempotency_key in self._inbox:
            return False
        self._inbox[event.idempotency_key] = None
        if len(self._inbox) > _INBOX_SIZE:
            self._inbox.popitem(last=False)
        return True

    async def _on_job(self, event: Event) -> None:
        if not self._first_time(event):
            return
        try:
            await self._handle(event)
        except Exception:
            # Not processed after all: let the redelivery through the inbox.
            self._inbox.pop(event.idempotency_key, None)
            raise

    async def _handle(self, event: Event) -> None:
        p = event.payload
        job_id = p["job_id"]
        if event.subject == "ci.job.v1.requested":
            self._held.pop(job_id, None)
            attempt = int(p.get("attempt", 1))
            delay = (p.get("not_before") or 0) - time.time()
            if delay > 0:
                loop = asyncio.get_running_loop()
                handle = loop.call_later(delay, self._enqueue_later, job_id, attempt)
                self._timers.add(handle)
                return
            if (job_id, attempt) not in self._queue:
                self._queue.append((job_id, attempt))
        elif event.subject in ("ci.job.v1.completed", "ci.job.v1.failed", "ci.job.v1.cancelled"):
            self._held.pop(job_id, None)
            self._queue = deque(q for q in self._queue if q[0] != job_id)
        else:
            return
        await self._place()

    def _enqueue_later(self, job_id: str, attempt: int) -> None:
        self._queue.append((job_id, attempt))
        task = asyncio.ensure_future(self._place())
        task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)

    async def _place(self) -> None:
        async with self._placing:
            while self._queue and len(self._held) < self.slots:
                job_id, attempt = self._queue.popleft()
                self._held[job_id] = attempt
                try:
                    assignment = await self._recorder.create_assignment(
                        job_id, attempt, self.node_id, POLICY
                    )
                except Exception:
                    # Keep the job first in line and its slot free for the next try.
                    self._held.pop(job_id, None)
                    self._queue.appendleft((job_id, attempt))
                    raise
                if assignment is None and self._held.get(job_id) == attempt:
                    del self._held[job_id]
