"""FailoverTransport: a request moves to the next replica when one refuses connections."""

from __future__ import annotations

import httpx
import pytest

from faena.agent.failover import FailoverTransport


class Replicas(httpx.AsyncBaseTransport):
    """Answers for the hosts that are up; refuses connections for the others, and lets
    those in ``dark`` time out (a host that is off)."""

    def __init__(self, up: set[str], dark: frozenset[str] = frozenset()) -> None:
        self.up = up
        self.dark = dark
        self.seen: list[tuple[str, str]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.seen.append((request.url.host, request.headers["Host"]))
        if request.url.host in self.dark:
            raise httpx.ConnectTimeout("timed out", request=request)
        if request.url.host not in self.up:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200, json={"host": request.url.host, "path": request.url.path})


async def test_requests_go_to_the_first_replica_while_it_answers() -> None:
    inner = Replicas({"a", "b"})
    transport = FailoverTransport(["http://a:1", "http://b:2"], inner)
    async with httpx.AsyncClient(base_url="http://a:1", transport=transport) as client:
        r = await client.get("/api/v1/x", params={"q": "1"})
    assert r.json() == {"host": "a", "path": "/api/v1/x"}
    assert inner.seen == [("a", "a:1")]


async def test_an_unreachable_replica_is_left_for_the_next_and_stays_left() -> None:
    inner = Replicas({"b"})
    transport = FailoverTransport(["http://a:1", "http://b:2"], inner)
    async with httpx.AsyncClient(base_url="http://a:1", transport=transport) as client:
        assert (await client.post("/api/v1/agent/heartbeat", json={})).json()["host"] == "b"
        assert (await client.get("/api/v1/agent/work")).json()["host"] == "b"
    assert inner.seen == [("a", "a:1"), ("b", "b:2"), ("b", "b:2")]
    assert transport.current == "http://b:2"


async def test_a_replica_whose_host_is_off_is_left_too() -> None:
    inner = Replicas({"b"}, dark=frozenset({"a"}))
    transport = FailoverTransport(["http://a:1", "http://b:2"], inner)
    async with httpx.AsyncClient(base_url="http://a:1", transport=transport) as client:
        for _ in range(3):
            assert (await client.get("/x")).json()["host"] == "b"
    assert [host for host, _ in inner.seen] == ["a", "b", "b", "b"]


async def test_when_every_replica_is_down_the_error_reaches_the_caller() -> None:
    transport = FailoverTransport(["http://a:1", "http://b:2"], Replicas(set()))
    async with httpx.AsyncClient(base_url="http://a:1", transport=transport) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get("/x")


class Follower(httpx.AsyncBaseTransport):
    """Host ``b`` forwards and names ``leader``; every host answers."""

    def __init__(self, leader: str) -> None:
        self.leader = leader
        self.seen: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request.url.host)
        headers = {"X-Faena-Leader": self.leader} if request.url.host == "b" else {}
        return httpx.Response(200, json={}, headers=headers)


async def test_a_follower_naming_a_known_leader_sends_the_next_requests_there() -> None:
    inner = Follower("http://a:1")
    transport = FailoverTransport(["http://b:2", "http://a:1"], inner)
    async with httpx.AsyncClient(base_url="http://b:2", transport=transport) as client:
        for _ in range(3):
            await client.get("/api/v1/agent/work")
    assert inner.seen == ["b", "a", "a"]


async def test_a_leader_the_agent_was_not_given_is_not_followed() -> None:
    inner = Follower("http://elsewhere:9")
    transport = FailoverTransport(["http://b:2", "http://a:1"], inner)
    async with httpx.AsyncClient(base_url="http://b:2", transport=transport) as client:
        for _ in range(2):
            await client.get("/x")
    assert inner.seen == ["b", "b"]
