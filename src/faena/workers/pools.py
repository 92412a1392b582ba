"""Named pools with fallback: several ``WorkerPool``s, each bound to one provider.

``PoolSet`` is a ``WorkerProvider`` itself. ``create`` sends a job to the first pool that
serves its ``runs-on`` labels (``PoolConfig.serves``); when that pool's provider breaker is
open, or its create fails with a retryable error (after the ResilientProvider's own
retries), it falls back to the next pool that serves them, and the ``Worker``'s ``info``
says so (``pool``, and ``fallback_from``: the pool the job would have gone to). A permanent
error (``retryable=False``: the image is not there) does not fall back: another pool would
not make it right, and the job fails at once. ``exec``, ``cancel`` and ``destroy`` go to the
pool that created the worker.

It also answers what the warm-worker API asks of a ``WorkerPool`` (``prewarm`` in a named
pool, ``end``, ``get``, ``listing``, ``providers``), and keeps each pool's recent demand
(the times of its creates) for the autoscaler.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from faena.workers.breaker import BreakerState, CircuitBreaker
from faena.workers.pool import UnknownPool, UnknownWorker, WarmWorker, WorkerInUse, WorkerPool
from faena.workers.pool_config import PoolConfig
from faena.workers.port import (
    ExecRequest,
    ExecResult,
    OutputSink,
    ProviderError,
    Worker,
    WorkerProvider,
    WorkerRequest,
)
from faena.workers.resilient import CallObserver, ResilientProvider

log = logging.getLogger(__name__)

DEMAND_WINDOW = 600.0  # how long create times are kept (the autoscaler looks at less)
DEMAND_MAX = 10_000  # and at most this many per pool


@dataclass
class Member:
    """One named pool of a PoolSet."""

    config: PoolConfig
    pool: WorkerPool
    demand: deque[float] = field(default_factory=deque)  # times of recent creates

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def breaker(self) -> CircuitBreaker | None:
        provider = self.pool.provider
        return provider.breaker if isinstance(provider, ResilientProvider) else None

    @property
    def available(self) -> bool:
        """False while the provider's breaker is open (half-open: a probe may go)."""
        breaker = self.breaker
        return breaker is None or breaker.state is not BreakerState.OPEN


class NoPool(ProviderError):
    """No pool serves the job's labels: trying again will not help."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)


class PoolSet:
    """A ``WorkerProvider`` routing each job to a named pool, with fallback."""

    def __init__(
        self,
        members: Sequence[tuple[PoolConfig, WorkerPool]],
        *,
        name: str = "pools",
        clock: Callable[[], float] = time.time,
        demand_window: float = DEMAND_WINDOW,
    ) -> None:
        if not members:
            raise ValueError("a PoolSet needs at least one pool")
        self.name = name
        self._members = [Member(cfg, pool) for cfg, pool in members]
        self._by_name = {m.name: m for m in self._members}
        if len(self._by_name) != len(self._members):
            raise ValueError("pool names must be unique")
        # What is enforced wherever the job lands.
        self.enforces = frozenset.intersection(*(m.pool.enforces for m in self._members))
        self._clock = clock
        self._demand_window = demand_window
        self._owners: dict[str, Member] = {}  # job worker id -> the pool that created it

    @property
    def pools(self) -> tuple[str, ...]:
        return tuple(m.name for m in self._members)

    @property
    def members(self) -> tuple[Member, ...]:
        return tuple(self._members)

    def member(self, name: str) -> Member:
        found = self._by_name.get(name)
        if found is None:
            raise UnknownPool(f"no pool {name!r} here (pools: {', '.join(self.pools)})")
        return found

    def demand(self, name: str, window: float) -> int:
        """How many workers jobs asked of pool ``name`` in the last ``window`` seconds."""
        m = self.member(name)
        self._prune(m)
        since = self._clock() - window
        return sum(1 for t in m.demand if t > since)

    # -- warm workers (what the /api/v1/workers routes ask) --------------------------------

    async def prewarm(
        self, worker_id: str | None = None, pool: str | None = None
    ) -> tuple[WarmWorker, bool]:
        """An idle worker in pool ``pool`` (default: the first); idempotent by worker id."""
        m = self.member(pool) if pool else self._members[0]
        if worker_id is not None:
            for other in self._members:
                found = other.pool.get(worker_id)
                if found is not None and other is not m:
                    raise WorkerInUse(f"worker id {worker_id} belongs to pool {other.name}")
        return await m.pool.prewarm(worker_id, m.name)

    async def end(self, worker_id: str) -> bool:
        m = self._holder(worker_id)
        return await m.pool.end(worker_id) if m is not None else False

    def get(self, worker_id: str) -> WarmWorker | None:
        m = self._holder(worker_id)
        return m.pool.get(worker_id) if m is not None else None

    def require(self, worker_id: str) -> WarmWorker:
        found = self.get(worker_id)
        if found is None:
            raise UnknownWorker(f"no worker {worker_id}")
        return found

    def listing(self) -> list[dict[str, Any]]:
        """Every pool's warm workers, pool by pool."""
        return [w for m in self._members for w in m.pool.listing()]

    def providers(self) -> list[dict[str, Any]]:
        """Each provider once, with its breaker and the pools that use it."""
        seen: dict[int, dict[str, Any]] = {}
        for m in self._members:
            key = id(m.pool.provider)
            if key not in seen:
                seen[key] = {**m.pool.providers()[0], "pools": []}
            seen[key]["pools"].append(m.name)
        return list(seen.values())

    async def close(self) -> None:
        for m in self._members:
            await m.pool.close()

    # -- the WorkerProvider port -----------------------------------------------------------

    async def create(self, request: WorkerRequest) -> Worker:
        fitting = [m for m in self._members if m.config.serves(request.runs_on)]
        if not fitting:
            wanted = ", ".join(sorted(request.runs_on)) or "(none)"
            raise NoPool(f"no pool serves runs-on labels {wanted} (pools: {self._described()})")
        primary = fitting[0]
        self._note_demand(primary)
        errors: list[str] = []
        for m in fitting:
            if not m.available:
                errors.append(f"pool {m.name}: provider {m.pool.provider.name} circuit open")
                continue
            try:
                worker = await m.pool.create(request)
            except ProviderError as exc:
                if not exc.retryable:
                    raise
                errors.append(f"pool {m.name}: {exc.message}")
                # The next pool gets the same worker id: leave nothing of it here.
                with contextlib.suppress(Exception):
                    await m.pool.destroy(Worker(request.worker_id, m.pool.name, ""))
                log.warning("pool %s could not create worker %s: %s", m.name,
                            request.worker_id, exc.message)  # fmt: skip
                continue
            self._owners[request.worker_id] = m
            info = {**worker.info, "pool": m.name}
            if m is not primary:
                info["fallback_from"] = primary.name
                log.warning("worker %s: pool %s fell back to pool %s", request.worker_id,
                            primary.name, m.name)  # fmt: skip
            return Worker(worker.worker_id, worker.provider, worker.workspace, info)
        raise ProviderError(f"no pool could give worker {request.worker_id}: " + "; ".join(errors))

    async def exec(self, worker: Worker, request: ExecRequest, sink: OutputSink) -> ExecResult:
        return await self._owner(worker).pool.exec(worker, request, sink)

    async def cancel(self, worker: Worker, exec_id: str) -> None:
        await self._owner(worker).pool.cancel(worker, exec_id)

    async def destroy(self, worker: Worker, keep_for: float | None = None) -> None:
        owner = self._owners.get(worker.worker_id) or self._holder(worker.worker_id)
        if owner is not None:
            await owner.pool.destroy(worker, keep_for)
            self._owners.pop(worker.worker_id, None)
            return
        # Unknown here (its create failed, or another process made it): every pool may
        # hold remains of it; destroy is idempotent, so ask them all.
        first: BaseException | None = None
        for m in self._members:
            try:
                await m.pool.destroy(worker, keep_for)
            except ProviderError as exc:
                first = first or exc
        if first is not None:
            raise first

    # -- helpers ---------------------------------------------------------------------------

    def _owner(self, worker: Worker) -> Member:
        owner = self._owners.get(worker.worker_id) or self._holder(worker.worker_id)
        if owner is None:
            raise ProviderError(f"no pool created worker {worker.worker_id}", retryable=False)
        return owner

    def _holder(self, worker_id: str) -> Member | None:
        """The pool holding a warm worker by that id (or by its job's worker id)."""
        for m in self._members:
            if m.pool.get(worker_id) is not None:
                return m
        return None

    def _note_demand(self, m: Member) -> None:
        m.demand.append(self._clock())
        self._prune(m)

    def _prune(self, m: Member) -> None:
        since = self._clock() - self._demand_window
        while m.demand and (m.demand[0] <= since or len(m.demand) > DEMAND_MAX):
            m.demand.popleft()

    def _described(self) -> str:
        return ", ".join(
            f"{m.name} [{', '.join(sorted(m.config.labels)) or 'any'}]" for m in self._members
        )


def build_pool_set(
    configs: Sequence[PoolConfig],
    providers: Mapping[str, WorkerProvider],
    *,
    observer: CallObserver | None = None,
    clock: Callable[[], float] = time.time,
    wrap: Callable[[WorkerProvider], ResilientProvider] | None = None,
) -> PoolSet:
    """A PoolSet of ``configs`` over ``providers`` (by name). Each provider is wrapped in a
    ResilientProvider once, however many pools use it: one breaker per provider. ``wrap``
    makes that wrapper (default: the standard timeouts and retries, a breaker on ``clock``,
    failures counted by ``observer``); a provider that is one already is used as it is."""

    def standard(inner: WorkerProvider) -> ResilientProvider:
        breaker = CircuitBreaker(inner.name, clock=clock)
        return ResilientProvider(inner, breaker=breaker, observer=observer)

    wrapped: dict[str, WorkerProvider] = {}
    members: list[tuple[PoolConfig, WorkerPool]] = []
    for cfg in configs:
        if cfg.provider not in providers:
            known = ", ".join(sorted(providers)) or "none"
            raise UnknownPool(f"pool {cfg.name}: no provider {cfg.provider!r} (have: {known})")
        if cfg.provider not in wrapped:
            inner = providers[cfg.provider]
            resilient = isinstance(inner, ResilientProvider)
            wrapped[cfg.provider] = inner if resilient else (wrap or standard)(inner)
        members.append((cfg, WorkerPool(wrapped[cfg.provider], pool_name=cfg.name, clock=clock)))
    return PoolSet(members, clock=clock)


def breaker_states(pools: PoolSet | WorkerPool) -> dict[str, int]:
    """Provider name -> breaker state, for ``Metrics.add_breaker_source`` (providers
    without a breaker are left out)."""
    if isinstance(pools, PoolSet):
        found = [m.pool.provider for m in pools.members]
    else:
        found = [pools.provider]
    return {p.name: int(p.breaker.state) for p in found if isinstance(p, ResilientProvider)}
