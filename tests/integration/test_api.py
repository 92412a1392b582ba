"""The HTTP API on a real uvicorn on 127.0.0.1, driven with httpx."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_server import server_client, wait_done

from faena.settings import Settings

TOKEN = "test-admin-token"
PIPELINE = """name: api
jobs:
  a:
    steps: [{run: echo hello}]
  b:
    needs: a
    steps: [{run: 'true'}]
"""


@asynccontextmanager
async def serve(home: Path) -> AsyncIterator[httpx.AsyncClient]:
    """A real server on a free port over ``home``; stopped (cleanly) on exit."""
    async with server_client(Settings(home=home, jobs=2), TOKEN) as (c, _):
        yield c


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(tmp_path / "home") as c:
        yield c


async def test_health_needs_no_token(client: httpx.AsyncClient) -> None:
    anonymous = httpx.AsyncClient(base_url=str(client.base_url))
    async with anonymous:
        assert (await anonymous.get("/healthz")).json() == {"status": "ok"}
        assert (await anonymous.get("/readyz")).status_code == 200


async def test_submit_and_follow_a_run(client: httpx.AsyncClient) -> None:
    r = await client.post("/api/v1/pipelines", content=PIPELINE,
                          headers={"Content-Type": "application/yaml"})  # fmt: skip
    assert r.status_code == 201, r.text
    run_id = r.json()["run_id"]
    run = await wait_done(client, run_id)
    assert run["state"] == "SUCCEEDED"
    assert [j["name"] for j in run["jobs"]] == ["a", "b"]
    listed = (await client.get("/api/v1/pipelines", params={"limit": 5})).json()
    assert listed["items"][0]["run_id"] == run_id
    again = await client.post(f"/api/v1/pipelines/{run_id}/cancel")
    assert again.status_code == 202  # cancelling a finished run is a no-op
    assert again.json()["status"] == "succeeded"


async def test_json_body_is_accepted(client: httpx.AsyncClient) -> None:
    spec = {"jobs": {"a": {"steps": [{"run": "true"}]}}}
    r = await client.post("/api/v1/pipelines", json=spec)
    assert r.status_code == 201, r.text
    assert (await wait_done(client, r.json()["run_id"]))["state"] == "SUCCEEDED"


async def test_idempotency_key(client: httpx.AsyncClient) -> None:
    headers = {"Idempotency-Key": "k1"}
    first = await client.post("/api/v1/pipelines", content=PIPELINE, headers=headers)
    second = await client.post("/api/v1/pipelines", content=PIPELINE, headers=headers)
    assert first.status_code == 201 and second.status_code == 200  # the first run, again
    assert first.json()["run_id"] == second.json()["run_id"]
    assert second.json()["created"] is False
    other = await client.post("/api/v1/pipelines", content=PIPELINE + "# changed\n",
                              headers=headers)  # fmt: skip
    assert other.status_code == 422
    assert other.json()["code"] == "ORC-VALID"


async def test_auth_errors_are_problems(client: httpx.AsyncClient) -> None:
    base = str(client.base_url)
    async with httpx.AsyncClient(base_url=base) as anonymous:
        r = await anonymous.get("/api/v1/pipelines")
        assert r.status_code == 401
        assert r.headers["content-type"].startswith("application/problem+json")
        assert r.json()["code"] == "SEC-TOK"
    async with httpx.AsyncClient(base_url=base, headers={"Authorization": "Bearer nope"}) as bad:
        assert (await bad.get("/api/v1/pipelines")).json()["code"] == "SEC-TOK"


async def test_bad_input_is_4xx_with_located_errors(client: httpx.AsyncClient) -> None:
    invalid = "jobs:\n  a:\n    needs: biuld\n    steps: [{run: x}]\n"
    r = await client.post("/api/v1/pipelines", content=invalid)
    assert r.status_code == 422
    body = r.json()
    assert body["code"] == "ORC-VALID"
    assert body["errors"][0]["line"] == 3 and "did you mean" not in body["errors"][0]["message"]
    assert (await client.post("/api/v1/pipelines", content=b"\xff\xfe")).status_code == 422
    assert (await client.get("/api/v1/pipelines/nope")).status_code == 404
    assert (await client.get("/api/v1/pipelines", params={"limit": 0})).status_code == 422
    big = "x" * (2 << 20)
    assert (await client.post("/api/v1/pipelines", content=big)).status_code == 413


async def test_openapi_is_published(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    assert "/api/v1/pipelines" in spec["paths"]
    assert "/api/v1/pipelines/{run_ref}/cancel" in spec["paths"]


async def test_one_job_runs_and_job_cancel(client: httpx.AsyncClient) -> None:
    r = await client.post("/api/v1/jobs", json={"id": "hello", "steps": [{"run": "echo hi"}]})
    assert r.status_code == 201, r.text
    job_id = r.json()["job_id"]
    run = await wait_done(client, r.json()["run_id"])
    assert run["state"] == "SUCCEEDED"
    job = (await client.get(f"/api/v1/jobs/{job_id}")).json()
    assert job["name"] == "hello" and job["state"] == "SUCCEEDED"

    long = await client.post(
        "/api/v1/pipelines",
        content="jobs:\n  slow:\n    steps: [{run: sleep 300}]\n"
        "  after:\n    needs: slow\n    steps: [{run: 'true'}]\n",
    )
    run_id = long.json()["run_id"]
    async with asyncio.timeout(20):
        while True:
            jobs = (await client.get(f"/api/v1/pipelines/{run_id}")).json()["jobs"]
            if jobs[0]["state"] == "RUNNING":
                break
            await asyncio.sleep(0.05)
    r = await client.post(f"/api/v1/jobs/{jobs[0]['job_id']}/cancel")
    assert r.status_code == 202
    done = await wait_done(client, run_id)
    states = {j["name"]: j["state"] for j in done["jobs"]}
    assert states == {"slow": "CANCELLED", "after": "SKIPPED"}
    assert done["state"] == "CANCELLED"
    assert (await client.get("/api/v1/jobs/nope.1")).status_code == 404
    bad = await client.post("/api/v1/jobs", content=b"[1, 2")
    assert bad.status_code == 422 and bad.json()["code"] == "ORC-VALID"


async def read_sse(
    client: httpx.AsyncClient,
    params: dict[str, Any],
    headers: dict[str, str],
    until: str,
    stop_after: int | None = None,
) -> list[tuple[int, str]]:
    """(id, subject) of each event, until ``until`` arrives or ``stop_after`` events."""
    got: list[tuple[int, str]] = []
    async with asyncio.timeout(30):
        async with client.stream("GET", "/api/v1/events", params=params,
                                 headers=headers) as r:  # fmt: skip
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            ident = None
            async for line in r.aiter_lines():
                if line.startswith("id: "):
                    ident = int(line[4:])
                elif line.startswith("event: ") and ident is not None:
                    got.append((ident, line[7:]))
                    if line[7:] == until or (stop_after and len(got) >= stop_after):
                        return got
    return got


async def test_events_stream_resumes_with_last_event_id(client: httpx.AsyncClient) -> None:
    r = await client.post("/api/v1/pipelines", content=PIPELINE)
    run_id = r.json()["run_id"]
    await wait_done(client, run_id)
    everything = await read_sse(client, {"run": run_id}, {}, "ci.run.v1.completed")
    subjects = [s for _, s in everything]
    assert subjects[0] == "ci.run.v1.requested" and subjects[-1] == "ci.run.v1.completed"
    ids = [i for i, _ in everything]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)

    first = await read_sse(client, {"run": run_id}, {}, "", stop_after=3)
    rest = await read_sse(client, {"run": run_id}, {"Last-Event-ID": str(first[-1][0])},
                          "ci.run.v1.completed")  # fmt: skip
    assert first + rest == everything  # nothing missed, nothing twice

    job_events = len([s for s in subjects if s.startswith("ci.job.")])
    jobs_only = await read_sse(
        client, {"run": run_id, "subject": "ci.job.>"}, {}, "", stop_after=job_events
    )
    assert all(s.startswith("ci.job.") for _, s in jobs_only)


async def test_retry_reruns_failed_jobs_as_a_new_attempt(
    client: httpx.AsyncClient, tmp_path: Path
) -> None:
    flag = tmp_path / "fixed"
    text = (
        "jobs:\n"
        "  build:\n    outputs: [v]\n"
        "    steps: [{run: 'echo v=1 >> $FAENA_OUTPUT'}]\n"
        "  test:\n    needs: build\n"
        f"    steps: [{{run: 'test -e {flag}'}}]\n"
        "  ship:\n    needs: [build, test]\n"
        "    steps: [{run: 'test ${{ needs.build.outputs.v }} = 1'}]\n"
    )
    run_id = (await client.post("/api/v1/pipelines", content=text)).json()["run_id"]
    first = await wait_done(client, run_id)
    assert first["state"] == "FAILED"
    nothing = await client.post(f"/api/v1/pipelines/{run_id}/retry")
    assert nothing.status_code == 202  # test failed: it can be retried
    await wait_done(client, run_id)
    flag.write_text("ok")
    retried = await client.post(f"/api/v1/pipelines/{run_id}/retry")
    assert retried.status_code == 202, retried.text
    done = await wait_done(client, run_id)
    jobs = {j["name"]: j for j in done["jobs"]}
    assert done["state"] == "SUCCEEDED"
    assert jobs["build"]["attempt"] == 1  # kept, with its outputs
    assert jobs["test"]["attempt"] == 3 and jobs["ship"]["state"] == "SUCCEEDED"
    again = await client.post(f"/api/v1/pipelines/{run_id}/retry")
    assert again.status_code == 409 and again.json()["code"] == "ORC-STATE"


async def test_retry_one_job(client: httpx.AsyncClient, tmp_path: Path) -> None:
    flag = tmp_path / "ok"
    text = (
        "jobs:\n"
        f"  flaky:\n    steps: [{{run: 'test -e {flag}'}}]\n"
        "  after:\n    needs: flaky\n    steps: [{run: 'true'}]\n"
        "  other:\n    steps: [{run: 'true'}]\n"
    )
    run_id = (await client.post("/api/v1/pipelines", content=text)).json()["run_id"]
    run = await wait_done(client, run_id)
    ids = {j["name"]: j["job_id"] for j in run["jobs"]}
    refused = await client.post(f"/api/v1/jobs/{ids['other']}/retry")
    assert refused.status_code == 409
    flag.write_text("")
    r = await client.post(f"/api/v1/jobs/{ids['flaky']}/retry")
    assert r.status_code == 202, r.text
    assert sorted(r.json()["jobs"]) == sorted([ids["flaky"], ids["after"]])
    done = await wait_done(client, run_id)
    assert done["state"] == "SUCCEEDED"
    assert {j["name"]: j["attempt"] for j in done["jobs"]} == {"flaky": 2, "after": 1, "other": 1}


async def test_nodes_lists_this_machine(client: httpx.AsyncClient) -> None:
    nodes = (await client.get("/api/v1/nodes")).json()["items"]
    assert [n["node_id"] for n in nodes] == ["local"]
    assert nodes[0]["capacity"] == {"slots": 2} and nodes[0]["state"] == "ready"


async def test_idempotency_keys_survive_a_restart_and_races(tmp_path: Path) -> None:
    home = tmp_path / "home"
    yaml = {"Content-Type": "application/yaml"}
    async with serve(home) as c:
        first = await c.post("/api/v1/pipelines", content=PIPELINE,
                             headers={**yaml, "Idempotency-Key": "deploy-42"})  # fmt: skip
        assert first.status_code == 201 and first.json()["created"] is True
        # Five at once with a new key: one run.
        racing = await asyncio.gather(*(
            c.post("/api/v1/pipelines", content=PIPELINE,
                   headers={**yaml, "Idempotency-Key": "race"}) for _ in range(5)
        ))  # fmt: skip
        assert len({r.json()["run_id"] for r in racing}) == 1
        assert sum(r.json()["created"] for r in racing) == 1
        before = len((await c.get("/api/v1/pipelines", params={"limit": 100})).json()["items"])
    async with serve(home) as c:
        again = await c.post("/api/v1/pipelines", content=PIPELINE,
                             headers={**yaml, "Idempotency-Key": "deploy-42"})  # fmt: skip
        assert again.json() == {"run_id": first.json()["run_id"], "created": False}
        other = await c.post("/api/v1/pipelines", content=PIPELINE.replace("hello", "bye"),
                             headers={**yaml, "Idempotency-Key": "deploy-42"})  # fmt: skip
        assert other.status_code == 422 and other.json()["code"] == "ORC-VALID"
        after = len((await c.get("/api/v1/pipelines", params={"limit": 100})).json()["items"])
        assert after == before


async def test_tokens_are_issued_scoped_and_revoked(client: httpx.AsyncClient) -> None:
    made = await client.post("/api/v1/tokens", json={"name": "reader", "scopes": ["job:read"]})
    assert made.status_code == 201
    token, token_id = made.json()["token"], made.json()["token_id"]
    reader = httpx.AsyncClient(base_url=str(client.base_url),
                               headers={"Authorization": f"Bearer {token}"})  # fmt: skip
    async with reader:
        assert (await reader.get("/api/v1/pipelines")).status_code == 200
        denied = await reader.post("/api/v1/pipelines", content=PIPELINE)
        assert denied.status_code == 403 and denied.json()["code"] == "ORC-AUTH"
        # A token cannot hand out more than it holds.
        grant = await reader.post("/api/v1/tokens", json={"name": "x", "scopes": ["job:read"]})
        assert grant.status_code == 403
        listed = (await client.get("/api/v1/tokens")).json()["items"]
        assert [t["name"] for t in listed] == ["reader"] and "token" not in listed[0]
        assert (await client.delete(f"/api/v1/tokens/{token_id}")).status_code == 200
        assert (await client.delete(f"/api/v1/tokens/{token_id}")).status_code == 200
        gone = await reader.get("/api/v1/pipelines")
        assert gone.status_code == 401 and gone.json()["code"] == "SEC-TOK"
    unknown = await client.post("/api/v1/tokens", json={"name": "y", "scopes": ["root:all"]})
    assert unknown.status_code == 422
    assert (await client.delete("/api/v1/tokens/tk-nope")).status_code == 404


async def test_pause_on_failure_is_checked(client: httpx.AsyncClient) -> None:
    for bad in ("soon", "0s", "2d"):
        r = await client.post("/api/v1/pipelines", params={"pause_on_failure": bad},
                              content=PIPELINE)  # fmt: skip
        assert r.status_code == 422 and "pause_on_failure" in r.json()["detail"], bad


async def test_a_storm_of_retries_never_leaves_a_run_stuck(client: httpx.AsyncClient) -> None:
    failing = (
        "name: storm\njobs:\n  a:\n    steps: [{run: 'exit 1'}]\n"
        "  b:\n    needs: a\n    steps: [{run: 'true'}]\n"
    )
    run_id = (await client.post("/api/v1/pipelines", content=failing)).json()["run_id"]
    accepted = 0
    for _ in range(40):  # retries as fast as they come, most while the run still runs
        r = await client.post(f"/api/v1/pipelines/{run_id}/retry")
        assert r.status_code in (202, 409), r.text
        accepted += r.status_code == 202
    run = await wait_done(client, run_id)
    assert run["state"] == "FAILED"
    assert run["attempt"] == accepted + 1
    assert [j["state"] for j in run["jobs"]] == ["FAILED", "SKIPPED"]


async def test_a_client_job_id_makes_a_repeated_post_jobs_a_no_op(
    client: httpx.AsyncClient,
) -> None:
    job = {"id": "build", "client_job_id": "ci-4711", "steps": [{"run": "true"}]}
    first = await client.post("/api/v1/jobs", json=job)
    again = await client.post("/api/v1/jobs", json=job)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["run_id"] == first.json()["run_id"]
    assert again.json()["job_id"] == first.json()["job_id"]
    other = await client.post("/api/v1/jobs", json={**job, "steps": [{"run": "false"}]})
    assert other.status_code == 422  # the same client job id for another job
    fresh = await client.post("/api/v1/jobs", json={**job, "client_job_id": "ci-4712"})
    assert fresh.status_code == 201 and fresh.json()["run_id"] != first.json()["run_id"]
