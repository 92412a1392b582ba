"""Followers forward to the leader: every replica answers the whole API.

One replica leads orchestration (orchestration/leadership.py); the others serve from the
store what the store holds (the event stream, run lists, logs, traces, health, metrics)
and pass every other request, byte for byte and streamed both ways, to the leader at the
URL it recorded when it took the lease. While no replica leads (an election in progress)
or the leader cannot be reached, a forwarded request gets 503 ORC-INFRA with
``Retry-After``: clients and agents retry it, and the next leader answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from faena.api import problems

log = logging.getLogger(__name__)

FORWARDED_BY = "x-faena-forwarded-by"
# On a forwarded answer: where the leader is, for clients that can go there directly.
LEADER_HEADER = "x-faena-leader"
RETRY_AFTER = "1"
# Served by every replica from the store or its own process.
_LOCAL = re.compile(
    r"^/(healthz|readyz|metrics|openapi\.json|docs|redoc)$"
    r"|^/api/v1/(events|pipelines|traces)$"
    r"|^/api/v1/pipelines/[^/]+/logs$"
)
# Hop-by-hop headers (RFC 9110 7.6.1) and those the proxy sets itself.
_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
}
# Set again by this replica's own server on the way out.
_SET_HERE = {"date", "server"}
_LEADER_TTL = 1.0  # seconds a looked-up leader URL is trusted


def served_here(method: str, path: str) -> bool:
    """Whether a follower answers this request itself."""
    return method in ("GET", "HEAD") and _LOCAL.match(path) is not None


class LeaderForwarding:
    """ASGI middleware: pass through on the leader; forward on a follower."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        leading: Callable[[], bool],
        leader_url: Callable[[], Awaitable[str | None]],
        own_url: str,
        replica: str,
        on_build: Callable[[LeaderForwarding], None] = lambda _: None,
    ) -> None:
        on_build(self)  # Starlette builds middleware lazily: the owner learns of it here
        self.app = app
        self._leading = leading
        self._lookup = leader_url
        self._own = own_url.rstrip("/")
        self._replica = replica
        self._client: httpx.AsyncClient | None = None
        self._cached: tuple[float, str | None] = (0.0, None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or self._leading()
            or served_here(scope["method"], scope["path"])
        ):
            await self.app(scope, receive, send)
            return
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
        if any(k.lower() == FORWARDED_BY for k, _ in headers):
            # The replica it came from thinks this one leads: leadership is moving.
            await self._unavailable(scope, receive, send, "leadership is changing hands")
            return
        leader = await self._leader()
        if leader is None or leader == self._own:
            await self._unavailable(scope, receive, send, "no replica leads right now")
            return
        await self._forward(leader, scope, receive, send, headers)

    async def _leader(self) -> str | None:
        at, url = self._cached
        if time.monotonic() - at > _LEADER_TTL:
            try:
                url = await self._lookup()
            except Exception as exc:
                log.warning("cannot look up the leader: %s", exc)
                url = None
            url = url.rstrip("/") if url else None
            self._cached = (time.monotonic(), url)
        return url

    async def _forward(
        self,
        leader: str,
        scope: Scope,
        receive: Receive,
        send: Send,
        headers: list[tuple[str, str]],
    ) -> None:
        if self._client is None:
            self._client = httpx.AsyncClient(
                # No read timeout: long polls and debugging streams are quiet for long
                # stretches; a client that leaves ends the forwarded request instead.
                timeout=httpx.Timeout(10.0, read=None),
                # Every agent's long poll holds a connection: no cap on them.
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=100),
                follow_redirects=False,
            )
        query = scope.get("query_string", b"").decode("latin-1")
        url = leader + scope.get("raw_path", scope["path"].encode()).decode("latin-1")
        if query:
            url += "?" + query
        out = [(k, v) for k, v in headers if k.lower() not in _HOP]
        out.append((FORWARDED_BY, self._replica))
        has_body = any(k.lower() in ("content-length", "transfer-encoding") for k, _ in headers)
        request = self._client.build_request(
            scope["method"], url, headers=out, content=_body(receive) if has_body else None
        )
        try:
            response = await self._client.send(request, stream=True)
        except httpx.TransportError as exc:
            self._cached = (0.0, None)  # look again next time: a new leader may be up
            log.info("leader %s unreachable: %s", leader, exc)
            await self._unavailable(scope, receive, send, f"the leader ({leader}) is unreachable")
            return
        relay = asyncio.create_task(self._relay(leader, response, send))
        gone = asyncio.create_task(_disconnected(receive))
        try:
            await asyncio.wait({relay, gone}, return_when=asyncio.FIRST_COMPLETED)
            if not relay.done():
                relay.cancel()  # the client left: so does the request to the leader
            with contextlib.suppress(asyncio.CancelledError):
                await relay
        finally:
            gone.cancel()
            await response.aclose()

    async def _relay(self, leader: str, response: httpx.Response, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": response.status_code,
                "headers": [
                    *(
                        (k.encode("latin-1"), v.encode("latin-1"))
                        for k, v in response.headers.multi_items()
                        if k.lower() not in _HOP and k.lower() not in _SET_HERE
                    ),
                    (LEADER_HEADER.encode(), leader.encode("latin-1")),
                ],
            }
        )
        try:
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except httpx.TransportError as exc:
            # Not completed on purpose: the server then closes the connection, and the
            # client sees a cut-short answer rather than a whole one.
            log.warning("leader %s went away mid-response: %s", leader, exc)
            return
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _unavailable(self, scope: Scope, receive: Receive, send: Send, why: str) -> None:
        response = problems.problem(503, "ORC-INFRA", f"{why}; retry shortly", retry=True)
        response.headers["Retry-After"] = RETRY_AFTER
        await response(scope, receive, send)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()


async def _disconnected(receive: Receive) -> None:
    """Return when the client goes away (what is left of its body is not wanted)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def _body(receive: Receive) -> AsyncIterator[bytes]:
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            return
        chunk: Any = message.get("body", b"")
        if chunk:
            yield bytes(chunk)
        if not message.get("more_body", False):
            return
