"""``POST /api/v1/schedule``: place a queued job now, or say where it would go (dry run).

Idempotent by job id: a job placed already answers where it is and nothing changes. A job
that is not queued (waiting on its needs, finished) is a 409 ORC-STATE; a queued job no
node can take now stays queued and answers 409 SCH-CAP with the scheduler's reason.
No ``from __future__ import annotations``: FastAPI reads these annotations at runtime.
"""

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from faena.api import problems
from faena.domain.errors import ErrorCode, FaenaError, NotFound
from faena.domain.states import JobState
from faena.orchestration.orchestrator import run_of
from faena.scheduling.fifo import FifoScheduler
from faena.security.port import Principal
from faena.store.port import Store

SCOPE = "schedule:assign"
# A job just requested reaches the scheduler's queue through the bus a moment later.
QUEUE_WAIT = 1.0
_POLL = 0.02
_PLACED = (JobState.SCHEDULED, JobState.RUNNING)


class ScheduleBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    job_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9._:-]{1,160}$")]
    dry_run: bool = False


def schedule_router(
    *,
    scheduler: FifoScheduler,
    store: Store,
    require: Callable[[str], Callable[..., Awaitable[Principal]]],
    queue_wait: float = QUEUE_WAIT,
) -> APIRouter:
    """The scheduling route; ``require(scope)`` authenticates and authorizes."""
    router = APIRouter(prefix="/api/v1", tags=["scheduling"])

    async def job_row(job_id: str) -> dict[str, Any]:
        run = await store.get_run(run_of(job_id)) if "." in job_id else None
        for job in (run or {}).get("jobs", []):
            if job["job_id"] == job_id:
                return dict(job)
        raise NotFound(f"no job {job_id}")

    def answer(
        job: dict[str, Any], *, dry_run: bool, changed: bool, node_id: str | None = None
    ) -> dict[str, Any]:
        placed = job["state"] in _PLACED
        return {
            "job_id": job["job_id"],
            "attempt": job["attempt"],
            "state": str(job["state"]),
            "dry_run": dry_run,
            "placed": placed,
            "changed": changed,
            "node_id": job.get("node_id") if placed else node_id,
            "assignment_id": job.get("assignment_id") if placed else None,
            "reason": None,
        }

    def not_queued(job: dict[str, Any]) -> FaenaError:
        state = job["state"]
        if state == JobState.PENDING:
            until = job.get("not_before")
            if until and until > time.time():
                return FaenaError(
                    f"job {job['job_id']} waits out its retry back-off for "
                    f"{until - time.time():.1f}s more; it can be placed after that",
                    code=ErrorCode.ORC_STATE,
                )
            return FaenaError(
                f"job {job['job_id']} is not in the scheduler's queue yet; try again",
                code=ErrorCode.ORC_STATE,
            )
        why = {
            JobState.WAITING: "it waits on its needs (or an approval)",
        }.get(state, "it has finished")
        return FaenaError(
            f"job {job['job_id']} is {state}: only a queued (PENDING) job can be placed; {why}",
            code=ErrorCode.ORC_STATE,
        )

    async def in_queue(job: dict[str, Any]) -> bool:
        """Whether the scheduler holds the job (queued or placed), after a short wait for
        the bus to deliver a request the store has already."""
        job_id = job["job_id"]
        until = job.get("not_before")
        wait = 0.0 if until and until > time.time() else queue_wait
        deadline = time.monotonic() + wait
        while True:
            if scheduler.queued_job(job_id) is not None or scheduler.placed_on(job_id):
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(_POLL)

    @router.post(
        "/schedule",
        responses={
            404: {"description": "unknown job"},
            409: {"description": "the job is not queued (ORC-STATE) or no node can take it "
                  "now (SCH-CAP, with the reason)"},
        },
        response_model=None,
    )  # fmt: skip
    async def schedule(
        body: ScheduleBody, _: Annotated[Principal, Depends(require(SCOPE))]
    ) -> dict[str, Any] | JSONResponse:
        """Place a queued job now, ahead of the queue's order, if a node can take it; with
        ``dry_run``, say where it would go or why it cannot be placed, changing nothing.
        A job placed already answers its node and assignment (``changed``: false)."""
        job = await job_row(body.job_id)
        if job["state"] in _PLACED:
            return answer(job, dry_run=body.dry_run, changed=False)
        if job["state"] != JobState.PENDING:
            raise not_queued(job)
        if not await in_queue(job):
            job = await job_row(body.job_id)
            if job["state"] in _PLACED:
                return answer(job, dry_run=body.dry_run, changed=False)
            raise not_queued(job)
        if body.dry_run:
            node_id, reason = scheduler.where(body.job_id)
            result = answer(job, dry_run=True, changed=False, node_id=node_id)
            result["reason"] = reason
            return result
        was_placed = scheduler.placed_on(body.job_id) is not None
        node_id, reason = await scheduler.place_now(body.job_id)
        job = await job_row(body.job_id)
        if node_id is not None:
            # Placed; the job may have moved on already (a short job may even be done).
            result = answer(job, dry_run=False, changed=not was_placed)
            result["placed"] = True
            result["node_id"] = job.get("node_id") or node_id
            result["assignment_id"] = job.get("assignment_id")
            return result
        if job["state"] in _PLACED:
            return answer(job, dry_run=False, changed=False)
        if job["state"] != JobState.PENDING:
            raise not_queued(job)
        return problems.problem(
            409, ErrorCode.SCH_CAP, reason or "no node can take it now", job_id=body.job_id
        )

    return router
