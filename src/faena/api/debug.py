"""``POST /api/v1/exec``: run a command in the kept worker of a job paused on failure, or
end the pause. Scope ``exec:run``; every command is audited in the run's event log.

No ``from __future__ import annotations``: FastAPI reads these annotations at runtime.
"""

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from faena.domain.errors import ErrorCode, FaenaError, NotFound
from faena.domain.events import new_id
from faena.orchestration.debug import DebugBroker
from faena.security.port import Principal
from faena.store.port import Store, resolve_run


class ExecBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    run: Annotated[str, Field(min_length=1, max_length=128)] | None = Field(
        None, description="run id, unique prefix or 'last' (needed when job is a name)"
    )
    job: Annotated[str, Field(min_length=1, max_length=256)] = Field(
        description="job id, or the job's name or key within `run`"
    )
    command: Annotated[str, Field(max_length=65_536)] | None = Field(
        None, description="shell command to run in the job's worker"
    )
    resume: bool = Field(False, description="end the pause instead: the job finishes as failed")
    exec_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9._:-]{1,64}$")] | None = Field(
        None, description="repeat a request with the same id to get its output again"
    )


def debug_router(
    *,
    broker: DebugBroker,
    store: Store,
    require: Callable[[str], Callable[..., Awaitable[Principal]]],
) -> APIRouter:
    router = APIRouter(prefix="/api/v1", tags=["debugging"])

    async def resolve_job(run_ref: str | None, job_ref: str) -> str:
        if run_ref is None:
            if "." not in job_ref:
                raise FaenaError("give the run, or the job's full id", code=ErrorCode.ORC_VALID)
            run_ref = job_ref.rsplit(".", 1)[0]
        run_id = await resolve_run(store, run_ref)
        row = await store.get_run(run_id)
        if row is None:
            raise NotFound(f"no run {run_ref}")
        jobs = row.get("jobs", [])
        for field in ("job_id", "key", "name"):
            exact = [j for j in jobs if j.get(field) == job_ref]
            if len(exact) == 1:
                return str(exact[0]["job_id"])
        prefixed = [j for j in jobs if str(j.get("name", "")).startswith(job_ref)]
        if len(prefixed) == 1:
            return str(prefixed[0]["job_id"])
        if prefixed:
            names = ", ".join(str(j["name"]) for j in prefixed[:5])
            raise FaenaError(f"job {job_ref!r} is ambiguous: {names}", code=ErrorCode.ORC_VALID)
        raise NotFound(f"no job {job_ref} in run {run_id}")

    @router.post(
        "/exec",
        responses={
            200: {"content": {"application/x-ndjson": {}}, "description": "the output"},
            202: {"description": "the pause ends"},
        },
    )
    async def exec_(body: ExecBody, p: Annotated[Principal, Depends(require("exec:run"))]) -> Any:
        """Run ``command`` where the paused job failed (its workspace and env), streaming
        NDJSON lines ``{stream, text, ts}`` then ``{exit_code}``; or ``resume``."""
        job_id = await resolve_job(body.run, body.job)
        if body.resume:
            await broker.resume(job_id, p.subject)
            return JSONResponse({"job_id": job_id, "status": "resuming"}, status_code=202)
        if not body.command:
            raise FaenaError("command is required (or resume: true)", code=ErrorCode.ORC_VALID)
        session = await broker.start(job_id, body.command, body.exec_id or new_id(), p.subject)

        async def stream() -> AsyncIterator[str]:
            async for item in session.follow():
                if isinstance(item, int):
                    yield json.dumps({"exec_id": session.exec_id, "exit_code": item}) + "\n"
                else:
                    yield json.dumps({"stream": item.stream, "text": item.text,
                                      "ts": item.ts}) + "\n"  # fmt: skip

        return StreamingResponse(stream(), media_type="application/x-ndjson",
                                 headers={"X-Faena-Exec-Id": session.exec_id})  # fmt: skip

    return router
