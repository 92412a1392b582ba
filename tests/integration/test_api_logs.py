"""GET /api/v1/pipelines/{run}/logs on a real uvicorn, through the real composition root.

The server is ``faena.app.build_server`` itself: its authenticator, its scope checks and
its problem handlers.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_server import server_client, wait_done

from faena.settings import Settings

TOKEN = "test-admin-token"
PIPELINE = """name: logs
jobs:
  a:
    steps:
      - name: greet
        run: echo "hello from a"; echo "to stderr" >&2
      - run: echo second step
  b:
    needs: a
    strategy:
      matrix:
        n: [1, 2]
    steps: [{run: 'echo "b says ${{ matrix.n }}"'}]
"""


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with server_client(Settings(home=tmp_path / "home", jobs=2), TOKEN) as (c, _):
        yield c


async def submit(client: httpx.AsyncClient, text: str = PIPELINE) -> str:
    r = await client.post("/api/v1/pipelines", content=text)
    assert r.status_code == 201, r.text
    return str(r.json()["run_id"])


async def logs(client: httpx.AsyncClient, ref: str, **params: Any) -> dict[str, Any]:
    r = await client.get(f"/api/v1/pipelines/{ref}/logs", params=params)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def test_lines_of_a_run(client: httpx.AsyncClient) -> None:
    run_id = await submit(client)
    await wait_done(client, run_id)
    page = await logs(client, run_id)
    assert page["run_id"] == run_id and page["state"] == "SUCCEEDED"
    texts = [(ln["stream"], ln["text"]) for ln in page["lines"]]
    assert ("stdout", "hello from a") in texts and ("stderr", "to stderr") in texts
    assert {"b says 1", "b says 2", "second step"} <= {t for _, t in texts}
    first = page["lines"][0]
    assert set(first) == {"id", "job_id", "attempt", "step_index", "stream", "ts", "text"}
    ids = [ln["id"] for ln in page["lines"]]
    assert ids == sorted(ids) and page["next"] == ids[-1]
    assert [j["name"] for j in page["jobs"]] == ["a", "b (n=1)", "b (n=2)"]
    a = page["jobs"][0]
    assert a["state"] == "SUCCEEDED" and a["step_names"] == ["greet", "echo second step"]
    # Nothing after the last line; `last` names the newest run.
    again = await logs(client, "last", after=page["next"])
    assert again["run_id"] == run_id and again["lines"] == [] and again["next"] == page["next"]


async def test_one_job_by_id_name_key_or_prefix(client: httpx.AsyncClient) -> None:
    run_id = await submit(client)
    run = await wait_done(client, run_id)
    a_id = run["jobs"][0]["job_id"]
    by_id = await logs(client, run_id, job=a_id)
    by_name = await logs(client, run_id[:8], job="a")
    assert by_id["lines"] == by_name["lines"] and by_id["lines"]
    assert {ln["job_id"] for ln in by_id["lines"]} == {a_id}
    both = await logs(client, run_id, job="b")  # every matrix combination of b
    assert [j["name"] for j in both["jobs"]] == ["b (n=1)", "b (n=2)"]
    assert sorted(ln["text"] for ln in both["lines"]) == ["b says 1", "b says 2"]
    one = await logs(client, run_id, job="b (n=2")
    assert [ln["text"] for ln in one["lines"]] == ["b says 2"]


async def test_pages_with_after_and_limit(client: httpx.AsyncClient) -> None:
    run_id = await submit(client)
    await wait_done(client, run_id)
    for job in (None, "b"):  # one query, and several jobs merged
        params = {} if job is None else {"job": job}
        whole = (await logs(client, run_id, **params))["lines"]
        seen: list[dict[str, Any]] = []
        after = 0
        while True:
            page = await logs(client, run_id, after=after, limit=1, **params)
            if not page["lines"]:
                break
            assert len(page["lines"]) == 1
            seen += page["lines"]
            after = page["next"]
        assert seen == whole


async def test_a_follower_sees_the_lines_then_the_end(
    client: httpx.AsyncClient, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    run_id = await submit(
        client,
        f"""jobs:
  slow:
    steps:
      - run: |
          echo first
          while [ ! -e {gate} ]; do sleep 0.05; done
          echo second
""",
    )
    after, texts = 0, []
    async with asyncio.timeout(30):
        while "first" not in texts:
            page = await logs(client, run_id, after=after)
            texts += [ln["text"] for ln in page["lines"]]
            after = page["next"]
            await asyncio.sleep(0.05)
    assert page["state"] == "RUNNING" and page["jobs"][0]["state"] == "RUNNING"
    gate.touch()
    async with asyncio.timeout(30):
        while page["state"] != "SUCCEEDED":
            page = await logs(client, run_id, after=after)
            texts += [ln["text"] for ln in page["lines"]]
            after = page["next"]
            await asyncio.sleep(0.05)
    # The state is read before the lines: a finished run's page holds its last line.
    assert texts == ["first", "second"]


async def test_errors_are_problems(client: httpx.AsyncClient) -> None:
    run_id = await submit(client)
    await wait_done(client, run_id)
    missing = await client.get("/api/v1/pipelines/zzzz/logs")
    assert missing.status_code == 404
    assert missing.headers["content-type"].startswith("application/problem+json")
    assert missing.json()["code"] == "ORC-VALID" and "zzzz" in missing.json()["detail"]
    no_job = await client.get(f"/api/v1/pipelines/{run_id}/logs", params={"job": "gamma"})
    assert no_job.status_code == 404
    assert "gamma" in no_job.json()["detail"] and "b (n=1)" in no_job.json()["detail"]
    other = await submit(client)
    common = next(i for i, (x, y) in enumerate(zip(run_id, other, strict=True)) if x != y)
    ambiguous = await client.get(f"/api/v1/pipelines/{run_id[:common]}/logs")
    assert ambiguous.status_code == 422 and ambiguous.json()["code"] == "ORC-VALID"
    for params in ({"limit": 0}, {"limit": 10_001}, {"after": -1}, {"after": 2**63}):
        bad = await client.get(f"/api/v1/pipelines/{run_id}/logs", params=params)
        assert bad.status_code == 422, params
        assert bad.json()["code"] == "ORC-VALID"


async def test_needs_a_token_with_job_read(client: httpx.AsyncClient) -> None:
    run_id = await submit(client)
    base = str(client.base_url)
    async with httpx.AsyncClient(base_url=base) as anonymous:
        r = await anonymous.get(f"/api/v1/pipelines/{run_id}/logs")
        assert r.status_code == 401 and r.json()["code"] == "SEC-TOK"
    made = await client.post("/api/v1/tokens", json={"name": "submitter", "scopes": ["job:create"]})
    assert made.status_code == 201, made.text
    narrow = {"Authorization": f"Bearer {made.json()['token']}"}
    async with httpx.AsyncClient(base_url=base, headers=narrow) as submitter:
        r = await submitter.get(f"/api/v1/pipelines/{run_id}/logs")
        assert r.status_code == 403 and r.json()["code"] == "ORC-AUTH"
    made = await client.post("/api/v1/tokens", json={"name": "reader", "scopes": ["job:read"]})
    reader = {"Authorization": f"Bearer {made.json()['token']}"}
    async with httpx.AsyncClient(base_url=base, headers=reader) as c:
        assert (await c.get(f"/api/v1/pipelines/{run_id}/logs")).status_code == 200


async def test_published_in_openapi(client: httpx.AsyncClient) -> None:
    doc = (await client.get("/openapi.json")).json()
    op = doc["paths"]["/api/v1/pipelines/{run_ref}/logs"]["get"]
    assert {p["name"] for p in op["parameters"]} >= {"run_ref", "job", "after", "limit"}
