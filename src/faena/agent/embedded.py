"""The agent inside the control plane's process: takes assignments from the bus.

The embedded shape has no HTTP between agent and control plane; the same JobRunner runs
here, driven by ``ci.assignment.v1.created`` and ``ci.assignment.v1.revoked`` events.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from faena.agent.runner import JobRunner
from faena.bus.port import EventBus, Subscription
from faena.domain.events import Event

log = logging.getLogger(__name__)


class EmbeddedAgent:
    def __init__(self, bus: EventBus, runner: JobRunner, *, node_id: str = "local") -> None:
        self._bus = bus
        self._runner = runner
        self.node_id = node_id
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._seen: set[str] = set()
        self._subs: list[Subscription] = []

    async def start(self) -> None:
        self._subs.append(
            await self._bus.subscribe("ci.assignment.v1.*", self._on_event, durable="agent")
        )

    async def _on_event(self, event: Event) -> None:
        p = event.payload
        assignment_id = p["assignment_id"]
        if event.subject == "ci.assignment.v1.created":
            if p["node_id"] != self.node_id or assignment_id in self._seen:
                return
            self._seen.add(assignment_id)
            task = asyncio.create_task(
                self._run(assignment_id, p["job_id"]), name=f"job:{p['job_id']}"
            )
            self._tasks[assignment_id] = task
        elif event.subject == "ci.assignment.v1.revoked":
            await self._runner.revoke(assignment_id)

    async def _run(self, assignment_id: str, job_id: str) -> None:
        try:
            await self._runner.run(assignment_id, job_id)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("job %s: the agent failed", job_id)
        finally:
            self._tasks.pop(assignment_id, None)

    @property
    def busy(self) -> int:
        return len(self._tasks)

    async def close(self) -> None:
        """Revoke and wait for every running job (their workers are destroyed)."""
        for assignment_id in list(self._tasks):
            await self._runner.revoke(assignment_id)
        tasks = list(self._tasks.values())
        if tasks:
            await asyncio.wait(tasks, timeout=30)
        for t in tasks:
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        for s in self._subs:
            await s.unsubscribe()
