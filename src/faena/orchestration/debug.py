"""Debugging a failed job: commands run in its kept worker (``POST /exec``), and the end
of the pause (``--resume``).

A command goes to the job's node: straight to the in-process agent for the server's own
node, through the node's mailbox for a remote agent, whose output comes back as reports.
Every command is audited in the run's event log (``ci.exec.v1.started``/``finished``,
who ran what). A repeated exec id replays the first command's output instead of running
it again.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from faena.domain.errors import ErrorCode, FaenaError
from faena.orchestration.dispatch import Dispatcher
from faena.orchestration.orchestrator import Orchestrator
from faena.workers.port import OutputLine

MAX_SESSIONS = 1000
MAX_LINES = 100_000
# How long past the pause an answer from a remote agent is still awaited.
GRACE = 10.0


class LocalDebugger(Protocol):
    """The in-process agent's side (JobRunner)."""

    async def debug_exec(
        self,
        assignment_id: str,
        exec_id: str,
        command: str,
        sink: Callable[[OutputLine], Awaitable[None]],
    ) -> int: ...

    async def resume(self, assignment_id: str) -> None: ...


@dataclass
class ExecSession:
    exec_id: str
    job_id: str
    command: str
    deadline: float
    lines: list[OutputLine] = field(default_factory=list)
    exit_code: int | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def add(self, line: OutputLine) -> None:
        if len(self.lines) < MAX_LINES:
            self.lines.append(line)
        self.changed.set()

    def finish(self, exit_code: int) -> None:
        if self.exit_code is None:
            self.exit_code = exit_code
        self.changed.set()

    async def follow(self) -> AsyncIterator[OutputLine | int]:
        """The output lines as they come, then the exit code (124 if no answer came)."""
        sent = 0
        while True:
            self.changed.clear()
            while sent < len(self.lines):
                yield self.lines[sent]
                sent += 1
            if self.exit_code is not None:
                yield self.exit_code
                return
            remaining = self.deadline - time.time()
            if remaining <= 0:
                yield 124
                return
            try:
                await asyncio.wait_for(self.changed.wait(), min(remaining, 5.0))
            except TimeoutError:
                pass


class DebugBroker:
    def __init__(
        self,
        orchestrator: Orchestrator,
        dispatcher: Dispatcher,
        *,
        local_node: str,
        local: LocalDebugger | None,
    ) -> None:
        self._o = orchestrator
        self._dispatcher = dispatcher
        self._local_node = local_node
        self._local = local
        self._sessions: OrderedDict[str, ExecSession] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, job_id: str, command: str, exec_id: str, by: str) -> ExecSession:
        """Run ``command`` in the paused job's worker; the same ``exec_id`` runs once."""
        earlier = self._sessions.get(exec_id)
        if earlier is not None:
            if earlier.job_id != job_id or earlier.command != command:
                raise FaenaError(
                    f"exec id {exec_id} was used for another command", code=ErrorCode.ORC_VALID
                )
            return earlier
        job = await self._o.paused_job(job_id)
        assert job.paused_until is not None and job.assignment_id and job.node_id
        session = ExecSession(exec_id, job_id, command, job.paused_until + GRACE)
        self._sessions[exec_id] = session
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)
        await self._o.exec_audit(job_id, "ci.exec.v1.started",
                                 {"exec_id": exec_id, "command": command, "by": by})  # fmt: skip
        if job.node_id == self._local_node and self._local is not None:
            task = asyncio.create_task(self._run_local(session, job.assignment_id))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            self._dispatcher.post(job.node_id, "exec", job.assignment_id, job_id,
                                  {"exec_id": exec_id, "command": command})  # fmt: skip
        return session

    async def _run_local(self, session: ExecSession, assignment_id: str) -> None:
        assert self._local is not None
        try:
            code = await self._local.debug_exec(
                assignment_id, session.exec_id, session.command, session.add
            )
        except FaenaError as exc:
            await session.add(OutputLine("stderr", f"[faena] {exc.message}", time.time()))
            code = 125
        await self.finished(session.exec_id, session.job_id, code)

    async def resume(self, job_id: str, by: str) -> None:
        """End the job's pause now: it finishes as failed."""
        job = await self._o.paused_job(job_id)
        assert job.assignment_id and job.node_id
        if job.node_id == self._local_node and self._local is not None:
            await self._local.resume(job.assignment_id)
        else:
            self._dispatcher.post(job.node_id, "resume", job.assignment_id, job_id, {"by": by})

    async def output(self, exec_id: str, lines: list[OutputLine]) -> None:
        session = self._sessions.get(exec_id)
        if session is not None:
            for line in lines:
                await session.add(line)

    async def finished(self, exec_id: str, job_id: str, exit_code: int) -> None:
        session = self._sessions.get(exec_id)
        if session is None or session.exit_code is not None:
            return
        session.finish(exit_code)
        await self._o.exec_audit(job_id, "ci.exec.v1.finished",
                                 {"exec_id": exec_id, "exit_code": exit_code})  # fmt: skip
