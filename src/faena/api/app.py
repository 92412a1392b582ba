"""The control plane's HTTP API (FastAPI): pipelines under /api/v1, health at the root.

Every /api/v1 route authenticates (bearer token) and checks its scope through the ports in
``faena.security``; errors are RFC 9457 problems (``faena.api.problems``).
No ``from __future__ import annotations`` here: FastAPI reads the route annotations at
definition time, and they name dependencies built in this function's scope.
"""

import asyncio
import contextlib
import hashlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse

from faena import __version__
from faena.api import problems
from faena.bus.port import EventBus
from faena.domain.durations import parse_duration
from faena.domain.errors import ErrorCode, FaenaError, NotFound
from faena.domain.events import subject_matches
from faena.orchestration.orchestrator import Orchestrator, run_of
from faena.security.port import Authenticator, Authorizer, Principal
from faena.spec import parse_pipeline
from faena.store.port import IdempotencyRecord, Store, resolve_run

IDEMPOTENCY_TTL = 24 * 3600.0
MAX_BODY = 1 << 20
SSE_POLL = 1.0  # the longest a stream sleeps when no wake-up comes
SSE_KEEPALIVE = 15.0


class Wakeup:
    """Notified on every committed event, so event streams answer at once instead of
    polling the log. Waiters hold the generation they saw: no notification is missed."""

    def __init__(self) -> None:
        self._event: asyncio.Event | None = None

    def current(self) -> asyncio.Event:
        if self._event is None:
            self._event = asyncio.Event()
        return self._event

    def notify(self) -> None:
        old, self._event = self._event, asyncio.Event()
        if old is not None:
            old.set()


# What the two submission routes (a pipeline, one job) declare alike in /openapi.json.
_SUBMISSION: dict[str, Any] = {
    "responses": {
        200: {"description": "the run an earlier request with this Idempotency-Key made"}
    },
    "openapi_extra": {
        "requestBody": {
            "required": True,
            "content": {
                "application/yaml": {"schema": {"type": "string"}},
                "application/json": {"schema": {"type": "object"}},
            },
        }
    },
}


class IdempotencyConflict(FaenaError):
    code = ErrorCode.ORC_VALID


def create_api(
    *,
    orchestrator: Orchestrator,
    store: Store,
    authenticator: Authenticator,
    authorizer: Authorizer,
    nodes: Callable[[], list[dict[str, Any]]] = list,
    lifespan: Callable[[], Coroutine[Any, Any, None]] | None = None,
    shutdown: Callable[[], Coroutine[Any, Any, None]] | None = None,
    max_body: int = MAX_BODY,
    routers: Sequence[Callable[..., APIRouter]] = (),
    wakeup: Wakeup | None = None,
    bus: EventBus | None = None,
    why_waiting: Callable[[str], str | None] = lambda job_id: None,
    role: Callable[[], Awaitable[dict[str, Any]]] | None = None,
) -> FastAPI:
    """The ASGI app; ``lifespan``/``shutdown`` start and stop the system around it.
    ``routers`` add the routes of other contexts: each is called with ``require=``, the
    factory of auth dependencies (``Depends(require("job:read"))``)."""

    @asynccontextmanager
    async def run(_: FastAPI) -> AsyncIterator[None]:
        if lifespan is not None:
            await lifespan()
        try:
            yield
        finally:
            if shutdown is not None:
                await shutdown()

    api = FastAPI(title="faena", version=__version__, lifespan=run)
    problems.install(api)
    # One submission per Idempotency-Key at a time in this process; the store keeps the keys.
    key_locks: dict[str, asyncio.Lock] = {}

    async def principal(authorization: Annotated[str | None, Header()] = None) -> Principal:
        token = None
        if authorization and authorization.lower().startswith("bearer "):
            token = authorization[7:].strip()
        return await authenticator.authenticate(token)

    def scope(name: str) -> Callable[[Principal], Awaitable[Principal]]:
        # async: FastAPI runs a plain ``def`` dependency on a worker thread, a hop per request.
        async def check(p: Annotated[Principal, Depends(principal)]) -> Principal:
            authorizer.authorize(p, name)
            return p

        return check

    async def resolve(ref: str) -> str:
        return await resolve_run(store, ref)

    @api.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @api.get("/readyz", tags=["health"])
    async def readyz() -> JSONResponse:
        """Readiness: the store and the bus answer; says whether this replica leads."""
        try:
            await store.list_runs(limit=1)
        except Exception as exc:
            return problems.problem(503, ErrorCode.ORC_INFRA, f"store unavailable: {exc}")
        if bus is not None:
            try:
                await bus.ping()
            except Exception as exc:
                return problems.problem(503, ErrorCode.ORC_INFRA, f"bus unavailable: {exc}")
        return JSONResponse({"status": "ready", **(await role() if role is not None else {})})

    @api.post(
        "/api/v1/pipelines",
        status_code=201,
        tags=["pipelines"],
        **_SUBMISSION,
    )
    async def submit(
        request: Request,
        p: Annotated[Principal, Depends(scope("job:create"))],
        idempotency_key: Annotated[str | None, Header()] = None,
        x_faena_filename: Annotated[str | None, Header()] = None,
        pause_on_failure: Annotated[
            str | None,
            Query(max_length=32, description="keep a failed step's worker this long (10m)"),
        ] = None,
    ) -> Any:
        """Submit a run of a pipeline written as faena.yml (YAML, or the same as JSON)."""
        body = await _read_body(request, max_body)
        pause = None
        if pause_on_failure is not None:
            try:
                pause = parse_duration(pause_on_failure)
            except ValueError as exc:
                raise FaenaError(f"pause_on_failure: {exc}", code=ErrorCode.ORC_VALID) from None
            if not 0 < pause <= 24 * 3600:
                raise FaenaError("pause_on_failure must be more than 0 and at most 24h",
                                 code=ErrorCode.ORC_VALID)  # fmt: skip
        filename = x_faena_filename or "faena.yml"
        return _created(await submit_body(body, idempotency_key, filename, p, pause))

    async def submit_body(
        body: bytes,
        idempotency_key: str | None,
        filename: str,
        p: Principal,
        pause: float | None = None,
    ) -> dict[str, Any]:
        if not idempotency_key:
            return await create_run(body, filename, p, pause)
        if len(idempotency_key) > 255:
            raise FaenaError("Idempotency-Key is longer than 255", code=ErrorCode.ORC_VALID)
        # The same body with another pause is another request.
        digest = hashlib.sha256(body + f"\0pause={pause}".encode()).hexdigest()
        lock = key_locks.setdefault(idempotency_key, asyncio.Lock())
        try:
            async with lock:
                now = time.time()
                earlier = await store.recall_idempotency(
                    p.tenant_id, idempotency_key, now - IDEMPOTENCY_TTL
                )
                if earlier is None:
                    result = await create_run(body, filename, p, pause)
                    earlier = await store.remember_idempotency(
                        IdempotencyRecord(p.tenant_id, idempotency_key, digest, result, now),
                        now - IDEMPOTENCY_TTL,
                    )
                    if earlier.result.get("run_id") == result["run_id"]:
                        return result
                if earlier.body_hash != digest:
                    raise IdempotencyConflict("Idempotency-Key was used with a different body")
                return {**earlier.result, "created": False}
        finally:
            if not lock.locked():
                key_locks.pop(idempotency_key, None)

    async def create_run(
        body: bytes, filename: str, p: Principal, pause: float | None
    ) -> dict[str, Any]:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise FaenaError("the body is not UTF-8", code=ErrorCode.ORC_VALID) from None
        spec = parse_pipeline(text, filename=filename)
        spec = replace(spec, source="")  # no local checkout behind an API submission
        if pause is not None:
            spec = replace(spec, pause_on_failure=pause)
        run_id = await orchestrator.submit(spec, options={"submitted_by": p.subject})
        return {"run_id": run_id, "created": True}

    @api.get("/api/v1/pipelines", tags=["pipelines"])
    async def list_runs(
        _: Annotated[Principal, Depends(scope("job:read"))],
        limit: Annotated[int, Query(ge=1, le=500)] = 20,
        offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
        state: Annotated[str | None, Query(pattern="^[A-Z]+$")] = None,
    ) -> dict[str, Any]:
        """Runs, newest first."""
        rows = await store.list_runs(limit=limit, offset=offset, state=state)
        return {"items": rows, "limit": limit, "offset": offset}

    @api.get("/api/v1/pipelines/{run_ref}", tags=["pipelines"])
    async def get_run(
        run_ref: str, _: Annotated[Principal, Depends(scope("job:read"))]
    ) -> dict[str, Any]:
        """One run with its jobs (id, unique prefix, or ``last``)."""
        row = await store.get_run(await resolve(run_ref))
        if row is None:
            raise NotFound(f"no run {run_ref}")
        return {**row, "jobs": [explained(j) for j in row.get("jobs", [])]}

    def explained(job: dict[str, Any]) -> dict[str, Any]:
        """A queued job with why it waits (``waiting``), when the scheduler knows."""
        if job.get("state") != "PENDING":
            return job
        reason = why_waiting(str(job["job_id"]))
        return {**job, "waiting": reason} if reason else job

    @api.post("/api/v1/pipelines/{run_ref}/cancel", status_code=202, tags=["pipelines"])
    async def cancel_run(
        run_ref: str, p: Annotated[Principal, Depends(scope("job:cancel"))]
    ) -> dict[str, str]:
        """Cancel a run; idempotent."""
        run_id = await resolve(run_ref)
        await orchestrator.cancel(run_id, f"cancelled by {p.subject}")
        row = await store.get_run(run_id)
        state = (row or {}).get("state", "")
        status = "cancelling" if state not in ("SUCCEEDED", "FAILED", "CANCELLED") else state
        return {"run_id": run_id, "status": status.lower()}

    @api.post("/api/v1/pipelines/{run_ref}/retry", status_code=202, tags=["pipelines"])
    async def retry_run(
        run_ref: str, _: Annotated[Principal, Depends(scope("job:retry"))]
    ) -> dict[str, Any]:
        """Run the failed and cancelled jobs again, with what depends on them, as a new
        attempt of the same run; succeeded jobs keep their results (409 if none)."""
        run_id = await resolve(run_ref)
        jobs = await orchestrator.retry(run_id)
        return {"run_id": run_id, "jobs": jobs, "status": "retrying"}

    async def job_row(job_id: str) -> dict[str, Any]:
        run = await store.get_run(run_of(job_id)) if "." in job_id else None
        for job in (run or {}).get("jobs", []):
            if job["job_id"] == job_id:
                return explained(dict(job))
        raise NotFound(f"no job {job_id}")

    @api.post(
        "/api/v1/jobs",
        status_code=201,
        tags=["jobs"],
        **_SUBMISSION,
    )
    async def submit_job(
        request: Request,
        p: Annotated[Principal, Depends(scope("job:create"))],
        idempotency_key: Annotated[str | None, Header()] = None,
    ) -> Any:
        """A one-job run: the body is one job as faena.yml writes it (``steps``, ...).
        ``client_job_id`` in the body, like ``Idempotency-Key``, makes a repeat a no-op."""
        body = await _read_body(request, max_body)
        try:
            job = yaml_or_json(body)
        except ValueError as exc:
            raise FaenaError(str(exc), code=ErrorCode.ORC_VALID) from None
        if not isinstance(job, dict):
            raise FaenaError("the body must be one job (a mapping)", code=ErrorCode.ORC_VALID)
        client_job_id = job.pop("client_job_id", None)
        if client_job_id is not None and not isinstance(client_job_id, str | int):
            raise FaenaError("client_job_id must be a string", code=ErrorCode.ORC_VALID)
        key = idempotency_key or (f"client-job:{client_job_id}" if client_job_id else None)
        name = str(job.pop("id", None) or "job")
        wrapped = json.dumps({"name": name, "jobs": {name: job}}).encode()
        forwarded = await submit_body(wrapped, key, "job.json", p)
        if "matrix" in job or "strategy" in job:
            run = await store.get_run(forwarded["run_id"])
            job_id = (run or {}).get("jobs", [{}])[0].get("job_id")
        else:
            job_id = f"{forwarded['run_id']}.1"  # a run's jobs are numbered from 1
        return _created({**forwarded, "job_id": job_id})

    @api.post("/api/v1/jobs/{job_id}/retry", status_code=202, tags=["jobs"])
    async def retry_job(
        job_id: str, _: Annotated[Principal, Depends(scope("job:retry"))]
    ) -> dict[str, Any]:
        """Run a failed or cancelled job again, with its unfinished dependents (409 if the
        job did not fail); the run's other jobs are untouched."""
        await job_row(job_id)
        jobs = await orchestrator.retry_job(job_id)
        return {"job_id": job_id, "jobs": jobs, "status": "retrying"}

    @api.get("/api/v1/nodes", tags=["nodes"])
    async def list_nodes(_: Annotated[Principal, Depends(scope("node:read"))]) -> dict[str, Any]:
        """The nodes that run jobs, with their capacity and load."""
        return {"items": nodes()}

    @api.get("/api/v1/jobs/{job_id}", tags=["jobs"])
    async def get_job(
        job_id: str, _: Annotated[Principal, Depends(scope("job:read"))]
    ) -> dict[str, Any]:
        """One job with its steps."""
        return await job_row(job_id)

    @api.post("/api/v1/jobs/{job_id}/cancel", status_code=202, tags=["jobs"])
    async def cancel_job(
        job_id: str, p: Annotated[Principal, Depends(scope("job:cancel"))]
    ) -> dict[str, str]:
        """Cancel one job; its dependents are skipped. Idempotent."""
        await job_row(job_id)
        await orchestrator.cancel_job(job_id, f"cancelled by {p.subject}")
        return {"job_id": job_id, "status": "cancelling"}

    @api.get(
        "/api/v1/events",
        tags=["events"],
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}}},
    )
    async def events(
        request: Request,
        _: Annotated[Principal, Depends(scope("job:read"))],
        run: Annotated[str | None, Query(description="only this run's events")] = None,
        subject: Annotated[str, Query(description="NATS-style filter, e.g. ci.job.>")] = "ci.>",
        after: Annotated[int, Query(ge=0, le=2**62, description="start after this event id")] = 0,
        last_event_id: Annotated[str | None, Header()] = None,
    ) -> StreamingResponse:
        """Server-Sent Events from the event log; reconnect with Last-Event-ID to resume."""
        start = after
        if last_event_id and last_event_id.isdigit() and len(last_event_id) <= 18:
            start = int(last_event_id)
        run_id = await resolve(run) if run else None

        async def stream() -> AsyncIterator[str]:
            seq = start
            idle = 0.0
            while not await request.is_disconnected():
                # Taken before reading: an event committed after the read still wakes us.
                changed = wakeup.current() if wakeup is not None else None
                batch = await store.events_after(seq, limit=500)
                for stored in batch:
                    seq = stored.seq
                    e = stored.event
                    if run_id and e.correlation_id != run_id:
                        continue
                    if not subject_matches(subject, e.subject):
                        continue
                    yield f"id: {seq}\nevent: {e.subject}\ndata: {json.dumps(e.to_dict())}\n\n"
                if batch:
                    idle = 0.0
                    continue
                if idle >= SSE_KEEPALIVE:
                    idle = 0.0
                    yield ": keep-alive\n\n"
                began = time.monotonic()
                if changed is None:
                    await asyncio.sleep(SSE_POLL)
                else:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(changed.wait(), SSE_POLL)
                idle += time.monotonic() - began

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})  # fmt: skip

    for make in routers:
        api.include_router(make(require=scope))
    problems.document(api)
    return api


def _created(answer: dict[str, Any]) -> Any:
    """201 for a new run; 200 when an Idempotency-Key found the first one."""
    if answer.get("created", True):
        return answer
    return JSONResponse(answer, status_code=200)


def yaml_or_json(body: bytes) -> Any:
    """Parse a small request body written as JSON or YAML."""
    import yaml

    try:
        # JSON first: the C parser, ~10x faster than PyYAML's pure-Python one.
        return json.loads(body)
    except (UnicodeDecodeError, ValueError):
        pass
    try:
        return yaml.safe_load(body.decode("utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ValueError(f"the body is neither JSON nor YAML: {exc}") from None


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise problems.PayloadTooLarge(f"the body is larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise problems.PayloadTooLarge(f"the body is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
