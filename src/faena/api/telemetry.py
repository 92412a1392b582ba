"""Telemetry and console routes: ``GET /metrics``, ``/api/v1/traces``, ``/api/v1/ui/jobs``.

The endpoints of communication_architecture.md, Tabla 22 (Telemetría, Consola). No
``from __future__ import annotations`` here: FastAPI reads the route annotations at
definition time (see ``faena.api.app``).
"""

import asyncio
import hmac
import time
from collections.abc import Callable
from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import Response

from faena.api import problems
from faena.domain.errors import ErrorCode, NotFound
from faena.domain.states import JobState
from faena.store.port import Store, resolve_run
from faena.telemetry.asgi import TENANT_STATE
from faena.telemetry.metrics import Metrics
from faena.telemetry.traces import build_trace, trace_id_for

# Runs /ui/jobs looks through per call: bounds its cost (console SLO: p95 < 400 ms).
UI_JOBS_MAX_RUNS = 500
_RUN_PAGE = 50
_STEP_DONE = frozenset({"SUCCEEDED", "FAILED", "SKIPPED", "CANCELLED"})


def telemetry_router(
    *,
    metrics: Metrics,
    store: Store,
    require: Callable[[str], Any],
    scrape_token: str | None = None,
) -> APIRouter:
    """The routes; ``require(scope)`` is a dependency that authenticates and authorizes."""
    router = APIRouter()
    resolve = partial(resolve_run, store)

    @router.get(
        "/metrics",
        tags=["telemetry"],
        response_class=Response,
        responses={
            200: {
                "description": "Prometheus text exposition (OpenMetrics when asked by Accept)",
                "content": {"text/plain": {}, "application/openmetrics-text": {}},
            },
            401: {"description": "scrape token missing or wrong (when one is set)"},
        },
    )
    async def scrape(
        authorization: Annotated[str | None, Header()] = None,
        accept: Annotated[str | None, Header()] = None,
    ) -> Response:
        """Prometheus metrics; behind ``Authorization: Bearer <scrape token>`` if one is set."""
        if scrape_token and not _bearer_matches(authorization, scrape_token):
            return problems.problem(
                401, ErrorCode.SEC_TOK, "this endpoint needs the scrape token as a bearer token"
            )
        body, content_type = metrics.render(accept)
        return Response(body, media_type=content_type)

    @router.get("/api/v1/traces", tags=["telemetry"])
    async def traces(
        _: Annotated[Any, Depends(require("job:read"))],
        run: Annotated[str, Query(min_length=1, description="run id, unique prefix or last")],
    ) -> dict[str, Any]:
        """The run's trace in OTLP/JSON (``resourceSpans``): the run, its job attempts and
        their steps as spans; spans still open end now and carry ``faena.in_progress``."""
        run_id = await resolve(run)
        stored = await store.run_events(run_id)
        if not stored:
            raise NotFound(f"no run {run}")
        return build_trace([s.event for s in stored], now=time.time())

    @router.get("/api/v1/ui/jobs", tags=["console"])
    async def ui_jobs(
        request: Request,
        principal: Annotated[Any, Depends(require("job:read"))],
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        offset: Annotated[int, Query(ge=0)] = 0,
        state: Annotated[JobState | None, Query(description="only jobs in this state")] = None,
    ) -> dict[str, Any]:
        """The console's jobs view: jobs of the most recent runs, newest run first, with
        their run, state, node and timings (looks through the last 500 runs at most)."""
        setattr(request.state, TENANT_STATE, getattr(principal, "tenant_id", None))
        items, more = await recent_jobs(
            store, limit=limit, offset=offset, state=None if state is None else state.value
        )
        return {"items": items, "limit": limit, "offset": offset, "has_more": more}

    return router


async def recent_jobs(
    store: Store,
    *,
    limit: int,
    offset: int = 0,
    state: str | None = None,
    max_runs: int = UI_JOBS_MAX_RUNS,
) -> tuple[list[dict[str, Any]], bool]:
    """Jobs of the newest ``max_runs`` runs, newest run first and in pipeline order within
    a run; returns one page and whether more follow."""
    wanted = offset + limit + 1
    found: list[dict[str, Any]] = []
    seen: set[str] = set()
    scanned = 0
    while scanned < max_runs and len(found) < wanted:
        page = await store.list_runs(limit=min(_RUN_PAGE, max_runs - scanned), offset=scanned)
        if not page:
            break
        scanned += len(page)
        # A run submitted meanwhile shifts the pages by one: skip what was already listed.
        ids = [r["run_id"] for r in page if r["run_id"] not in seen]
        seen.update(ids)
        runs = await asyncio.gather(*(store.get_run(i) for i in ids))
        for run in runs:
            for job in (run or {}).get("jobs", []):
                if state is None or job.get("state") == state:
                    found.append(_ui_job(run or {}, job))
    return found[offset : offset + limit], len(found) > offset + limit


def _ui_job(run: dict[str, Any], job: dict[str, Any]) -> dict[str, Any]:
    started, finished = job.get("started_at"), job.get("finished_at")
    duration = None
    if started is not None and finished is not None:
        duration = round(max(finished - started, 0.0) * 1000.0, 3)
    steps = job.get("steps") or []
    return {
        "job_id": job["job_id"],
        "run_id": run.get("run_id"),
        "pipeline": run.get("pipeline"),
        "run_state": run.get("state"),
        "name": job.get("name"),
        "state": job.get("state"),
        "result": job.get("result"),
        "attempt": job.get("attempt"),
        "node_id": job.get("node_id"),
        "queued_at": job.get("queued_at"),
        "started_at": started,
        "finished_at": finished,
        "duration_ms": duration,
        "error_code": job.get("error_code"),
        "steps_total": len(steps),
        "steps_done": sum(1 for s in steps if s.get("state") in _STEP_DONE),
        "trace_id": trace_id_for(str(run.get("run_id", ""))),
    }


def _bearer_matches(authorization: str | None, token: str) -> bool:
    if not authorization or not authorization.lower().startswith("bearer "):
        return False
    # Constant time: the comparison must not tell a prober how much of the token matched.
    return hmac.compare_digest(authorization[7:].strip().encode(), token.encode())
