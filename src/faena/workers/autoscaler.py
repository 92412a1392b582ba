"""Keeps each named pool's idle warm workers within [min, max], from recent demand.

A reconcile loop in the tektoncd manner: every ``interval`` seconds (injected clock and
sleep) it re-derives, pool by pool, how many idle workers there should be and moves toward
that, without remembering anything between passes. The target is the number of workers jobs
asked of the pool in the last ``window`` seconds (``PoolSet.demand``: a moving window),
scaled to the ``horizon`` (by default one interval: the demand expected before the next
pass), rounded up and clamped to the pool's [min, max]. Below target it ``prewarm``s the
difference (counting workers still being created); above it, it ``end``s the oldest idle
ones. A pool whose provider breaker is open is left alone: prewarming there would fail and
feed the breaker, and its idle workers are not worth destroying through a failing provider.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from faena.workers.pool import PoolFull, WorkerInUse
from faena.workers.pools import Member, PoolSet
from faena.workers.port import ProviderError

log = logging.getLogger(__name__)

INTERVAL = 10.0
WINDOW = 60.0


@dataclass(frozen=True)
class Decision:
    """What one pass did to one pool."""

    pool: str
    demand: int  # workers asked of it in the window
    target: int
    idle: int  # idle or being created, before the pass
    started: int = 0
    ended: int = 0
    failed: int = 0  # prewarms that failed
    skipped: str | None = None  # why the pool was left alone


class Autoscaler:
    """Periodic reconcile of the warm workers of a PoolSet's pools."""

    def __init__(
        self,
        pools: PoolSet,
        *,
        interval: float = INTERVAL,
        window: float = WINDOW,
        horizon: float | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if interval <= 0 or window <= 0:
            raise ValueError("interval and window must be positive")
        self.pools = pools
        self.interval = interval
        self.window = window
        self.horizon = interval if horizon is None else horizon
        self._clock = clock
        self._sleep = sleep
        self._task: asyncio.Task[None] | None = None
        # One pass at a time: two would both see the same shortfall and overshoot max.
        self._passing = asyncio.Lock()
        self.last: list[Decision] = []  # the latest pass, for the curious

    def target(self, m: Member) -> tuple[int, int]:
        """(demand in the window, idle workers wanted) for one pool."""
        demand = self.pools.demand(m.name, self.window)
        wanted = math.ceil(demand * self.horizon / self.window)
        return demand, max(m.config.min_warm, min(m.config.max_warm, wanted))

    async def reconcile(self) -> list[Decision]:
        """One pass over every pool; never raises for a pool's failures."""
        async with self._passing:
            decisions = [await self._reconcile(m) for m in self.pools.members]
        self.last = decisions
        return decisions

    async def run(self) -> None:
        """Reconcile every ``interval`` until cancelled."""
        while True:
            try:
                await self.reconcile()
            except Exception:  # a bug in one pass must not stop the next ones
                log.exception("autoscaler pass failed")
            await self._sleep(self.interval)

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self.run(), name="faena-autoscaler")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _reconcile(self, m: Member) -> Decision:
        demand, target = self.target(m)
        pool = m.pool
        have = pool.idle + pool.warming
        if not m.available:
            return Decision(m.name, demand, target, have, skipped="circuit open")
        if have < target:
            results = await asyncio.gather(
                *(pool.prewarm(None, m.name) for _ in range(target - have)),
                return_exceptions=True,
            )
            failed = [r for r in results if isinstance(r, BaseException)]
            for exc in failed:
                if not isinstance(exc, PoolFull | ProviderError):
                    raise exc
                log.warning("autoscaler: pool %s could not prewarm: %s", m.name, exc)
            started = len(results) - len(failed)
            return Decision(m.name, demand, target, have, started=started, failed=len(failed))
        extra = pool.idle - target
        ended = 0
        for worker_id in pool.idle_ids()[: max(extra, 0)]:
            try:
                ended += await pool.end(worker_id)
            except WorkerInUse:
                continue  # a job took it meanwhile: one fewer to end
            except ProviderError as exc:
                log.warning("autoscaler: pool %s could not end %s: %s", m.name, worker_id, exc)
        return Decision(m.name, demand, target, have, ended=ended)
