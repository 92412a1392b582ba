"""The composition root with named pools (``FAENA_POOLS``): a PoolSet over local workers,
its autoscaler prewarming each pool's minimum, its breakers in /metrics, runs routed by
``runs-on``."""

from __future__ import annotations

import asyncio
from pathlib import Path

from faena.app import App
from faena.settings import Settings
from faena.spec import parse_pipeline
from faena.telemetry.metrics import Metrics
from faena.workers.pools import PoolSet

POOLS = "fast:provider=local,labels=linux,min=2,max=3;spare:provider=local"


async def test_pools_are_built_prewarmed_and_reported(tmp_path: Path) -> None:
    metrics = Metrics()
    system = App(Settings(home=tmp_path / "home", jobs=2, pools=POOLS), metrics=metrics)
    await system.start()
    try:
        assert isinstance(system.pool, PoolSet)
        assert system.pool.pools == ("fast", "spare")
        assert system.autoscaler is not None
        await system.autoscaler.reconcile()
        idle = [w for w in system.pool.listing() if w["state"] == "idle"]
        assert sorted(w["pool"] for w in idle) == ["fast", "fast"]
        body = metrics.render()[0].decode()
        assert 'wkm_breaker_state{provider="local"} 0.0' in body

        text = "jobs:\n  a:\n    runs-on: [linux]\n    steps: [{run: 'echo hi'}]\n"
        spec = parse_pipeline(text, filename=str(tmp_path / "faena.yml"))
        run_id = await system.orchestrator.submit(spec)
        async with asyncio.timeout(60):
            await system.orchestrator.wait(run_id)
        row = await system.store.get_run(run_id)
        assert row is not None and row["state"] == "SUCCEEDED", row
    finally:
        await system.close()
    # Closing ended the warm workers it had made.
    assert all(w["state"] != "idle" for w in system.pool.listing())
