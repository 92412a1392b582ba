"""A leader whose term another replica has claimed cannot change anything: its commits are
refused, it is told it is deposed, and the store keeps none of its writes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from faena.app import App
from faena.domain.errors import FaenaError
from faena.domain.states import RunState
from faena.settings import Settings
from faena.spec import parse_pipeline
from faena.store.memory import MemoryStore
from faena.store.port import Deposed, Store

ONE_JOB = parse_pipeline("jobs:\n  a:\n    steps: [{run: 'true'}]\n")
GATED = "jobs:\n  a:\n    steps: [{run: 'while [ ! -e \"$GATE\" ]; do sleep 0.05; done'}]\n"


class StoreLease:
    """A contended lease whose claim is recorded in the store (as PostgresLease does)."""

    fenced = True

    def __init__(self, store: Store) -> None:
        self._store = store
        self._closed = asyncio.Event()

    async def campaign(self) -> int:
        return await self._store.claim_leadership("r1", "http://r1")

    async def hold(self) -> None:
        await self._closed.wait()

    async def close(self) -> None:
        self._closed.set()


async def test_a_deposed_leader_writes_nothing_more(tmp_path: Path) -> None:
    store = MemoryStore()
    gate = tmp_path / "gate"
    app = App(Settings(home=tmp_path / "home", jobs=2), store=store,
              leadership=StoreLease(store))  # fmt: skip
    deposed: list[Deposed] = []
    app.orchestrator.on_deposed = deposed.append
    await app.start()
    try:
        first = await app.orchestrator.submit(ONE_JOB)
        async with asyncio.timeout(30):
            assert (await app.orchestrator.wait(first)).state is RunState.SUCCEEDED
        gated = await app.orchestrator.submit(parse_pipeline(GATED.replace("$GATE", str(gate))))
        # Another replica takes over while a job runs here.
        await store.claim_leadership("r2", "http://r2")
        logged = len(await store.events_after(0, limit=10_000))
        with pytest.raises(FaenaError, match="no longer leads"):
            await app.orchestrator.submit(ONE_JOB)
        gate.touch()  # the job ends; this leader may not record it
        await asyncio.sleep(1.0)
        assert deposed, "the orchestrator must say it was deposed"
        assert len(await store.events_after(0, limit=10_000)) == logged
        row = await store.get_run(gated)
        assert row is not None and row["state"] != "SUCCEEDED"
    finally:
        gate.touch()
        await app.close()
