"""FifoScheduler against the in-memory bus and a recorder fake."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from faena.bus.memory import MemoryBus
from faena.domain.events import Event, make_event
from faena.scheduling.fifo import FifoScheduler


class FakeRecorder:
    """Accepts every placement, optionally failing the first ``fail`` calls."""

    def __init__(self, fail: int = 0) -> None:
        self.placed: list[tuple[str, int]] = []
        self.nodes: dict[str, str] = {}
        self.fail = fail

    async def create_assignment(
        self, job_id: str, attempt: int, node_id: str, policy: str
    ) -> str | None:
        if self.fail:
            self.fail -= 1
            raise RuntimeError("store unavailable")
        self.placed.append((job_id, attempt))
        self.nodes[job_id] = node_id
        return f"a-{job_id}-{attempt}"


async def scheduler(bus: MemoryBus, rec: FakeRecorder, slots: int) -> FifoScheduler:
    sched = FifoScheduler(bus, rec)
    await sched.add_node("local", slots, None)
    await sched.start()
    return sched


def requested(
    job_id: str,
    attempt: int = 1,
    not_before: float | None = None,
    runs_on: tuple[str, ...] = (),
) -> Event:
    payload: dict[str, object] = {
        "job_id": job_id,
        "spec_hash": "h",
        "attempt": attempt,
        "runs_on": list(runs_on),
    }
    if not_before is not None:
        payload["not_before"] = not_before
    return make_event("ci.job.v1.requested", payload, correlation_id="r")


def completed(job_id: str, attempt: int = 1) -> Event:
    return make_event(
        "ci.job.v1.completed",
        {"job_id": job_id, "result_ref": "success", "attempt": attempt},
        correlation_id="r",
    )


@pytest.fixture
async def bus() -> AsyncIterator[MemoryBus]:
    b = MemoryBus()
    yield b
    await b.close()


async def test_places_in_order_within_the_slots(bus: MemoryBus) -> None:
    rec = FakeRecorder()
    sched = await scheduler(bus, rec, slots=2)
    await bus.publish([requested(f"r.{i}") for i in range(1, 6)])
    await bus.drain()
    assert rec.placed == [("r.1", 1), ("r.2", 1)]
    assert sched.queued == 3 and sched.running == 2
    await bus.publish([completed("r.2")])
    await bus.drain()
    assert rec.placed[-1] == ("r.3", 1)
    await bus.publish([completed("r.1"), completed("r.3")])
    await bus.drain()
    assert [j for j, _ in rec.placed] == ["r.1", "r.2", "r.3", "r.4", "r.5"]


async def test_duplicate_deliveries_are_placed_once(bus: MemoryBus) -> None:
    rec = FakeRecorder()
    await scheduler(bus, rec, slots=4)
    e = requested("r.1")
    await bus.publish([e, e, e])
    await bus.drain()
    assert rec.placed == [("r.1", 1)]


async def test_a_retry_is_a_new_attempt_and_frees_the_old_slot(bus: MemoryBus) -> None:
    rec = FakeRecorder()
    await scheduler(bus, rec, slots=1)
    await bus.publish([requested("r.1"), requested("r.2")])
    await bus.drain()
    await bus.publish([requested("r.1", attempt=2)])  # re-queued: node lost, retry
    await bus.drain()
    assert rec.placed == [("r.1", 1), ("r.2", 1)]
    await bus.publish([completed("r.2")])
    await bus.drain()
    assert rec.placed[-1] == ("r.1", 2)


async def test_not_before_delays_placement(bus: MemoryBus) -> None:
    rec = FakeRecorder()
    await scheduler(bus, rec, slots=1)
    await bus.publish([requested("r.1", not_before=time.time() + 0.2)])
    await bus.drain()
    assert rec.placed == []
    async with asyncio.timeout(5):
        while not rec.placed:
            await asyncio.sleep(0.01)
    assert rec.placed == [("r.1", 1)]


async def test_a_failed_placement_is_retried_by_redelivery(bus: MemoryBus) -> None:
    rec = FakeRecorder(fail=1)
    sched = await scheduler(bus, rec, slots=1)
    await bus.publish([requested("r.1")])
    async with asyncio.timeout(5):
        while not rec.placed:
            await asyncio.sleep(0.01)
    assert rec.placed == [("r.1", 1)]
    assert sched.running == 1 and sched.queued == 0


async def test_labels_pick_the_node_and_a_job_no_node_fits_does_not_block_others(
    bus: MemoryBus,
) -> None:
    rec = FakeRecorder()
    sched = FifoScheduler(bus, rec)
    await sched.add_node("cpu", 1, frozenset({"linux"}))
    await sched.start()
    await bus.publish([requested("r.1", runs_on=("gpu",)), requested("r.2", runs_on=("linux",))])
    await bus.drain()
    assert rec.placed == [("r.2", 1)] and rec.nodes["r.2"] == "cpu"
    assert sched.queued == 1
    assert sched.explain(frozenset({"gpu"})) == "no node has all the labels gpu"
    await sched.add_node("gpu-box", 2, frozenset({"linux", "gpu"}))
    await bus.drain()
    assert rec.placed[-1] == ("r.1", 1) and rec.nodes["r.1"] == "gpu-box"


async def test_jobs_spread_over_nodes_and_a_lost_node_frees_nothing_until_requeued(
    bus: MemoryBus,
) -> None:
    rec = FakeRecorder()
    sched = FifoScheduler(bus, rec)
    await sched.add_node("a", 1, frozenset())
    await sched.add_node("b", 1, frozenset())
    await sched.start()
    await bus.publish([requested(f"r.{i}") for i in (1, 2, 3)])
    await bus.drain()
    assert {rec.nodes["r.1"], rec.nodes["r.2"]} == {"a", "b"}
    assert sched.queued == 1
    lost = rec.nodes["r.1"]
    sched.remove_node(lost)
    assert sched.explain(frozenset()) == "all 1 fitting node(s) are busy"
    # The orchestrator re-queues the lost node's job as a new attempt.
    await bus.publish([requested("r.1", attempt=2)])
    await bus.drain()
    assert sched.queued == 2 and all(n != lost for n in sched.nodes)
    await bus.publish([completed("r.2")])  # r.2 ran on the node that stayed
    await bus.drain()
    assert rec.placed[-1] == ("r.3", 1)


async def test_restored_jobs_hold_their_slots_after_a_restart(bus: MemoryBus) -> None:
    rec = FakeRecorder()
    sched = FifoScheduler(bus, rec)
    sched.restore("r.9", 1, "a")
    await sched.add_node("a", 1, frozenset())
    await sched.start()
    await bus.publish([requested("r.1")])
    await bus.drain()
    assert rec.placed == [] and sched.load("a") == 1
    await bus.publish([completed("r.9")])
    await bus.drain()
    assert rec.placed == [("r.1", 1)]
