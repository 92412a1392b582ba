"""The nodes jobs run on: registration, heartbeats, and loss detection.

Agents heartbeat every ``interval`` seconds; a node silent for ``missed`` intervals is
lost: it leaves the scheduler and the jobs placed on it are failed over (re-queued without
using their retry attempts). A lost node that comes back registers again as new.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from faena.bus.port import EventBus
from faena.domain.errors import ErrorCode, FaenaError, NotFound
from faena.domain.events import make_event, new_id
from faena.scheduling.fifo import FifoScheduler
from faena.scheduling.ports import NodeLossHandler

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL = 5.0
MISSED_HEARTBEATS = 3
LOST_SHOWN = 3600.0


class UnknownNode(NotFound):
    """A heartbeat from a node the control plane does not know (lost, or a restart)."""


class NodeOwnedElsewhere(FaenaError):
    """A node id registered by another agent token (403)."""

    code = ErrorCode.ORC_AUTH


@dataclass
class Node:
    node_id: str
    name: str
    labels: frozenset[str] | None
    slots: int
    capacity: dict[str, str] = field(default_factory=dict)
    provider: str = "local"
    version: str = ""
    owner: str = ""
    registered_at: float = 0.0
    last_seen: float = 0.0
    state: str = "ready"  # ready | recovering | lost
    heartbeats: bool = True  # False: in-process, never lost

    def to_dict(self, load: int) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "name": self.name,
            "provider": self.provider,
            "labels": sorted(self.labels) if self.labels is not None else [],
            "capacity": {**self.capacity, "slots": self.slots},
            "running": load,
            "state": self.state,
            "version": self.version,
            "last_seen": self.last_seen or None,
        }


class NodeRegistry:
    def __init__(
        self,
        scheduler: FifoScheduler,
        on_lost: NodeLossHandler,
        bus: EventBus,
        *,
        interval: float = HEARTBEAT_INTERVAL,
        missed: int = MISSED_HEARTBEATS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._scheduler = scheduler
        self._on_lost = on_lost
        self._bus = bus
        self.interval = interval
        self.missed = missed
        self._clock = clock
        self.nodes: dict[str, Node] = {}
        self._task: asyncio.Task[None] | None = None
        self._lost_hooks: list[Callable[[str], None]] = []
        self._paused = False

    def on_lost(self, hook: Callable[[str], None]) -> None:
        """Call ``hook(node_id)`` whenever a node is lost."""
        self._lost_hooks.append(hook)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._watch(), name="node-registry")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def add_local(self, node_id: str, slots: int, provider: str) -> Node:
        """The in-process node of the embedded shape: any labels, never lost."""
        node = Node(node_id, node_id, None, slots, provider=provider, heartbeats=False)
        node.registered_at = node.last_seen = self._clock()
        self.nodes[node_id] = node
        await self._scheduler.add_node(node_id, slots, None)
        return node

    async def register(
        self,
        *,
        owner: str,
        name: str,
        labels: list[str],
        slots: int,
        capacity: dict[str, str],
        provider: str,
        version: str,
        node_id: str | None = None,
    ) -> Node:
        """Register (or re-register) an agent's node; returns it with its id."""
        earlier = self.nodes.get(node_id) if node_id else None
        if earlier is not None and earlier.owner and earlier.owner != owner:
            raise NodeOwnedElsewhere(f"node {node_id} belongs to another agent token")
        if earlier is not None and not earlier.heartbeats:
            raise NodeOwnedElsewhere(f"node {node_id} is the server's own node")
        now = self._clock()
        node = Node(
            node_id or "n-" + new_id()[-12:],
            name,
            frozenset(labels),
            max(1, slots),
            dict(capacity),
            provider,
            version,
            owner,
            registered_at=now,
            last_seen=now,
        )
        self.nodes[node.node_id] = node
        await self._scheduler.add_node(node.node_id, node.slots, node.labels)
        await self._publish(
            "ci.node.v1.registered",
            {
                "node_id": node.node_id,
                "capacity": node.to_dict(0)["capacity"],
                "labels": sorted(node.labels or ()),
            },
            node.node_id,
        )
        log.info("node %s (%s) registered: %s", node.node_id, name, sorted(labels))
        return node

    def expect(self, node_id: str) -> None:
        """A node that had jobs before a restart: it has ``missed`` intervals to return."""
        if node_id not in self.nodes:
            now = self._clock()
            self.nodes[node_id] = Node(
                node_id, node_id, frozenset(), 1, registered_at=now, last_seen=now,
                state="recovering",
            )  # fmt: skip

    def heartbeat(self, node_id: str, owner: str) -> Node:
        """Note that a node is alive; raises UnknownNode if it must register again."""
        node = self.nodes.get(node_id)
        if node is None or node.state != "ready":
            raise UnknownNode(f"node {node_id} is not registered (register again)")
        if node.owner and node.owner != owner:
            raise NodeOwnedElsewhere(f"node {node_id} belongs to another agent token")
        node.last_seen = self._clock()
        return node

    async def update_capacity(
        self, node_id: str, slots: int | None, capacity: dict[str, str] | None
    ) -> None:
        """A heartbeat's capacity: new slots reach the scheduler at once."""
        node = self.nodes[node_id]
        if capacity is not None and capacity != node.capacity:
            node.capacity = dict(capacity)
            await self._publish("ci.node.v1.capacity_updated",
                                {"node_id": node_id, "capacity": node.to_dict(0)["capacity"],
                                 "seq": int(self._clock() * 1000)}, node_id)  # fmt: skip
        if slots is not None and slots != node.slots:
            node.slots = slots
            await self._scheduler.add_node(node_id, slots, node.labels)

    def check_owner(self, node_id: str, owner: str) -> Node:
        """The node, if ``owner`` registered it; raises otherwise."""
        node = self.nodes.get(node_id)
        # After a restart a node is "recovering" until its agent registers again.
        if node is None or node.state != "ready":
            raise UnknownNode(f"node {node_id} is not registered (register again)")
        if node.owner != owner:
            raise NodeOwnedElsewhere(f"node {node_id} belongs to another agent token")
        return node

    async def deregister(self, node_id: str, owner: str) -> None:
        """An agent leaving on purpose: its jobs are failed over at once."""
        node = self.check_owner(node_id, owner)
        await self._lose(node, f"node {node.name} left")
        self.nodes.pop(node_id, None)

    def listing(self) -> list[dict[str, Any]]:
        return [n.to_dict(self._scheduler.load(n.node_id)) for n in self.nodes.values()]

    def pause(self) -> None:
        """Stop declaring nodes lost: the server itself is going away, not its agents."""
        self._paused = True

    async def check(self) -> None:
        """Lose every node silent for longer than ``missed`` heartbeat intervals."""
        if self._paused:
            return
        now = self._clock()
        deadline = now - self.interval * self.missed
        for node in list(self.nodes.values()):
            if node.heartbeats and node.state != "lost" and node.last_seen < deadline:
                await self._lose(node, f"node {node.name} missed {self.missed} heartbeats")
            elif node.state == "lost" and node.last_seen < now - LOST_SHOWN:
                del self.nodes[node.node_id]  # listed a while, so people see what happened

    async def _lose(self, node: Node, message: str) -> None:
        node.state = "lost"
        self._scheduler.remove_node(node.node_id)
        for hook in self._lost_hooks:
            hook(node.node_id)
        moved = await self._on_lost.node_lost(node.node_id, message)
        if moved:
            log.warning("%s; its %d job(s) failed over: %s", message, len(moved), ", ".join(moved))
        else:
            log.warning("%s; it had no job", message)
        await self._publish(
            "ci.node.v1.lost", {"node_id": node.node_id, "jobs": moved, "reason": message},
            node.node_id,
        )  # fmt: skip

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.interval / 2))
            try:
                await self.check()
            except Exception:
                log.exception("node check failed")

    async def _publish(self, subject: str, payload: dict[str, Any], node_id: str) -> None:
        # Node events describe the fleet, not a run: live subscribers only, no event log.
        with contextlib.suppress(Exception):
            await self._bus.publish([make_event(subject, payload, correlation_id=node_id)])
