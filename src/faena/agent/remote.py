"""``faena agent``: a node that takes jobs from a control plane over HTTP.

It registers its node (labels, slots, capacity), heartbeats, long-polls its mailbox for
assignments and revocations, and runs each job through a JobRunner whose reports travel
over HTTP. Through a server restart it keeps running its jobs, registers again under the
same node id, and re-sends whatever the server did not acknowledge.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httpx

from faena import __version__
from faena.agent.failover import FailoverTransport
from faena.agent.http_control_plane import (
    HttpControlPlane,
    NodeUnknown,
    Refused,
    Rejected,
    detail,
)
from faena.agent.runner import JobRunner
from faena.domain.errors import FaenaError
from faena.workers.port import OutputLine, WorkerProvider

log = logging.getLogger(__name__)

POLL_WAIT = 25.0


@dataclass(frozen=True)
class AgentConfig:
    server: str
    token: str
    name: str
    labels: tuple[str, ...] = ()
    slots: int = 1
    capacity: dict[str, str] = field(default_factory=dict)
    # Other replicas of the same control plane, tried in turn when one is unreachable.
    fallbacks: tuple[str, ...] = ()


class RemoteAgent:
    def __init__(
        self,
        config: AgentConfig,
        provider: WorkerProvider,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        prepare: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.config = config
        self._prepare = prepare
        self.keep_open: object = None
        self._provider = provider
        if transport is None and config.fallbacks:
            transport = FailoverTransport([config.server, *config.fallbacks])
        self._client = httpx.AsyncClient(
            base_url=config.server.rstrip("/"),
            headers={"Authorization": f"Bearer {config.token}"},
            timeout=httpx.Timeout(10.0, read=POLL_WAIT + 10.0),
            transport=transport,
        )
        self.node_id = ""
        self.interval = 5.0
        self._cursor: str | None = None
        self._registering = asyncio.Lock()
        self.control = HttpControlPlane(
            self._client,
            lambda: self.node_id,
            on_revoke=self._revoke,
            on_unknown_node=self._reregister,
            on_refused=self._refuse,
        )
        self.runner = JobRunner(provider, self.control, labels=config.labels)
        self._jobs: dict[str, asyncio.Task[None]] = {}
        self._job_ids: dict[str, str] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._execs: set[str] = set()
        self._debugging: set[asyncio.Task[None]] = set()
        self.refused: Refused | None = None
        self._refused = asyncio.Event()

    def _refuse(self, exc: Refused) -> None:
        if self._stopping:
            log.info("not sent after leaving: %s", exc)
            return
        if self.refused is None:
            self.refused = exc
            log.error("the server refuses this agent: %s", exc)
        self._refused.set()

    async def _reregister(self) -> bool:
        """Register again after a 404; False once the agent is leaving or refused."""
        if self._stopping or self.refused is not None:
            return False
        await self.register()
        return True

    async def register(self) -> None:
        """Register the node (again, keeping its id); retries until the server answers."""
        async with self._registering:
            body = {
                "node_id": self.node_id or None,
                "name": self.config.name,
                "labels": list(self.config.labels),
                "slots": self.config.slots,
                "capacity": self.config.capacity,
                "provider": self._provider.name,
                "version": __version__,
            }
            answer = await self.control.call("POST", "/api/v1/agent/register", json=body)
            first = not self.node_id
            self.node_id = answer["node_id"]
            self.interval = float(answer.get("heartbeat_interval", 5.0))
            log.info(
                "%s node %s", "registered as" if first else "registered again as", self.node_id
            )

    async def start(self) -> None:
        if self._prepare is not None:
            await self._prepare()
        await self.register()
        self.control.start()
        self._tasks = [
            asyncio.create_task(self._heartbeat_forever(), name="agent-heartbeat"),
            asyncio.create_task(self._poll_forever(), name="agent-poll"),
        ]

    async def run_forever(self) -> None:
        """Run until stopped; raises Refused when the server refuses the agent for good."""
        await self.start()
        refused = asyncio.create_task(self._refused.wait())
        try:
            await asyncio.wait([*self._tasks, refused], return_when=asyncio.FIRST_COMPLETED)
        finally:
            refused.cancel()
        if self.refused is not None:
            raise self.refused
        for t in self._tasks:
            if t.done() and not t.cancelled() and t.exception() is not None:
                raise t.exception()  # type: ignore[misc]

    async def stop(self) -> None:
        """Leave: the server fails our jobs over first, then they are stopped here."""
        self._stopping = True
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self.node_id:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._leave(), 10)
        for assignment_id in list(self._jobs):
            await self.runner.revoke(assignment_id)
        if self._jobs:
            await asyncio.wait(list(self._jobs.values()), timeout=30)
        await self.control.close()
        await self._client.aclose()

    async def _leave(self) -> None:
        r = await self._client.post("/api/v1/agent/deregister", json={"node_id": self.node_id})
        if r.status_code >= 300 and r.status_code != 404:
            log.warning("deregister answered %s", r.status_code)

    @property
    def running(self) -> dict[str, str]:
        """Assignment id -> job id of the jobs running here."""
        return {a: self._job_ids[a] for a in self._jobs}

    async def _revoke(self, assignment_id: str) -> None:
        await self.runner.revoke(assignment_id)

    async def _heartbeat_forever(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                answer = await self._client.post(
                    "/api/v1/agent/heartbeat",
                    json={
                        "node_id": self.node_id,
                        "running": self.running,
                        "slots": self.config.slots,
                        "capacity": self.config.capacity,
                    },
                )
            except httpx.TransportError as exc:
                log.warning("heartbeat failed: %s", exc)
                continue
            if answer.status_code == 404:
                if not await self._reregister():
                    return
            elif answer.status_code in (401, 403):
                self._refuse(Refused(detail(answer)))
                return
            elif answer.status_code < 300:
                for assignment_id in answer.json().get("revoke", []):
                    await self.runner.revoke(assignment_id)
            else:
                log.warning("heartbeat answered %s: %s", answer.status_code, answer.text[:300])

    async def _poll_forever(self) -> None:
        delay = 0.1
        while not self._stopping:
            params: dict[str, str | float] = {"node_id": self.node_id, "wait": POLL_WAIT}
            if self._cursor:
                params["cursor"] = self._cursor
            try:
                r = await self._client.get("/api/v1/agent/work", params=params)
            except httpx.TransportError as exc:
                log.warning("poll failed (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 5.0)
                continue
            if r.status_code == 404:
                self._cursor = None
                if not await self._reregister():
                    return
                continue
            if r.status_code in (401, 403):
                self._refuse(Refused(detail(r)))
                return
            if r.status_code >= 300:
                log.warning("poll answered %s; retrying in %.1fs", r.status_code, delay)
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 5.0)
                continue
            delay = 0.1
            answer = r.json()
            self._cursor = answer["cursor"]
            for m in answer["messages"]:
                if m["kind"] == "assign":
                    self._take(m["assignment_id"], m["job_id"])
                elif m["kind"] == "revoke":
                    await self.runner.revoke(m["assignment_id"])
                elif m["kind"] == "resume":
                    await self.runner.resume(m["assignment_id"])
                elif m["kind"] == "exec" and m["exec_id"] not in self._execs:
                    self._execs.add(m["exec_id"])
                    task = asyncio.create_task(self._debug_exec(m))
                    self._debugging.add(task)
                    task.add_done_callback(self._debugging.discard)

    async def _debug_exec(self, m: dict[str, str]) -> None:
        exec_id, job_id = m["exec_id"], m["job_id"]

        async def sink(line: OutputLine) -> None:
            self.control.exec_output(exec_id, job_id, [line])

        try:
            code = await self.runner.debug_exec(m["assignment_id"], exec_id, m["command"], sink)
        except FaenaError as exc:
            await sink(OutputLine("stderr", f"[faena] {exc.message}", time.time()))
            code = 125
        self.control.exec_finished(exec_id, job_id, code)

    def _take(self, assignment_id: str, job_id: str) -> None:
        if assignment_id in self._jobs:
            return  # delivered twice
        self._job_ids[assignment_id] = job_id
        task = asyncio.create_task(self._run(assignment_id, job_id), name=f"job:{job_id}")
        self._jobs[assignment_id] = task

    async def _run(self, assignment_id: str, job_id: str) -> None:
        try:
            await self.runner.run(assignment_id, job_id)
        except (Rejected, NodeUnknown) as exc:
            log.error("job %s: %s", job_id, exc)
        except Exception:
            log.exception("job %s: the agent failed", job_id)
        finally:
            self._jobs.pop(assignment_id, None)
            self._job_ids.pop(assignment_id, None)
