"""Scheduler v0: first in, first out, over the job slots of the nodes it knows.

Consumes ``ci.job.v1.requested`` (honouring ``not_before`` for retry back-off), places
the oldest queued job a node can take (all of the job's ``runs-on`` labels, a free slot),
and frees the slot when the job's attempt ends. A job no node can take waits without
holding up the jobs behind it. Duplicate deliveries are dropped by an in-memory inbox of
idempotency keys.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from faena.bus.port import EventBus, Subscription
from faena.domain.events import Event
from faena.scheduling.ports import AssignmentRecorder

POLICY = "fifo"
_INBOX_SIZE = 100_000


@dataclass
class NodeSlots:
    """What the scheduler knows of a node: its slots, labels and the jobs it holds."""

    node_id: str
    slots: int
    labels: frozenset[str] | None  # None: takes any labels (the embedded machine)
    held: set[str] = field(default_factory=set)

    def takes(self, runs_on: frozenset[str]) -> bool:
        return self.labels is None or runs_on <= self.labels

    @property
    def free(self) -> int:
        return self.slots - len(self.held)


@dataclass(frozen=True)
class _Queued:
    job_id: str
    attempt: int
    runs_on: frozenset[str]


class FifoScheduler:
    def __init__(self, bus: EventBus, recorder: AssignmentRecorder) -> None:
        self._bus = bus
        self._recorder = recorder
        self.nodes: dict[str, NodeSlots] = {}
        self._queue: list[_Queued] = []
        # job id -> attempts in the queue: membership without scanning the queue.
        self._queued: dict[str, set[int]] = {}
        self._held: dict[str, tuple[int, str]] = {}  # job id -> (attempt, node id)
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

    def load(self, node_id: str) -> int:
        node = self.nodes.get(node_id)
        return len(node.held) if node else 0

    async def start(self) -> None:
        self._subs.append(
            await self._bus.subscribe("ci.job.v1.>", self._on_job, durable="scheduler")
        )

    async def close(self) -> None:
        for t in self._timers:
            t.cancel()
        for s in self._subs:
            await s.unsubscribe()

    # -- nodes ---------------------------------------------------------------------------

    async def add_node(self, node_id: str, slots: int, labels: frozenset[str] | None) -> None:
        """A node joins, or changes its slots or labels; queued jobs may now fit."""
        node = self.nodes.get(node_id)
        if node is None:
            held = {j for j, (_, n) in self._held.items() if n == node_id}
            self.nodes[node_id] = NodeSlots(node_id, max(1, slots), labels, held)
        else:
            node.slots, node.labels = max(1, slots), labels
        await self._place()

    def remove_node(self, node_id: str) -> None:
        """A node left; its jobs keep their place until the orchestrator re-queues them."""
        self.nodes.pop(node_id, None)

    def restore(self, job_id: str, attempt: int, node_id: str) -> None:
        """Count a job placed before a restart against its node's slots."""
        self._held[job_id] = (attempt, node_id)
        node = self.nodes.get(node_id)
        if node is not None:
            node.held.add(job_id)

    def explain(self, runs_on: frozenset[str]) -> str | None:
        """Why a job with these labels cannot be placed now, or None if it can."""
        fitting = [n for n in self.nodes.values() if n.takes(runs_on)]
        if not fitting:
            wanted = ", ".join(sorted(runs_on)) or "(none)"
            return f"no node has all the labels {wanted}"
        if all(n.free <= 0 for n in fitting):
            return f"all {len(fitting)} fitting node(s) are busy"
        return None

    # -- events --------------------------------------------------------------------------

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

    def _release(self, job_id: str) -> None:
        held = self._held.pop(job_id, None)
        if held is not None and held[1] in self.nodes:
            self.nodes[held[1]].held.discard(job_id)

    async def _handle(self, event: Event) -> None:
        p = event.payload
        job_id = p["job_id"]
        if event.subject == "ci.job.v1.requested":
            self._release(job_id)
            item = _Queued(job_id, int(p.get("attempt", 1)), frozenset(p.get("runs_on") or ()))
            delay = (p.get("not_before") or 0) - time.time()
            if delay > 0:
                loop = asyncio.get_running_loop()
                handle = loop.call_later(delay, self._enqueue_later, item)
                self._timers.add(handle)
                return
            self._enqueue(item)
        elif event.subject in ("ci.job.v1.completed", "ci.job.v1.failed", "ci.job.v1.cancelled"):
            self._release(job_id)
            if self._queued.pop(job_id, None):
                self._queue = [q for q in self._queue if q.job_id != job_id]
        else:
            return
        await self._place()

    def _enqueue(self, item: _Queued, at: int | None = None) -> None:
        attempts = self._queued.setdefault(item.job_id, set())
        if item.attempt in attempts:
            return
        attempts.add(item.attempt)
        if at is None:
            self._queue.append(item)
        else:
            self._queue.insert(at, item)

    def _dequeue(self, index: int) -> _Queued:
        item = self._queue.pop(index)
        attempts = self._queued.get(item.job_id, set())
        attempts.discard(item.attempt)
        if not attempts:
            self._queued.pop(item.job_id, None)
        return item

    def _enqueue_later(self, item: _Queued) -> None:
        self._enqueue(item)
        task = asyncio.ensure_future(self._place())
        task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)

    def _pick(self, runs_on: frozenset[str]) -> NodeSlots | None:
        best: NodeSlots | None = None
        for node in self.nodes.values():
            if node.free > 0 and node.takes(runs_on) and (best is None or node.free > best.free):
                best = node
        return best

    async def _place(self) -> None:
        async with self._placing:
            i = 0
            while i < len(self._queue) and any(n.free > 0 for n in self.nodes.values()):
                item = self._queue[i]
                node = self._pick(item.runs_on)
                if node is None:
                    i += 1
                    continue
                await self._assign(i, node)

    async def _assign(self, index: int, node: NodeSlots) -> bool:
        """Place the queued item at ``index`` on ``node``; False if the job no longer
        waits for a placement. Caller holds ``_placing``."""
        item = self._dequeue(index)
        self._held[item.job_id] = (item.attempt, node.node_id)
        node.held.add(item.job_id)
        try:
            assignment = await self._recorder.create_assignment(
                item.job_id, item.attempt, node.node_id, POLICY
            )
        except Exception:
            # Keep the job where it was in line and its slot free for the next try.
            self._release(item.job_id)
            self._enqueue(item, at=index)
            raise
        if assignment is None:
            if self._held.get(item.job_id) == (item.attempt, node.node_id):
                self._release(item.job_id)
            return False
        return True

    # -- placing on request (POST /schedule) ---------------------------------------------

    def queued_job(self, job_id: str) -> tuple[int, frozenset[str]] | None:
        """The attempt and ``runs-on`` labels of a job waiting in the queue, or None
        (not queued: unknown, placed, or still waiting out its retry back-off)."""
        for item in self._queue:
            if item.job_id == job_id:
                return item.attempt, item.runs_on
        return None

    def placed_on(self, job_id: str) -> str | None:
        """The node holding a slot for the job, or None."""
        held = self._held.get(job_id)
        return held[1] if held is not None else None

    def where(self, job_id: str) -> tuple[str | None, str | None]:
        """Dry run of ``place_now``: (the node it would take now, None), or (None, why not).
        Changes nothing."""
        node_id = self.placed_on(job_id)
        if node_id is not None:
            return node_id, None
        queued = self.queued_job(job_id)
        if queued is None:
            return None, f"job {job_id} is not in the queue"
        node = self._pick(queued[1])
        if node is not None:
            return node.node_id, None
        return None, self.explain(queued[1]) or "no node can take it now"

    async def place_now(self, job_id: str) -> tuple[str | None, str | None]:
        """Place one queued job now, ahead of the FIFO order, if a node can take it.

        Returns (node id, None) once the job holds a slot (also when it already did:
        idempotent by job id), or (None, why not) leaving everything as it was.
        """
        async with self._placing:
            node_id = self.placed_on(job_id)
            if node_id is not None:
                return node_id, None
            index = next((i for i, q in enumerate(self._queue) if q.job_id == job_id), None)
            if index is None:
                return None, f"job {job_id} is not in the queue"
            item = self._queue[index]
            node = self._pick(item.runs_on)
            if node is None:
                return None, self.explain(item.runs_on) or "no node can take it now"
            if not await self._assign(index, node):
                return None, f"job {job_id} no longer waits for a placement"
            return node.node_id, None

    def why_waiting(self, job_id: str) -> str | None:
        """Why a queued job is not placed yet (no node with its labels, all busy), or None."""
        queued = self.queued_job(job_id)
        return self.explain(queued[1]) if queued is not None else None
