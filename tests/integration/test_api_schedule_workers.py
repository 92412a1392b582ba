"""POST /schedule and the warm workers (/workers) on a real uvicorn, driven with httpx.

The app is ``build_server``'s, as ``faena server`` runs it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_server import server_client, wait_done

from faena.app import NODE_ID, App
from faena.bus.memory import MemoryBus
from faena.domain.events import make_event
from faena.scheduling.fifo import FifoScheduler, NodeSlots
from faena.settings import Settings

TOKEN = "test-admin-token"
READER_SCOPES = frozenset({"job:read", "worker:read"})

UNPLACEABLE = """name: gpu
jobs:
  train:
    runs-on: gpu
    steps: [{run: 'true'}]
"""
BUSY = """name: busy
jobs:
  slow:
    steps: [{run: sleep 60}]
  other:
    steps: [{run: 'true'}]
  later:
    needs: slow
    steps: [{run: 'true'}]
"""
HELLO = """name: hello
jobs:
  hello:
    steps:
      - run: echo "hello from $FAENA_WORKER_ID"
      - run: echo "second step" >&2
"""


class Server:
    def __init__(self, client: httpx.AsyncClient, system: App, reader: str) -> None:
        self.client = client
        self.system = system
        self.pool = system.pool
        self.reader = reader  # a token holding READER_SCOPES only

    def other(self, token: str | None) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.AsyncClient(base_url=str(self.client.base_url), headers=headers)


@asynccontextmanager
async def serve(
    tmp_path: Path, *, with_agent: bool, jobs: int = 2, max_warm: int = 16
) -> AsyncIterator[Server]:
    """The server ``faena server`` runs (build_server), with a smaller warm pool."""
    settings = Settings(home=tmp_path / "home", jobs=jobs)
    async with server_client(settings, TOKEN, with_agent=with_agent) as (c, system):
        system.pool.max_warm = max_warm
        made = await c.post("/api/v1/tokens", json={"name": "reader",
                                                   "scopes": sorted(READER_SCOPES)})  # fmt: skip
        assert made.status_code == 201, made.text
        yield Server(c, system, made.json()["token"])


async def submit(client: httpx.AsyncClient, pipeline: str) -> dict[str, Any]:
    r = await client.post("/api/v1/pipelines", content=pipeline)
    assert r.status_code == 201, r.text
    run: dict[str, Any] = (await client.get(f"/api/v1/pipelines/{r.json()['run_id']}")).json()
    return run


def job_id(run: dict[str, Any], name: str) -> str:
    return next(str(j["job_id"]) for j in run["jobs"] if j["name"] == name)


async def job(client: httpx.AsyncClient, jid: str) -> dict[str, Any]:
    body: dict[str, Any] = (await client.get(f"/api/v1/jobs/{jid}")).json()
    return body


async def wait_job(client: httpx.AsyncClient, jid: str, *states: str) -> dict[str, Any]:
    async with asyncio.timeout(30):
        while True:
            row = await job(client, jid)
            if row["state"] in states:
                return row
            await asyncio.sleep(0.05)


# -- POST /schedule ------------------------------------------------------------------------


async def test_dry_run_explains_an_unplaceable_job(tmp_path: Path) -> None:
    async with serve(tmp_path, with_agent=False) as s:
        c = s.client
        run = await submit(c, UNPLACEABLE)
        train = job_id(run, "train")
        await wait_job(c, train, "PENDING")

        r = await c.post("/api/v1/schedule", json={"job_id": train, "dry_run": True})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["dry_run"] is True and body["placed"] is False and body["changed"] is False
        assert body["node_id"] is None and body["state"] == "PENDING"
        assert "no node has all the labels gpu" in body["reason"]

        r = await c.post("/api/v1/schedule", json={"job_id": train})
        assert r.status_code == 409, r.text
        assert r.headers["content-type"].startswith("application/problem+json")
        assert r.json()["code"] == "SCH-CAP" and "gpu" in r.json()["detail"]
        assert (await job(c, train))["state"] == "PENDING"  # still queued, nothing changed

        # A node with the label arrives: the scheduler places the job by itself.
        reg = await c.post(
            "/api/v1/agent/register", json={"name": "gpu-box", "labels": ["gpu"], "slots": 1}
        )
        assert reg.status_code == 201, reg.text
        node = reg.json()["node_id"]
        await wait_job(c, train, "SCHEDULED")
        for dry_run in (True, False, False):
            r = await c.post("/api/v1/schedule", json={"job_id": train, "dry_run": dry_run})
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["placed"] is True and body["changed"] is False
            assert body["node_id"] == node and body["assignment_id"]


async def test_schedule_is_idempotent_and_refuses_jobs_not_queued(tmp_path: Path) -> None:
    async with serve(tmp_path, with_agent=True, jobs=1) as s:
        c = s.client
        run = await submit(c, BUSY)
        slow, other, later = (job_id(run, n) for n in ("slow", "other", "later"))
        await wait_job(c, slow, "RUNNING")
        await wait_job(c, other, "PENDING")

        # The only slot is taken: `other` stays queued, with the reason.
        r = await c.post("/api/v1/schedule", json={"job_id": other, "dry_run": True})
        assert r.status_code == 200 and r.json()["reason"] == "all 1 fitting node(s) are busy"
        r = await c.post("/api/v1/schedule", json={"job_id": other})
        assert r.status_code == 409 and r.json()["code"] == "SCH-CAP", r.text

        # A placed job answers where it is, every time, and nothing changes.
        row = await job(c, slow)
        answers = [(await c.post("/api/v1/schedule", json={"job_id": slow})) for _ in range(2)]
        for a in answers:
            assert a.status_code == 200, a.text
            assert a.json()["node_id"] == NODE_ID == row["node_id"]
            assert a.json()["assignment_id"] == row["assignment_id"]
            assert a.json()["changed"] is False and a.json()["state"] == "RUNNING"
        assert (await job(c, slow))["attempt"] == row["attempt"]

        # Waiting on needs: not queued.
        r = await c.post("/api/v1/schedule", json={"job_id": later})
        assert r.status_code == 409 and r.json()["code"] == "ORC-STATE"
        assert "WAITING" in r.json()["detail"]
        r = await c.post("/api/v1/schedule", json={"job_id": run["run_id"] + ".99"})
        assert r.status_code == 404
        r = await c.post("/api/v1/schedule", json={"job_id": "nope"})
        assert r.status_code == 404
        r = await c.post("/api/v1/schedule", json={"job_id": slow, "extra": 1})
        assert r.status_code == 422 and r.json()["code"] == "ORC-VALID"

        await c.post(f"/api/v1/pipelines/{run['run_id']}/cancel")
        await wait_done(c, run["run_id"])
        # Finished: not queued any more.
        r = await c.post("/api/v1/schedule", json={"job_id": slow, "dry_run": True})
        assert r.status_code == 409 and r.json()["code"] == "ORC-STATE"


async def test_place_now_takes_a_queued_job_ahead_of_the_queue() -> None:
    """The scheduler's side: a queued job a node can take is placed now, once."""

    class Recorder:
        def __init__(self) -> None:
            self.placed: list[tuple[str, str]] = []

        async def create_assignment(
            self, job_id: str, attempt: int, node_id: str, policy: str
        ) -> str | None:
            self.placed.append((job_id, node_id))
            return f"a-{job_id}"

    bus = MemoryBus()
    await bus.start()
    recorder = Recorder()
    sched = FifoScheduler(bus, recorder)
    await sched.start()
    try:
        for jid, labels in (("r.1", ["gpu"]), ("r.2", []), ("r.3", [])):
            payload = {"job_id": jid, "attempt": 1, "runs_on": labels, "spec_hash": "h"}
            await bus.publish([make_event("ci.job.v1.requested", payload, correlation_id="r")])
        async with asyncio.timeout(5):
            while sched.queued < 3:
                await asyncio.sleep(0.01)
        assert sched.where("r.3") == (None, "no node has all the labels (none)")
        # A node the queue has not seen yet (added without a placing pass).
        sched.nodes["n1"] = NodeSlots("n1", 1, None)
        assert sched.where("r.3") == ("n1", None)
        assert recorder.placed == []  # a dry run changes nothing
        assert await sched.place_now("r.3") == ("n1", None)
        assert recorder.placed == [("r.3", "n1")]
        assert await sched.place_now("r.3") == ("n1", None)  # idempotent
        assert recorder.placed == [("r.3", "n1")]
        assert sched.queued_job("r.3") is None and sched.placed_on("r.3") == "n1"
        node, reason = await sched.place_now("r.2")
        assert node is None and reason == "all 1 fitting node(s) are busy"
        assert sched.queued_job("r.2") == (1, frozenset())
        assert await sched.place_now("r.9") == (None, "job r.9 is not in the queue")
    finally:
        await sched.close()
        await bus.close()


# -- auth ----------------------------------------------------------------------------------


async def test_auth_errors(tmp_path: Path) -> None:
    async with serve(tmp_path, with_agent=True) as s:
        async with s.other(None) as anonymous:
            for method, path in (
                ("POST", "/api/v1/schedule"),
                ("POST", "/api/v1/workers"),
                ("GET", "/api/v1/workers"),
                ("DELETE", "/api/v1/workers/w1"),
                ("GET", "/api/v1/workers/w1/logs"),
            ):
                r = await anonymous.request(method, path, json={"job_id": "x.1"})
                assert r.status_code == 401, (method, path, r.text)
                assert r.json()["code"] == "SEC-TOK"
                assert r.headers["www-authenticate"] == "Bearer"
        async with s.other("not-a-token") as bad:
            assert (await bad.get("/api/v1/workers")).status_code == 401
        async with s.other(s.reader) as reader:
            for method, path, body in (
                ("POST", "/api/v1/schedule", {"job_id": "x.1", "dry_run": True}),
                ("POST", "/api/v1/workers", {}),
                ("DELETE", "/api/v1/workers/w1", None),
            ):
                r = await reader.request(method, path, json=body)
                assert r.status_code == 403, (method, path, r.text)
                assert r.json()["code"] == "ORC-AUTH"
            assert (await reader.get("/api/v1/workers")).status_code == 200
            assert (await reader.get("/api/v1/workers/w1")).status_code == 404
        assert s.pool.listing() == []


# -- workers -------------------------------------------------------------------------------


async def test_workers_without_a_local_node(tmp_path: Path) -> None:
    async with serve(tmp_path, with_agent=False) as s:
        c = s.client
        r = await c.post("/api/v1/workers", json={"worker_id": "w1", "pool": "local"})
        assert r.status_code == 409 and r.json()["code"] == "ORC-STATE"
        assert "runs no jobs itself" in r.json()["detail"]
        listed = (await c.get("/api/v1/workers")).json()
        assert listed == {"node_id": None, "items": [], "providers": []}
        r = await c.delete("/api/v1/workers/w1")
        assert r.status_code == 200 and r.json()["ended"] is False
        assert (await c.get("/api/v1/workers/w1")).status_code == 404
        assert (await c.get("/api/v1/workers/w1/logs")).status_code == 404


async def test_the_listing_names_the_providers_and_their_breakers(tmp_path: Path) -> None:
    async with serve(tmp_path, with_agent=True) as s:
        r = await s.client.post("/api/v1/workers", json={"worker_id": "warm-p"})
        assert r.status_code == 201, r.text
        body = (await s.client.get("/api/v1/workers")).json()
        # The fields clients knew are unchanged; ``providers`` is new.
        assert body["node_id"] == NODE_ID
        assert [w["worker_id"] for w in body["items"]] == ["warm-p"]
        # build_server does not wrap its provider in a ResilientProvider (yet): no breaker.
        assert body["providers"] == [{"name": "local", "breaker": None, "pools": ["local"]}]


async def test_create_and_end_workers(tmp_path: Path) -> None:
    async with serve(tmp_path, with_agent=True, max_warm=2) as s:
        c = s.client
        r = await c.post("/api/v1/workers", json={"worker_id": "warm-1", "pool": "local"})
        assert r.status_code == 201, r.text
        w = r.json()
        assert w["worker_id"] == "warm-1" and w["state"] == "idle"
        assert w["provider"] == "local" and w["node_id"] == NODE_ID and w["job_id"] is None
        workspace = s.system.settings.workspaces / w["provider_worker_id"] / "workspace"
        assert workspace.is_dir()
        again = await c.post("/api/v1/workers", json={"worker_id": "warm-1"})
        assert again.status_code == 200 and again.json()["created_at"] == w["created_at"]

        generated = await c.post("/api/v1/workers", json={})
        assert generated.status_code == 201 and generated.json()["worker_id"].startswith("w-")
        full = await c.post("/api/v1/workers", json={"worker_id": "warm-3"})
        assert full.status_code == 409 and full.json()["code"] == "ORC-STATE", full.text
        bad_pool = await c.post("/api/v1/workers", json={"pool": "docker"})
        assert bad_pool.status_code == 422 and bad_pool.json()["code"] == "ORC-VALID"
        bad_id = await c.post("/api/v1/workers", json={"worker_id": "../x"})
        assert bad_id.status_code == 422

        listed = (await c.get("/api/v1/workers")).json()
        assert [i["worker_id"] for i in listed["items"]] == [
            "warm-1",
            generated.json()["worker_id"],
        ]
        assert (await c.get("/api/v1/workers/warm-1")).json()["state"] == "idle"

        ended = await c.delete("/api/v1/workers/warm-1")
        assert ended.status_code == 200 and ended.json() == {
            "worker_id": "warm-1",
            "ended": True,
            "state": "ended",
        }
        assert not workspace.exists()
        again_ended = await c.delete("/api/v1/workers/warm-1")
        assert again_ended.status_code == 200 and again_ended.json()["ended"] is False
        unknown = await c.delete("/api/v1/workers/nobody")
        assert unknown.status_code == 200 and unknown.json()["ended"] is False
        assert (await c.get("/api/v1/workers/nobody")).status_code == 404
        assert (await c.get("/api/v1/workers/nobody/logs")).status_code == 404
        # One live warm worker left: room for another.
        assert (await c.post("/api/v1/workers", json={"worker_id": "warm-3"})).status_code == 201


async def test_a_job_runs_in_a_prewarmed_worker_and_its_logs_are_there(tmp_path: Path) -> None:
    async with serve(tmp_path, with_agent=True, jobs=1) as s:
        c = s.client
        r = await c.post("/api/v1/workers", json={"worker_id": "warm-1", "pool": "local"})
        assert r.status_code == 201, r.text
        idle_logs = await c.get("/api/v1/workers/warm-1/logs")
        assert idle_logs.status_code == 200 and idle_logs.json()["lines"] == []

        run = await submit(c, HELLO)
        done = await wait_done(c, run["run_id"])
        assert done["state"] == "SUCCEEDED", done
        row = done["jobs"][0]

        w = (await c.get("/api/v1/workers/warm-1")).json()
        assert w["state"] == "finished" and w["job_id"] == row["job_id"]
        assert w["run_id"] == run["run_id"] and w["job_worker_id"] == row["worker_id"]
        # The job's own worker id leads to the same warm worker.
        assert (await c.get(f"/api/v1/workers/{row['worker_id']}")).json() == w
        events = await s.system.store.run_events(run["run_id"])
        created = [e.event for e in events if e.event.subject == "ci.worker.v1.created"]
        assert created[0].payload["runtime_spec"]["pool_worker_id"] == "warm-1"

        logs = await c.get("/api/v1/workers/warm-1/logs")
        assert logs.status_code == 200, logs.text
        body = logs.json()
        assert body["job_id"] == row["job_id"] and body["attempt"] == 1
        texts = [(ln["step_index"], ln["stream"], ln["text"]) for ln in body["lines"]]
        assert (0, "stdout", f"hello from {w['provider_worker_id']}") in texts
        assert (1, "stderr", "second step") in texts
        assert (await c.get(f"/api/v1/workers/{row['worker_id']}/logs")).json() == body
        tail = await c.get("/api/v1/workers/warm-1/logs", params={"after": body["next_after"]})
        assert tail.json()["lines"] == []

        # No idle worker left: the next job gets a worker of its own; its logs are found too.
        second = await wait_done(c, (await submit(c, HELLO))["run_id"])
        own = second["jobs"][0]["worker_id"]
        assert own and own != row["worker_id"]
        assert (await c.get(f"/api/v1/workers/{own}")).status_code == 404
        own_logs = (await c.get(f"/api/v1/workers/{own}/logs")).json()
        assert own_logs["lines"][0]["text"] == f"hello from {own}"

        # A finished warm worker can be ended (retired), once.
        assert (await c.delete("/api/v1/workers/warm-1")).json()["ended"] is True
        assert (await c.delete("/api/v1/workers/warm-1")).json()["ended"] is False
        assert (await c.get("/api/v1/workers/warm-1/logs")).json()["lines"] == body["lines"]


async def test_a_busy_worker_cannot_be_ended(tmp_path: Path) -> None:
    async with serve(tmp_path, with_agent=True, jobs=1) as s:
        c = s.client
        assert (await c.post("/api/v1/workers", json={"worker_id": "warm-1"})).status_code == 201
        run = await submit(c, "jobs:\n  slow:\n    steps: [{run: sleep 60}]\n")
        await wait_job(c, job_id(run, "slow"), "RUNNING")
        async with asyncio.timeout(10):
            while (await c.get("/api/v1/workers/warm-1")).json()["state"] != "busy":
                await asyncio.sleep(0.05)
        r = await c.delete("/api/v1/workers/warm-1")
        assert r.status_code == 409 and r.json()["code"] == "ORC-STATE", r.text
        await c.post(f"/api/v1/pipelines/{run['run_id']}/cancel")
        assert (await wait_done(c, run["run_id"]))["state"] == "CANCELLED"
        assert (await c.get("/api/v1/workers/warm-1")).json()["state"] == "finished"


@pytest.mark.parametrize("path", ["/api/v1/schedule", "/api/v1/workers"])
async def test_routes_are_in_the_openapi_document(tmp_path: Path, path: str) -> None:
    async with serve(tmp_path, with_agent=False) as s:
        spec = (await s.client.get("/openapi.json")).json()
        assert path in spec["paths"]
