"""The ControlPlane port over HTTP: what a remote agent talks to.

Reports go into an ordered outbox that one sender posts in batches, retrying with back-off
until the server answers (through restarts and network errors): nothing is lost and the
order is kept. The server answers a batch only once it is durable, and re-sent reports
change nothing there. ``job_finished`` returns once everything before it is delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any

import httpx

from faena.domain.assignment import Assignment, JobResult, StepResult, assignment_from_dict
from faena.workers.port import OutputLine

log = logging.getLogger(__name__)

BATCH = 500


class Rejected(Exception):
    """The server refused a request for good (4xx other than 404/408/429)."""


class NodeUnknown(Exception):
    """The server does not know this node (it restarted, or lost the node)."""


class Refused(Exception):
    """The server refuses this agent for good: a bad or revoked token (401), a node of
    another token (403), or a node that left. The agent stops; nothing is dropped."""


class HttpControlPlane:
    def __init__(
        self,
        client: httpx.AsyncClient,
        node_id: Callable[[], str],
        *,
        on_revoke: Callable[[str], Awaitable[None]],
        on_unknown_node: Callable[[], Awaitable[bool]],
        on_refused: Callable[[Refused], None] = lambda exc: None,
    ) -> None:
        self._client = client
        self._node_id = node_id
        self._on_revoke = on_revoke
        self._on_unknown_node = on_unknown_node
        self._on_refused = on_refused
        self._refused: Refused | None = None
        self._outbox: list[dict[str, Any]] = []
        self._wake = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self._chunks: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._send_forever(), name="agent-reports")

    async def close(self, timeout: float = 10.0) -> None:
        """Deliver what is queued (for up to ``timeout``), then stop."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.drain(), timeout)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def drain(self) -> None:
        """Return once every queued report is delivered."""
        while self._outbox:
            await self._drained.wait()

    @property
    def pending(self) -> int:
        return len(self._outbox)

    # -- requests with retries -----------------------------------------------------------

    async def call(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
        """One request, retried with back-off while the server is unreachable or busy."""
        delay = 0.1
        while True:
            try:
                r = await self._client.request(method, path, **kw)
            except httpx.TransportError as exc:
                log.warning("control plane unreachable (%s); retrying in %.1fs", exc, delay)
            else:
                if r.status_code < 300:
                    body: dict[str, Any] = r.json()
                    return body
                if r.status_code == 404 and "/agent/" in path:
                    raise NodeUnknown(r.text)
                if r.status_code in (401, 403):
                    raise Refused(detail(r))
                if r.status_code < 500 and r.status_code not in (408, 429):
                    raise Rejected(f"{method} {path}: {r.status_code} {r.text[:500]}")
                log.warning("control plane answered %s; retrying in %.1fs", r.status_code, delay)
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 5.0)

    async def _node_call(self, method: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        while True:
            try:
                return await self.call(method, path, json={**body, "node_id": self._node_id()})
            except NodeUnknown:
                if not await self._on_unknown_node():
                    raise Refused("this node left the server") from None

    # -- the outbox ----------------------------------------------------------------------

    def _queue(self, kind: str, assignment_id: str, job_id: str, args: dict[str, Any]) -> None:
        if self._refused is not None:
            return
        self._outbox.append(
            {"kind": kind, "assignment_id": assignment_id, "job_id": job_id, "args": args}
        )
        self._drained.clear()
        self._wake.set()

    async def _send_forever(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._outbox:
                batch = self._outbox[:BATCH]
                try:
                    answer = await self._node_call("POST", "/api/v1/agent/reports",
                                                   {"reports": batch})  # fmt: skip
                except Refused as exc:
                    # Nobody will take them: the agent left, or its token is no more. The
                    # agent stops; later reports are dropped at once, waits end.
                    self._refused = exc
                    if self._outbox:
                        log.warning("%d report(s) not delivered: %s", len(self._outbox), exc)
                    self._outbox.clear()
                    self._drained.set()
                    self._on_refused(exc)
                    return
                except Rejected as exc:
                    # Malformed (422): never accepted, never will be; a bug on one side.
                    log.error("reports dropped: %s", exc)
                    answer = {"revoke": []}
                del self._outbox[: len(batch)]
                for assignment_id in answer.get("revoke", []):
                    await self._on_revoke(assignment_id)
            self._drained.set()

    # -- the ControlPlane port -----------------------------------------------------------

    async def accept(self, assignment_id: str, job_id: str, worker_id: str) -> Assignment | None:
        body = {"assignment_id": assignment_id, "job_id": job_id, "worker_id": worker_id}
        answer = await self._node_call("POST", "/api/v1/agent/accept", body)
        data = answer.get("assignment")
        return assignment_from_dict(data) if data else None

    async def worker_created(
        self, assignment_id: str, job_id: str, worker_id: str, provider: str,
        info: dict[str, str],
    ) -> None:  # fmt: skip
        args = {"worker_id": worker_id, "provider": provider, "info": info}
        self._queue("worker_created", assignment_id, job_id, args)

    async def worker_failed(
        self,
        assignment_id: str,
        job_id: str,
        worker_id: str,
        message: str,
        retryable: bool = True,
    ) -> None:
        args = {"worker_id": worker_id, "message": message, "retryable": retryable}
        self._queue("worker_failed", assignment_id, job_id, args)
        await self.drain()

    async def worker_terminated(
        self, assignment_id: str, job_id: str, worker_id: str, exit_code: int
    ) -> None:
        self._queue("worker_terminated", assignment_id, job_id,
                    {"worker_id": worker_id, "exit_code": exit_code})  # fmt: skip

    async def step_started(self, assignment_id: str, job_id: str, index: int, attempt: int) -> bool:
        # A job taken back reaches the agent as a revocation, not as this answer.
        self._queue("step_started", assignment_id, job_id, {"index": index, "attempt": attempt})
        return True

    async def step_finished(
        self, assignment_id: str, job_id: str, index: int, attempt: int, result: StepResult
    ) -> None:
        args = {"index": index, "attempt": attempt, "result": asdict(result)}
        self._queue("step_finished", assignment_id, job_id, args)

    async def step_skipped(self, assignment_id: str, job_id: str, index: int, reason: str) -> None:
        self._queue("step_skipped", assignment_id, job_id, {"index": index, "reason": reason})

    async def logs(
        self, run_id: str, job_id: str, attempt: int, index: int, lines: list[OutputLine]
    ) -> None:
        key = f"{job_id}:{attempt}"
        n = self._chunks[key] = self._chunks.get(key, 0) + 1
        args = {
            "attempt": attempt,
            "index": index,
            "chunk": f"{job_id}:{attempt}:{n}",
            "lines": [{"stream": ln.stream, "text": ln.text, "ts": ln.ts} for ln in lines],
        }
        self._queue("logs", "-", job_id, args)

    async def job_paused(self, assignment_id: str, job_id: str, until: float) -> None:
        self._queue("job_paused", assignment_id, job_id, {"until": until})
        await self.drain()

    async def job_resumed(self, assignment_id: str, job_id: str, reason: str) -> None:
        self._queue("job_resumed", assignment_id, job_id, {"reason": reason})

    def exec_output(self, exec_id: str, job_id: str, lines: list[OutputLine]) -> None:
        """Output of a debugging command (``faena exec``), for the server to stream."""
        self._queue("exec_output", "-", job_id, {"exec_id": exec_id, "lines": [
            {"stream": ln.stream, "text": ln.text, "ts": ln.ts} for ln in lines]})  # fmt: skip

    def exec_finished(self, exec_id: str, job_id: str, exit_code: int) -> None:
        self._queue("exec_finished", "-", job_id, {"exec_id": exec_id, "exit_code": exit_code})

    async def job_finished(self, assignment_id: str, job_id: str, result: JobResult) -> None:
        self._queue("job_finished", assignment_id, job_id, {"result": asdict(result)})
        await self.drain()
        for key in [k for k in self._chunks if k.startswith(job_id + ":")]:
            del self._chunks[key]


def detail(r: httpx.Response) -> str:
    """A problem answer in one line: ``CODE: detail``."""
    try:
        body = r.json()
    except ValueError:
        return f"HTTP {r.status_code}"
    return f"{body.get('code', r.status_code)}: {body.get('detail', '')}"
