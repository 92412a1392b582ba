"""An HTTP transport that moves to the next control-plane replica when one is unreachable.

An agent is given every replica's URL (``--server A,B``); any replica serves it, since
followers forward to the leader. When the one in use refuses connections (it died), the
same request goes to the next one at once; the caller's back-off only starts once every
replica has failed. Only failures to connect move on (refused, or timed out: a host that
is off): nothing of the request was sent.

A follower that forwarded a request names the leader (``X-Faena-Leader``); when the leader
is one of the given URLs, the next requests go to it directly, saving the follower a hop
for every poll and report. A URL the agent was not given is never followed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import httpx

log = logging.getLogger(__name__)
LEADER_HEADER = "x-faena-leader"  # api/forwarding.py sets it


class FailoverTransport(httpx.AsyncBaseTransport):
    """Sends each request to the current replica, moving on from one that cannot be reached."""

    def __init__(
        self, servers: Sequence[str], inner: httpx.AsyncBaseTransport | None = None
    ) -> None:
        if not servers:
            raise ValueError("no servers")
        self._servers = [httpx.URL(s) for s in servers]
        self._inner = inner or httpx.AsyncHTTPTransport()
        self._current = 0

    @property
    def current(self) -> str:
        return str(self._servers[self._current])

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        for tried in range(len(self._servers)):
            base = self._servers[self._current]
            request.url = request.url.copy_with(scheme=base.scheme, host=base.host, port=base.port)
            request.headers["Host"] = base.netloc.decode("ascii")
            try:
                response = await self._inner.handle_async_request(request)
            except (httpx.ConnectError, httpx.ConnectTimeout):  # refused, or a host gone dark
                if tried == len(self._servers) - 1:
                    raise
                self._current = (self._current + 1) % len(self._servers)
                log.warning("%s unreachable; trying %s", base, self._servers[self._current])
                continue
            self._follow(response.headers.get(LEADER_HEADER))
            return response
        raise AssertionError("unreachable")

    def _follow(self, leader: str | None) -> None:
        if not leader:
            return
        try:
            url = httpx.URL(leader)
        except httpx.InvalidURL:
            return
        for i, server in enumerate(self._servers):
            if i != self._current and (server.scheme, server.host, server.port) == (
                url.scheme,
                url.host,
                url.port,
            ):
                log.info("going to the leader %s directly", server)
                self._current = i
                return

    async def aclose(self) -> None:
        await self._inner.aclose()
