"""NodeRegistry: heartbeats, loss after missed ones, ownership, recovery after a restart."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from faena.bus.memory import MemoryBus
from faena.domain.errors import ErrorCode
from faena.domain.events import Event
from faena.scheduling.fifo import FifoScheduler
from faena.scheduling.nodes import LOST_SHOWN, NodeOwnedElsewhere, NodeRegistry, UnknownNode


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Losses:
    def __init__(self) -> None:
        self.lost: list[tuple[str, str]] = []

    async def node_lost(self, node_id: str, message: str) -> list[str]:
        self.lost.append((node_id, message))
        return ["r.1"]


class NoPlacements:
    async def create_assignment(
        self, job_id: str, attempt: int, node_id: str, policy: str
    ) -> str | None:
        return None


@pytest.fixture
async def bus() -> AsyncIterator[MemoryBus]:
    b = MemoryBus()
    await b.start()
    yield b
    await b.close()


async def registry(bus: MemoryBus) -> tuple[NodeRegistry, FifoScheduler, Losses, Clock]:
    clock, losses = Clock(), Losses()
    sched = FifoScheduler(bus, NoPlacements())
    return NodeRegistry(sched, losses, bus, interval=5.0, clock=clock), sched, losses, clock


async def register(reg: NodeRegistry, owner: str = "tk-1", node_id: str | None = None) -> str:
    node = await reg.register(owner=owner, name="box", labels=["linux"], slots=2, capacity={},
                              provider="local", version="0", node_id=node_id)  # fmt: skip
    return node.node_id


async def test_a_node_that_misses_three_heartbeats_is_lost_once(bus: MemoryBus) -> None:
    reg, sched, losses, clock = await registry(bus)
    seen: list[Event] = []

    async def record(e: Event) -> None:
        seen.append(e)

    await bus.subscribe("ci.node.>", record, durable="t")
    node_id = await register(reg)
    assert sched.nodes[node_id].labels == frozenset({"linux"})
    clock.now += 14.0
    reg.heartbeat(node_id, "tk-1")
    clock.now += 14.0
    await reg.check()
    assert losses.lost == []
    clock.now += 2.0
    await reg.check()
    await reg.check()
    assert [n for n, _ in losses.lost] == [node_id]
    assert "missed 3 heartbeats" in losses.lost[0][1]
    assert node_id not in sched.nodes
    assert reg.listing()[0]["state"] == "lost"
    await bus.drain()
    assert [e.subject for e in seen] == ["ci.node.v1.registered", "ci.node.v1.lost"]
    assert seen[1].payload["jobs"] == ["r.1"]
    with pytest.raises(UnknownNode):
        reg.heartbeat(node_id, "tk-1")
    # Registering again under the same id brings it back.
    assert await register(reg, node_id=node_id) == node_id
    assert reg.listing()[0]["state"] == "ready" and node_id in sched.nodes


async def test_nodes_answer_only_to_the_token_that_registered_them(bus: MemoryBus) -> None:
    reg, _, _, _ = await registry(bus)
    node_id = await register(reg, owner="tk-1")
    for call in (
        lambda: reg.heartbeat(node_id, "tk-2"),
        lambda: reg.check_owner(node_id, "tk-2"),
    ):
        with pytest.raises(NodeOwnedElsewhere) as err:
            call()
        assert err.value.code is ErrorCode.ORC_AUTH
    with pytest.raises(NodeOwnedElsewhere):
        await register(reg, owner="tk-2", node_id=node_id)
    await reg.add_local("local", 2, "local")
    with pytest.raises(NodeOwnedElsewhere):
        await register(reg, owner="tk-1", node_id="local")


async def test_after_a_restart_a_node_has_three_intervals_to_come_back(bus: MemoryBus) -> None:
    reg, _, losses, clock = await registry(bus)
    reg.expect("n-old")
    assert reg.listing()[0]["state"] == "recovering"
    with pytest.raises(UnknownNode):
        reg.heartbeat("n-old", "tk-1")  # it must register again first
    clock.now += 16.0
    await reg.check()
    assert [n for n, _ in losses.lost] == ["n-old"]
    clock.now += LOST_SHOWN + 1
    await reg.check()
    assert reg.listing() == []


async def test_the_local_node_is_never_lost(bus: MemoryBus) -> None:
    reg, sched, losses, clock = await registry(bus)
    await reg.add_local("local", 3, "local")
    clock.now += 10_000
    await reg.check()
    assert losses.lost == [] and sched.nodes["local"].labels is None


async def test_heartbeats_carry_capacity_to_the_scheduler(bus: MemoryBus) -> None:
    reg, sched, _, _ = await registry(bus)
    node_id = await register(reg)
    await reg.update_capacity(node_id, 5, {"cpu": "5", "memory": "8Gi"})
    assert sched.nodes[node_id].slots == 5
    listed = reg.listing()[0]["capacity"]
    assert listed == {"cpu": "5", "memory": "8Gi", "slots": 5}
