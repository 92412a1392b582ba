"""Warm workers of the server's own node (``/api/v1/workers``): create ahead of demand,
end, list, and read the output of the job that ran in one.

A server started without its own node (``faena server`` without ``--with-agent``) runs no
jobs itself: creating a worker there is a 409 ORC-STATE.
No ``from __future__ import annotations``: FastAPI reads these annotations at runtime.
"""

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from faena.domain.errors import ErrorCode, FaenaError
from faena.security.port import Principal
from faena.store.port import Store
from faena.workers.pool import UnknownWorker, WarmWorker, WorkerPool
from faena.workers.pools import PoolSet
from faena.workers.port import ProviderError

CREATE = "worker:create"
READ = "worker:read"
# Workers that did not come from the pool are looked for among this many newest runs.
RECENT_RUNS = 20
MAX_LINES = 10_000
MAX_ID = 2**63 - 1  # SQL integers are 64-bit

WorkerId = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
_ID_PATH = r"^[A-Za-z0-9._:-]{1,128}$"


class WorkerBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    worker_id: WorkerId | None = None
    pool: Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")] = "local"


def workers_router(
    *,
    pool: WorkerPool | PoolSet | None,
    store: Store,
    require: Callable[[str], Callable[..., Awaitable[Principal]]],
    node_id: str = "local",
) -> APIRouter:
    """Routes of the warm pool of ``node_id`` (``pool`` None: this server has no node);
    ``pool`` may be a PoolSet of named pools."""
    router = APIRouter(prefix="/api/v1/workers", tags=["workers"])
    Creator = Annotated[Principal, Depends(require(CREATE))]
    Reader = Annotated[Principal, Depends(require(READ))]
    Id = Annotated[str, Path(pattern=_ID_PATH)]

    def view(w: WarmWorker) -> dict[str, Any]:
        return {**w.to_dict(), "node_id": node_id}

    def found(worker_id: str) -> WarmWorker:
        if pool is None:
            raise UnknownWorker(f"no worker {worker_id}")
        return pool.require(worker_id)

    @router.post(
        "",
        status_code=201,
        response_model=None,
        responses={200: {"description": "a worker with this id exists already"}},
    )
    async def create(body: WorkerBody, _: Creator, response: Response) -> dict[str, Any]:
        """Create an idle worker in a pool ahead of demand: the next job of this node runs
        in it. Idempotent by ``worker_id`` (200 with the existing one)."""
        if pool is None:
            raise FaenaError(
                "this server runs no jobs itself (it has no node of its own; start it with "
                "`faena server --with-agent`): its agents' workers are their own",
                code=ErrorCode.ORC_STATE,
            )
        try:
            w, created = await pool.prewarm(body.worker_id, body.pool)
        except ProviderError as exc:
            raise _Unavailable(exc.message) from exc
        if not created:
            response.status_code = 200
        return view(w)

    @router.delete("/{worker_id}")
    async def end(worker_id: Id, _: Creator) -> dict[str, Any]:
        """End a worker: an idle one is destroyed. Idempotent (``ended`` says whether this
        call ended it); 409 while a job runs in it."""
        ended = False
        if pool is not None:
            try:
                ended = await pool.end(worker_id)
            except ProviderError as exc:
                raise _Unavailable(exc.message) from exc
        w = pool.get(worker_id) if pool is not None else None
        return {
            "worker_id": worker_id,
            "ended": ended,
            "state": w.state if w is not None else None,
        }

    @router.get("")
    async def listing(_: Reader) -> dict[str, Any]:
        """The warm workers of this node (live ones, and the newest finished ones), and
        its worker providers with their circuit breakers (``breaker`` None: it has none)."""
        items = pool.listing() if pool is not None else []
        return {"node_id": node_id if pool is not None else None,
                "items": [{**w, "node_id": node_id} for w in items],
                "providers": pool.providers() if pool is not None else []}  # fmt: skip

    @router.get("/{worker_id}")
    async def get(worker_id: Id, _: Reader) -> dict[str, Any]:
        """One warm worker, by its id or by the worker id its job reported."""
        return view(found(worker_id))

    @router.get("/{worker_id}/logs", response_model=None)
    async def logs(
        worker_id: Id,
        _: Reader,
        after: Annotated[int, Query(ge=0, le=MAX_ID, description="lines after this id")] = 0,
        limit: Annotated[int, Query(ge=1, le=MAX_LINES)] = MAX_LINES,
    ) -> dict[str, Any] | JSONResponse:
        """The output lines of the job that ran (or runs) in a worker; a warm worker that
        has served no job yet answers no lines."""
        w = pool.get(worker_id) if pool is not None else None
        if w is not None and w.job_id is None:
            return {**_logs_head(worker_id, None, None, None), "lines": []}
        located = await _locate(store, worker_id, w)
        if located is None:
            raise UnknownWorker(f"no worker {worker_id}")
        run_id, job_id, attempt = located
        lines = await store.read_logs(run_id, job_id, after_id=after, limit=limit)
        picked = [ln for ln in lines if attempt is None or ln.attempt == attempt]
        return {
            **_logs_head(w.worker_id if w else worker_id, run_id, job_id, attempt),
            "lines": [
                {
                    "id": ln.id,
                    "step_index": ln.step_index,
                    "stream": ln.stream,
                    "ts": ln.ts,
                    "text": ln.text,
                }
                for ln in picked
            ],
            "next_after": lines[-1].id if lines else after,
        }

    return router


class _Unavailable(FaenaError):
    code = ErrorCode.ORC_INFRA


def _logs_head(
    worker_id: str, run_id: str | None, job_id: str | None, attempt: int | None
) -> dict[str, Any]:
    return {"worker_id": worker_id, "run_id": run_id, "job_id": job_id, "attempt": attempt}


async def _locate(
    store: Store, worker_id: str, w: WarmWorker | None
) -> tuple[str, str, int | None] | None:
    """(run, job, attempt) of the job that ran in the worker, or None if none is known."""
    if w is not None and w.run_id and w.job_id:
        return w.run_id, w.job_id, await _attempt(store, w.run_id, w.job_id, w.job_worker_id)
    # Not a warm worker: a job's own worker, among the newest runs' jobs.
    for run in await store.list_runs(limit=RECENT_RUNS):
        full = await store.get_run(run["run_id"])
        for job in (full or {}).get("jobs", []):
            if job.get("worker_id") == worker_id:
                return run["run_id"], job["job_id"], int(job["attempt"])
    return None


async def _attempt(store: Store, run_id: str, job_id: str, worker_id: str | None) -> int | None:
    """The attempt of ``job_id`` that ran in ``worker_id``, from the run's event log."""
    attempt: int | None = None
    for stored in await store.run_events(run_id):
        e = stored.event
        if e.payload.get("job_id") != job_id:
            continue
        if e.subject == "ci.job.v1.requested":
            attempt = int(e.payload.get("attempt", 1))
        elif e.subject == "ci.worker.v1.created" and e.payload.get("worker_id") == worker_id:
            return attempt
    return attempt
