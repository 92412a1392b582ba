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
        self.fail = fail

    async def create_assignment(
        self, job_id: str, attempt: int, node_id: str, policy: str
    ) -> str | None:
        if self.fail:
            self.fail -= 1
            raise RuntimeError("store unavailable")
        self.placed.append((job_id, attempt))
        return f"a-{job_id}-{attempt}"


def requested(job_id: str, attempt: int = 1, not_before: float | None = None) -> Event:
    payload: dict[str, object] = {"job_id": job_id, "spec_hash": "h", "attempt": attempt}
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
    sched = FifoScheduler(bus, rec, slots=2)
    await sched.start()
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
    sched = FifoScheduler(bus, rec, slots=4)
    await sched.start()
    e = requested("r.1")
    await bus.publish([e, e, e])
    await bus.drain()
    assert rec.placed == [("r.1", 1)]


async def test_a_retry_is_a_new_attempt_and_frees_the_old_slot(bus: MemoryBus) -> None:
    rec = FakeRecorder()
    sched = FifoScheduler(bus, rec, slots=1)
    await sched.start()
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
    sched = FifoScheduler(bus, rec, slots=1)
    await sched.start()
    await bus.publish([requested("r.1", not_before=time.time() + 0.2)])
    await bus.drain()
    assert rec.placed == []
    async with asyncio.timeout(5):
        while not rec.placed:
            await asyncio.sleep(0.01)
    assert rec.placed == [("r.1", 1)]


async def test_a_failed_placement_is_retried_by_redelivery(bus: MemoryBus) -> None:
    rec = FakeRecorder(fail=1)
    sched = FifoScheduler(bus, rec, slots=1)
    await sched.start()
    await bus.publish([requested("r.1")])
    async with asyncio.timeout(5):
        while not rec.placed:
            await asyncio.sleep(0.01)
    assert rec.placed == [("r.1", 1)]
    assert sched.running == 1 and sched.queued == 0
