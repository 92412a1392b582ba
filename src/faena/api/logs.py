"""A run's log lines: ``GET /api/v1/pipelines/{run}/logs``, and the query behind it.

``faena logs`` runs the same query (``read_log_page``) on a local store, so it prints
the same thing whether it reads the store or a server. A follower passes ``next`` back
as ``after`` and stops once the run (or the jobs it asked for) has finished and a page
comes back short: the store keeps every line of a step before it records the step's end,
and a page reads the states before the lines.

No ``from __future__ import annotations``: FastAPI reads the route annotations at
runtime. FastAPI itself is imported inside ``logs_router``: ``faena logs`` imports this
module to read a local store and must not pay FastAPI's start-up (~0.5 s).
"""

from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

from faena.domain.errors import NotFound
from faena.security.port import Principal
from faena.store.port import LogLine, Store, resolve_run

if TYPE_CHECKING:
    from fastapi import APIRouter

DEFAULT_LIMIT = 1000
MAX_LIMIT = 10_000
MAX_AFTER = 2**62  # line ids are SQL integers: a bigger number is a bad request, not a 500
RUN_DONE = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})
JOB_DONE = RUN_DONE | {"SKIPPED"}


def match_jobs(jobs: list[dict[str, Any]], wanted: str) -> list[dict[str, Any]]:
    """The jobs ``wanted`` names: an exact job id, name or key, else a prefix of the name
    or key (``test`` is every matrix combination of ``test``)."""
    for field in ("job_id", "name", "key"):
        exact = [j for j in jobs if j[field] == wanted]
        if exact:
            return exact
    return [j for j in jobs if j["name"].startswith(wanted) or j["key"].startswith(wanted)]


def job_view(job: dict[str, Any]) -> dict[str, Any]:
    """What a reader of the lines needs of a job: its name, state and step names."""
    names = list(job.get("step_names") or [])
    for step in job.get("steps") or []:
        index = int(step.get("index", 0))
        while len(names) <= index:
            names.append(str(len(names)))
        names[index] = step["name"]
    names += [f"service {name}" for name in job.get("service_names") or []]
    return {
        "job_id": job["job_id"],
        "name": job["name"],
        "key": job["key"],
        "state": job["state"],
        "attempt": job.get("attempt", 1),
        "step_names": names,
    }


def line_view(line: LogLine) -> dict[str, Any]:
    return {
        "id": line.id,
        "job_id": line.job_id,
        "attempt": line.attempt,
        "step_index": line.step_index,
        "stream": line.stream,
        "ts": line.ts,
        "text": line.text,
    }


def page_done(page: dict[str, Any], job: str | None) -> bool:
    """Whether nothing more can come after ``page`` (once it came back short): the run
    has finished, or every job the reader asked for has."""
    if page["state"] in RUN_DONE:
        return True
    jobs = page["jobs"]
    return job is not None and bool(jobs) and all(j["state"] in JOB_DONE for j in jobs)


async def read_log_page(
    store: Store,
    run_ref: str,
    job: str | None = None,
    after: int = 0,
    limit: int = DEFAULT_LIMIT,
) -> dict[str, Any]:
    """Up to ``limit`` lines after line id ``after`` of the run ``run_ref`` (an id, a
    unique prefix, or ``last``), of every job or of the jobs ``job`` names.

    Raises NotFound for an unknown run or job, FaenaError (ORC-VALID) for an ambiguous
    prefix."""
    run_id = await resolve_run(store, run_ref)
    # The run first, the lines after: a finished state means every line is already stored.
    run = await store.get_run(run_id)
    if run is None:
        raise NotFound(f"no run matches '{run_ref}'")
    jobs: list[dict[str, Any]] = run["jobs"]
    if job is None:
        lines = await store.read_logs(run_id, None, after_id=after, limit=limit)
    else:
        jobs = match_jobs(jobs, job)
        if not jobs:
            names = ", ".join(j["name"] for j in run["jobs"])
            raise NotFound(f"run {run_id} has no job '{job}' (jobs: {names})")
        if len(jobs) == 1:
            lines = await store.read_logs(run_id, jobs[0]["job_id"], after_id=after, limit=limit)
        else:
            # Ids grow across the run: the first ``limit`` of the merged pages are the
            # first ``limit`` lines of these jobs.
            merged: list[LogLine] = []
            for j in jobs:
                merged += await store.read_logs(run_id, j["job_id"], after_id=after, limit=limit)
            lines = sorted(merged, key=lambda ln: ln.id)[:limit]
    return {
        "run_id": run_id,
        "state": run["state"],
        "jobs": [job_view(j) for j in jobs],
        "lines": [line_view(ln) for ln in lines],
        "next": lines[-1].id if lines else after,
    }


def logs_router(*, store: Store, require: Callable[[str], Callable[..., Any]]) -> "APIRouter":
    """``GET /api/v1/pipelines/{run_ref}/logs`` (scope ``job:read``)."""
    from fastapi import APIRouter, Depends, Query

    router = APIRouter(tags=["pipelines"])

    @router.get("/api/v1/pipelines/{run_ref}/logs")
    async def run_logs(
        run_ref: str,
        _: Annotated[Principal, Depends(require("job:read"))],
        job: Annotated[
            str | None,
            Query(max_length=512, description="a job id, name or key; a prefix is enough"),
        ] = None,
        after: Annotated[
            int, Query(ge=0, le=MAX_AFTER, description="only lines after this id (`next`)")
        ] = 0,
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    ) -> dict[str, Any]:
        """Log lines of a run in the order they were written, of every job or of the
        jobs ``job`` names; ``next`` is the id to pass as ``after`` for the next page,
        ``state`` the run's state and ``jobs`` the jobs' states and step names, so a
        follower knows when nothing more can come."""
        return await read_log_page(store, run_ref, job, after, limit)

    return router
