"""A FastAPI app served by a real uvicorn on a free 127.0.0.1 port, for a test's duration,
and what the API tests ask of it."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import uvicorn

from faena.app import App, build_server
from faena.settings import Settings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def served(api: Any) -> AsyncIterator[str]:
    """Serve ``api`` (its lifespan included); yields the base URL, stops it on exit."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(api, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    task = asyncio.create_task(server.serve())
    async with asyncio.timeout(20):
        while not server.started:
            if task.done():
                task.result()  # a failed start-up raises here
            await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@asynccontextmanager
async def server_client(
    settings: Settings, token: str, *, with_agent: bool = True
) -> AsyncIterator[tuple[httpx.AsyncClient, App]]:
    """``faena server``'s app (build_server) served, and a client holding ``token``."""
    api, system, created = build_server(settings, token, with_agent=with_agent)
    assert created is None  # the token given is the admin token: none is made up
    headers = {"Authorization": f"Bearer {token}"}
    async with served(api) as url, httpx.AsyncClient(base_url=url, headers=headers) as c:
        yield c, system


async def wait_done(client: httpx.AsyncClient, run_id: str) -> dict[str, Any]:
    """The run's row once it has finished (30 s at most)."""
    async with asyncio.timeout(30):
        while True:
            body: dict[str, Any] = (await client.get(f"/api/v1/pipelines/{run_id}")).json()
            if body["state"] in ("SUCCEEDED", "FAILED", "CANCELLED"):
                return body
            await asyncio.sleep(0.05)
