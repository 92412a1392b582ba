"""A warm pool: workers created ahead of demand, handed to the next jobs that need one.

``WorkerPool`` wraps another provider and is a ``WorkerProvider`` itself. ``prewarm``
creates an idle worker (idempotent by worker id); ``create`` hands the oldest idle one to
the job asking (or delegates to the wrapped provider when none is idle); ``end`` destroys
an idle or finished one.

A job keeps the worker id it asked for: the ``Worker`` that ``create`` returns carries the
job's id (``request.worker_id``, which the agent reports) while the pool remembers which
warm worker stands behind it, so ``exec``, ``cancel`` and ``destroy`` reach the right one.
Its ``info`` names the warm worker (``pool_worker_id``), so the ``ci.worker.v1.created``
event says where the job ran. A warm worker serves one job: it is destroyed with it.
Behind a warm worker's id (chosen by the caller, so not unique beyond this pool) the
wrapped provider's worker has an id of its own, unique (``provider_worker_id``).

The pool is in memory: its idle workers are destroyed by ``close``; records of finished
and ended workers are kept (the newest ``history`` of them) so that the API can still say
which job ran where.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from faena.domain.errors import ErrorCode, FaenaError, NotFound
from faena.domain.events import new_id
from faena.workers.port import (
    ExecRequest,
    ExecResult,
    OutputSink,
    ProviderError,
    Worker,
    WorkerProvider,
    WorkerRequest,
)
from faena.workers.resilient import provider_status

log = logging.getLogger(__name__)

MAX_WARM = 16
HISTORY = 256

PoolState = Literal["creating", "idle", "busy", "finished", "ended"]


class PoolFull(FaenaError):
    """The pool holds as many live warm workers as it may (409)."""

    code = ErrorCode.ORC_STATE


class WorkerInUse(FaenaError):
    """The worker runs a job, or the id belongs to a job's worker (409)."""

    code = ErrorCode.ORC_STATE


class UnknownPool(FaenaError):
    """A pool this server does not have (422)."""

    code = ErrorCode.ORC_VALID


class UnknownWorker(NotFound):
    """No warm worker by that id (404)."""


@dataclass
class WarmWorker:
    """What the pool knows of one warm worker."""

    worker_id: str
    pool: str
    provider: str
    state: PoolState = "creating"
    created_at: float = 0.0
    worker: Worker | None = None  # the wrapped provider's worker, once created
    job_id: str | None = None
    run_id: str | None = None
    job_worker_id: str | None = None  # the worker id the job asked for (and reports)
    handed_at: float | None = None
    finished_at: float | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    error: BaseException | None = None

    @property
    def live(self) -> bool:
        return self.state in ("creating", "idle", "busy")

    def to_dict(self) -> dict[str, Any]:
        return {
            "worker_id": self.worker_id,
            "pool": self.pool,
            "provider": self.provider,
            "state": self.state,
            "created_at": self.created_at,
            "job_id": self.job_id,
            "run_id": self.run_id,
            "job_worker_id": self.job_worker_id,
            "provider_worker_id": self.worker.worker_id if self.worker else None,
            "handed_at": self.handed_at,
            "finished_at": self.finished_at,
        }


class WorkerPool:
    """A ``WorkerProvider`` that keeps warm workers of the provider it wraps."""

    def __init__(
        self,
        provider: WorkerProvider,
        *,
        max_warm: int = MAX_WARM,
        history: int = HISTORY,
        clock: Callable[[], float] = time.time,
        pool_name: str | None = None,
    ) -> None:
        self.name = provider.name
        # The pool's own name (a PoolSet holds several pools of one provider, maybe).
        self.pool_name = pool_name or provider.name
        self.enforces = provider.enforces
        self._provider = provider
        self.max_warm = max_warm
        self._history = history
        self._clock = clock
        self._warm: dict[str, WarmWorker] = {}  # by warm worker id, oldest first
        self._jobs: dict[str, WarmWorker] = {}  # by the job's worker id, while it runs
        self._direct: set[str] = set()  # job workers created by the wrapped provider
        self._lock = asyncio.Lock()

    @property
    def pools(self) -> tuple[str, ...]:
        """The pool names this pool serves: one (its provider's name unless named)."""
        return (self.pool_name,)

    @property
    def provider(self) -> WorkerProvider:
        """The provider the pool wraps."""
        return self._provider

    @property
    def idle(self) -> int:
        return sum(1 for w in self._warm.values() if w.state == "idle")

    @property
    def warming(self) -> int:
        """Warm workers being created now (idle once their create ends)."""
        return sum(1 for w in self._warm.values() if w.state == "creating")

    def idle_ids(self) -> list[str]:
        """The idle warm workers' ids, oldest first (the next job takes the first)."""
        return [w.worker_id for w in self._warm.values() if w.state == "idle"]

    def providers(self) -> list[dict[str, Any]]:
        """The provider behind the pool and its breaker (None when it has none)."""
        return [{**provider_status(self._provider), "pools": [self.pool_name]}]

    # -- warm workers ----------------------------------------------------------------------

    async def prewarm(
        self, worker_id: str | None = None, pool: str | None = None
    ) -> tuple[WarmWorker, bool]:
        """Create an idle worker ahead of demand; answers it and whether this call created
        it. The same id again answers the first one, whatever its state now (idempotent).
        Raises PoolFull, UnknownPool, WorkerInUse, ProviderError."""
        pool = pool or self.pool_name
        if pool not in self.pools:
            raise UnknownPool(f"no pool {pool!r} here (pools: {', '.join(self.pools)})")
        async with self._lock:
            wid = worker_id or "w-" + new_id()[-12:]  # the random part
            found = self._warm.get(wid)
            if found is None:
                if wid in self._jobs or wid in self._direct:
                    raise WorkerInUse(f"worker id {wid} belongs to a running job's worker")
                live = sum(1 for w in self._warm.values() if w.live)
                if live >= self.max_warm:
                    raise PoolFull(
                        f"the pool holds {live} warm workers already (at most {self.max_warm}); "
                        "end one first (DELETE /api/v1/workers/{id})"
                    )
                found = WarmWorker(wid, pool, self.name, created_at=self._clock())
                self._warm[wid] = found
                creator = True
            else:
                creator = False
        if not creator:
            await found.ready.wait()
            if found.error is not None:
                raise ProviderError(f"worker {wid} could not be created: {found.error}")
            return found, False
        # The provider's worker gets a unique id: ids chosen by users may repeat across
        # servers of one host (the local provider's destroy kills by worker id).
        inner_id = f"{wid}-{new_id()[-8:]}"
        try:
            found.worker = await self._provider.create(WorkerRequest(inner_id, "", ""))
        except BaseException as exc:
            found.state, found.error, found.finished_at = "ended", exc, self._clock()
            with contextlib.suppress(Exception):
                await self._provider.destroy(Worker(inner_id, self.name, ""))
            async with self._lock:
                self._warm.pop(wid, None)
            found.ready.set()
            raise
        found.state = "idle"
        found.ready.set()
        return found, True

    async def end(self, worker_id: str) -> bool:
        """Destroy an idle warm worker, or retire a finished one; False if it was unknown
        or ended already. Raises WorkerInUse while a job runs in it."""
        async with self._lock:
            found = self._find(worker_id)
            if found is None or found.state == "ended":
                return False
            if found.state in ("busy", "creating"):
                what = f"runs job {found.job_id}" if found.state == "busy" else "is being created"
                raise WorkerInUse(f"worker {found.worker_id} {what}; try again when it is done")
            was_idle = found.state == "idle"
            found.state, found.finished_at = "ended", found.finished_at or self._clock()
            self._trim()
        if was_idle and found.worker is not None:
            await self._provider.destroy(found.worker)
        return True

    def get(self, worker_id: str) -> WarmWorker | None:
        """A warm worker by its own id or by the id of the job worker it became."""
        return self._find(worker_id)

    def require(self, worker_id: str) -> WarmWorker:
        found = self._find(worker_id)
        if found is None:
            raise UnknownWorker(f"no worker {worker_id}")
        return found

    def listing(self) -> list[dict[str, Any]]:
        """Every warm worker the pool knows, oldest first (ended ones: the newest few)."""
        return [w.to_dict() for w in self._warm.values()]

    async def close(self) -> None:
        """Destroy the idle warm workers (jobs destroy the busy ones)."""
        async with self._lock:
            idle = [w for w in self._warm.values() if w.state == "idle"]
            for w in idle:
                w.state, w.finished_at = "ended", self._clock()
        for w in idle:
            if w.worker is not None:
                with contextlib.suppress(Exception):
                    await self._provider.destroy(w.worker)

    # -- the WorkerProvider port -----------------------------------------------------------

    async def create(self, request: WorkerRequest) -> Worker:
        """An idle warm worker when there is one (same image), else a new worker."""
        async with self._lock:
            taken = self._jobs.get(request.worker_id)
            if taken is None and request.worker_id not in self._direct:
                taken = next((w for w in self._warm.values() if self._fits(w, request)), None)
                if taken is not None:
                    taken.state, taken.handed_at = "busy", self._clock()
                    taken.job_id, taken.run_id = request.job_id, request.run_id
                    taken.job_worker_id = request.worker_id
                    self._jobs[request.worker_id] = taken
                else:
                    self._direct.add(request.worker_id)
        if taken is None:
            try:
                return await self._provider.create(request)
            except BaseException:
                self._direct.discard(request.worker_id)
                raise
        assert taken.worker is not None
        info = {
            **taken.worker.info,
            "pool": taken.pool,
            "pool_worker_id": taken.worker_id,
            "provider_worker_id": taken.worker.worker_id,
        }
        return Worker(request.worker_id, self.name, taken.worker.workspace, info)

    async def exec(self, worker: Worker, request: ExecRequest, sink: OutputSink) -> ExecResult:
        return await self._provider.exec(self._inner(worker), request, sink)

    async def cancel(self, worker: Worker, exec_id: str) -> None:
        await self._provider.cancel(self._inner(worker), exec_id)

    async def destroy(self, worker: Worker, keep_for: float | None = None) -> None:
        """Destroy the worker; a warm one is finished (it served its job)."""
        warm = self._jobs.get(worker.worker_id)
        if warm is None:
            direct = self._warm.get(worker.worker_id)
            if direct is not None and direct.state == "idle":
                await self.end(worker.worker_id)
                return
            await self._provider.destroy(worker, keep_for)
            self._direct.discard(worker.worker_id)
            return
        if warm.worker is not None:
            await self._provider.destroy(warm.worker, keep_for)
        async with self._lock:
            self._jobs.pop(worker.worker_id, None)
            if warm.state == "busy":
                warm.state, warm.finished_at = "finished", self._clock()
            self._trim()

    # -- helpers ---------------------------------------------------------------------------

    def _inner(self, worker: Worker) -> Worker:
        warm = self._jobs.get(worker.worker_id)
        if warm is None or warm.worker is None:
            return worker
        return warm.worker

    @staticmethod
    def _fits(w: WarmWorker, request: WorkerRequest) -> bool:
        # Warm workers are made without an image: they serve jobs that name none.
        return w.state == "idle" and w.worker is not None and request.image is None

    def _find(self, worker_id: str) -> WarmWorker | None:
        found = self._warm.get(worker_id)
        if found is not None:
            return found
        found = self._jobs.get(worker_id)
        if found is not None:
            return found
        for w in reversed(self._warm.values()):
            if w.job_worker_id == worker_id:
                return w
        return None

    def _trim(self) -> None:
        """Forget the oldest ended and finished workers beyond ``history``."""
        done = [k for k, w in self._warm.items() if not w.live]
        for k in done[: max(0, len(done) - self._history)]:
            del self._warm[k]
