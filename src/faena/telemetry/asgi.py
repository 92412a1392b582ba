"""ASGI middleware timing HTTP requests into ``api_request_latency_ms`` and ``ui_latency_ms``.

Requests are labelled by their route template (``/api/v1/pipelines/{run_ref}``), never by
the raw path, so label cardinality stays bounded whatever clients send.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from faena.telemetry.metrics import UNMATCHED_ROUTE, Metrics

UI_PREFIX = "/api/v1/ui/"
# A console handler sets ``request.state.<TENANT_STATE>`` so its latency gets the tenant.
TENANT_STATE = "faena_tenant"


class RequestMetrics:
    """Install with ``api.add_middleware(RequestMetrics, metrics=metrics)``.

    Latency is measured to the response headers: for SSE streams that is the time to the
    first byte, not the stream's life.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        # Created here, so a handler's ``request.state`` writes land in a dict we hold even
        # if a layer below copies the scope.
        state: dict[str, Any] = scope.setdefault("state", {})
        done = False

        def observe(status: int) -> None:
            nonlocal done
            done = True
            ms = (time.perf_counter() - start) * 1000.0
            route = _route(scope)
            self.metrics.observe_request(scope.get("method", ""), route, status, ms)
            if route.startswith(UI_PREFIX):
                self.metrics.observe_ui(route, str(state.get(TENANT_STATE) or "unknown"), ms)

        async def timed_send(message: Message) -> None:
            if message["type"] == "http.response.start" and not done:
                observe(int(message["status"]))
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        except Exception:
            if not done:
                observe(500)  # the server's error middleware answers 500 above us
            raise


def _route(scope: Scope) -> str:
    path = getattr(scope.get("route"), "path", None)
    return path if isinstance(path, str) and path else UNMATCHED_ROUTE
