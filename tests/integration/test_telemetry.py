"""GET /metrics, /api/v1/traces and /api/v1/ui/jobs over HTTP, after real pipelines ran.

The embedded system (SQLite store on a temp file, in-process bus, local processes) runs the
pipelines; the telemetry router, behind a test ``require``, serves what they left behind.
No ``from __future__ import annotations``: FastAPI reads the test routes' annotations.
"""

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import httpx
import pytest
from fastapi import FastAPI, Header
from prometheus_client.parser import text_string_to_metric_families

from faena.api import problems
from faena.api.telemetry import telemetry_router
from faena.app import App
from faena.security.port import Forbidden, Principal, Unauthenticated
from faena.settings import Settings
from faena.spec import parse_pipeline
from faena.store.sql import SqlStore
from faena.telemetry.asgi import RequestMetrics
from faena.telemetry.metrics import Metrics, MetricsRecorder
from faena.telemetry.traces import trace_id_for

READER = "reader-token"
NOBODY = "nobody-token"
SCRAPE = "scrape-s3cret"
TOKENS = {
    READER: Principal("reader", frozenset({"job:read"}), tenant_id="acme"),
    NOBODY: Principal("nobody", frozenset()),
}
PIPELINE = """name: telemetry
jobs:
  build:
    steps:
      - {name: compile, run: echo compiled}
  test:
    needs: build
    steps:
      - {name: unit, run: 'true'}
      - {name: broken, run: exit 3}
"""
GREEN = """name: green
jobs:
  only:
    steps: [{name: ok, run: 'true'}]
"""


def require(scope: str) -> Callable[..., Principal]:
    def check(authorization: Annotated[str | None, Header()] = None) -> Principal:
        token = authorization[7:] if authorization and authorization.startswith("Bearer ") else ""
        principal = TOKENS.get(token)
        if principal is None:
            raise Unauthenticated("missing or unknown token")
        if not principal.has(scope):
            raise Forbidden(f"this needs the {scope} scope")
        return principal

    return check


@dataclass
class Served:
    system: App
    metrics: Metrics
    api: FastAPI

    async def run(self, text: str, tmp: Path) -> str:
        spec = parse_pipeline(text, filename=str(tmp / "faena.yml"))
        run_id = await self.system.orchestrator.submit(spec)
        async with asyncio.timeout(60):
            await self.system.orchestrator.wait(run_id)
            await self.system.bus.drain()
        return run_id

    def client(self, token: str | None = None, **headers: str) -> httpx.AsyncClient:
        if token:
            headers["Authorization"] = f"Bearer {token}"
        transport = httpx.ASGITransport(app=self.api)
        return httpx.AsyncClient(transport=transport, base_url="http://faena", headers=headers)


def build_api(system: App, metrics: Metrics, scrape_token: str | None) -> FastAPI:
    api = FastAPI()
    problems.install(api)
    api.add_middleware(RequestMetrics, metrics=metrics)
    api.include_router(
        telemetry_router(
            metrics=metrics,
            store=system.store,
            require=require,
            scrape_token=scrape_token,
        )
    )

    @api.get("/api/v1/things/{thing_id}")
    async def thing(thing_id: str) -> dict[str, str]:
        return {"thing": thing_id}

    return api


async def serve(tmp_path: Path, scrape_token: str | None) -> AsyncIterator[Served]:
    store = SqlStore("sqlite:///" + str(tmp_path / "faena.db"))
    system = App(Settings(home=tmp_path / "home", jobs=2), store=store)
    metrics = Metrics()
    recorder = MetricsRecorder(metrics, system.bus)
    await system.start()
    await recorder.start()
    try:
        yield Served(system, metrics, build_api(system, metrics, scrape_token))
    finally:
        await recorder.close()
        await system.close()


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    async for s in serve(tmp_path, None):
        yield s


@pytest.fixture
async def guarded(tmp_path: Path) -> AsyncIterator[Served]:
    async for s in serve(tmp_path, SCRAPE):
        yield s


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def get(
    found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


def attrs(span: dict[str, Any]) -> dict[str, Any]:
    return {a["key"]: next(iter(a["value"].values())) for a in span["attributes"]}


async def test_metrics_after_real_runs(served: Served, tmp_path: Path) -> None:
    await served.run(PIPELINE, tmp_path)
    await served.run(GREEN, tmp_path)
    async with served.client() as anonymous:
        assert (await anonymous.get("/api/v1/things/42")).status_code == 200
        assert (await anonymous.get("/nowhere/at/all")).status_code == 404
        r = await anonymous.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    found = samples(r.text)
    assert get(found, "orc_runs_total", tenant="default", result="failure") == 1
    assert get(found, "orc_runs_total", tenant="default", result="success") == 1
    assert get(found, "orc_jobs_total", tenant="default", result="success") == 2
    assert get(found, "orc_jobs_total", tenant="default", result="failure") == 1
    assert get(found, "orc_job_latency_ms_count", tenant="default", job_kind="job") == 3
    assert get(found, "orc_job_latency_ms_sum", tenant="default", job_kind="job") > 0
    assert get(found, "sch_assignment_ms_count", policy="fifo", pool="default") == 3
    assert get(found, "sch_queue_depth", pool="default", tenant="default") == 0
    assert get(found, "wkm_create_worker_ms_count", provider="local", namespace="") == 3
    assert get(found, "exec_steps_total", step_type="run", result="success") == 3
    assert get(found, "exec_steps_total", step_type="run", result="failure") == 1
    assert get(found, "exec_step_duration_ms_count", step_type="run") == 4
    # Requests are labelled by route template, never by the path a client sent.
    assert get(found, "api_request_latency_ms_count", method="GET",
               route="/api/v1/things/{thing_id}", status="200") == 1  # fmt: skip
    assert get(found, "api_request_latency_ms_count", method="GET", route="unmatched",
               status="404") == 1  # fmt: skip
    assert "42" not in {v for (_, labels), _ in found.items() for _, v in labels}


async def test_openmetrics_exemplars_link_to_the_trace(served: Served, tmp_path: Path) -> None:
    run_id = await served.run(GREEN, tmp_path)
    async with served.client(accept="application/openmetrics-text; version=1.0.0") as c:
        r = await c.get("/metrics")
    assert r.headers["content-type"].startswith("application/openmetrics-text")
    assert f'trace_id="{trace_id_for(run_id)}"' in r.text


async def test_scrape_token(guarded: Served) -> None:
    async with guarded.client() as anonymous:
        r = await anonymous.get("/metrics")
    assert r.status_code == 401
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.headers["www-authenticate"] == "Bearer"
    assert r.json()["code"] == "SEC-TOK"
    async with guarded.client(READER) as wrong:
        assert (await wrong.get("/metrics")).status_code == 401  # API tokens are not scrape tokens
    async with guarded.client(SCRAPE) as prometheus:
        r = await prometheus.get("/metrics")
    assert r.status_code == 200
    assert "# TYPE orc_jobs_total counter" in r.text


async def test_default_run_resolution(guarded: Served, tmp_path: Path) -> None:
    run_id = await guarded.run(GREEN, tmp_path)
    async with guarded.client(READER) as c:
        r = await c.get("/api/v1/traces", params={"run": "last"})
        assert r.json()["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["traceId"] == (
            trace_id_for(run_id)
        )
        r = await c.get("/api/v1/traces", params={"run": "nope"})
        assert (r.status_code, r.json()["code"]) == (404, "ORC-VALID")


async def test_trace_of_a_run(served: Served, tmp_path: Path) -> None:
    run_id = await served.run(PIPELINE, tmp_path)
    async with served.client(READER) as c:
        r = await c.get("/api/v1/traces", params={"run": run_id[:6]})
        assert r.status_code == 200, r.text
        assert (await c.get("/api/v1/traces", params={"run": "last"})).json() == r.json()
    spans = r.json()["resourceSpans"][0]["scopeSpans"][0]["spans"]
    assert {s["traceId"] for s in spans} == {trace_id_for(run_id)}
    by_id = {s["spanId"]: s for s in spans}
    root = next(s for s in spans if s["parentSpanId"] == "")
    assert root["name"] == "telemetry"
    assert root["status"]["code"] == 2
    jobs = [s for s in spans if attrs(s)["faena.span"] == "job_run"]
    assert [(j["name"], j["status"]["code"]) for j in jobs] == [("build", 1), ("test", 2)]
    assert all(attrs(j)["faena.node.id"] == "local" for j in jobs)
    steps = [s for s in spans if attrs(s)["faena.span"] == "run_step"]
    assert [(s["name"], by_id[s["parentSpanId"]]["name"]) for s in steps] == [
        ("compile", "build"),
        ("unit", "test"),
        ("broken", "test"),
    ]
    broken = steps[-1]
    assert broken["status"]["code"] == 2
    assert attrs(broken)["faena.step.exit_code"] == "3"
    for span in spans:  # every span lies within its parent
        assert int(span["startTimeUnixNano"]) <= int(span["endTimeUnixNano"])
        parent = by_id.get(span["parentSpanId"])
        if parent is not None:
            assert int(parent["startTimeUnixNano"]) <= int(span["startTimeUnixNano"])
            assert int(span["endTimeUnixNano"]) <= int(parent["endTimeUnixNano"])
    assert not any(attrs(s).get("faena.in_progress") for s in spans)


async def test_traces_errors_are_problems(served: Served) -> None:
    async with served.client() as anonymous:
        r = await anonymous.get("/api/v1/traces", params={"run": "last"})
        assert (r.status_code, r.json()["code"]) == (401, "SEC-TOK")
    async with served.client(NOBODY) as nobody:
        r = await nobody.get("/api/v1/traces", params={"run": "last"})
        assert (r.status_code, r.json()["code"]) == (403, "ORC-AUTH")
    async with served.client(READER) as c:
        r = await c.get("/api/v1/traces")
        assert (r.status_code, r.json()["code"]) == (422, "ORC-VALID")
        assert r.headers["content-type"].startswith("application/problem+json")
        r = await c.get("/api/v1/traces", params={"run": "zzzzzz"})
        assert (r.status_code, r.json()["code"]) == (404, "ORC-VALID")


async def test_ui_jobs(served: Served, tmp_path: Path) -> None:
    first = await served.run(PIPELINE, tmp_path)
    second = await served.run(GREEN, tmp_path)
    async with served.client(READER) as c:
        body = (await c.get("/api/v1/ui/jobs")).json()
        assert [(j["run_id"], j["name"], j["state"]) for j in body["items"]] == [
            (second, "only", "SUCCEEDED"),
            (first, "build", "SUCCEEDED"),
            (first, "test", "FAILED"),
        ]
        assert body["has_more"] is False
        test = body["items"][2]
        assert test["pipeline"] == "telemetry" and test["run_state"] == "FAILED"
        assert test["attempt"] == 1 and test["node_id"] == "local"
        assert test["error_code"] == "EXEC-FAILED"
        assert test["duration_ms"] == pytest.approx(
            (test["finished_at"] - test["started_at"]) * 1000, abs=0.01
        )
        assert (test["steps_total"], test["steps_done"]) == (2, 2)
        assert test["trace_id"] == trace_id_for(first)
        failed = (await c.get("/api/v1/ui/jobs", params={"state": "FAILED"})).json()
        assert [j["name"] for j in failed["items"]] == ["test"]
        page = (await c.get("/api/v1/ui/jobs", params={"limit": 1, "offset": 1})).json()
        assert [j["name"] for j in page["items"]] == ["build"] and page["has_more"] is True
        bad = await c.get("/api/v1/ui/jobs", params={"state": "BOGUS"})
        assert (bad.status_code, bad.json()["code"]) == (422, "ORC-VALID")
    async with served.client(NOBODY) as nobody:
        assert (await nobody.get("/api/v1/ui/jobs")).status_code == 403
    async with served.client() as anonymous:
        found = samples((await anonymous.get("/metrics")).text)
    # The console's own latency metric, with the tenant of the caller's token (unknown when
    # the request was turned away before the handler: the bad state, the missing scope).
    assert get(found, "ui_latency_ms_count", endpoint="/api/v1/ui/jobs", tenant="acme") == 3
    assert get(found, "ui_latency_ms_count", endpoint="/api/v1/ui/jobs", tenant="unknown") == 2
