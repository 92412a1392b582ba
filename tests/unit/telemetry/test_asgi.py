"""The request-timing middleware: route templates, errors, streams."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
from fastapi import FastAPI
from fastapi.responses import StreamingResponse

from faena.api import problems
from faena.telemetry.asgi import RequestMetrics
from faena.telemetry.metrics import Metrics


def app_with(metrics: Metrics) -> FastAPI:
    api = FastAPI()
    problems.install(api)
    api.add_middleware(RequestMetrics, metrics=metrics)

    @api.get("/boom/{n}")
    async def boom(n: int) -> None:
        raise RuntimeError(f"boom {n}")

    @api.get("/stream")
    async def stream() -> StreamingResponse:
        async def body() -> AsyncIterator[str]:
            yield "first\n"
            # The rest comes only once the request is timed: a middleware that timed the
            # whole stream would make this wait run out.
            for _ in range(500):
                if count(metrics, method="GET", route="/stream", status="200"):
                    yield "later\n"
                    return
                await asyncio.sleep(0.01)
            yield "never timed\n"

        return StreamingResponse(body(), media_type="text/event-stream")

    return api


def count(m: Metrics, **labels: str) -> float | None:
    return m.registry.get_sample_value("api_request_latency_ms_count", labels)


async def test_errors_and_streams_are_timed_by_template() -> None:
    m = Metrics()
    transport = httpx.ASGITransport(app=app_with(m), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        assert (await c.get("/boom/7")).status_code == 500
        assert (await c.get("/boom/x")).status_code == 422
        assert (await c.post("/boom/7")).status_code == 405
        assert (await c.get("/stream")).text == "first\nlater\n"
    assert count(m, method="GET", route="/boom/{n}", status="500") == 1
    assert count(m, method="GET", route="/boom/{n}", status="422") == 1
    assert count(m, method="POST", route="/boom/{n}", status="405") == 1
    # A stream is timed to its headers, not over its whole life (see the stream above).
    assert count(m, method="GET", route="/stream", status="200") == 1
