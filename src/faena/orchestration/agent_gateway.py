"""The agent protocol as the server serves it to remote agents.

Reports arrive in batches, in the agent's order, and are applied through the same control
plane an in-process agent uses. A batch is answered only once it is durable, so an agent
that got an answer never needs to send it again; one that did not sends it again and the
duplicates change nothing (the orchestrator's idempotency keys and fencing, and log chunk
keys in the store).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from faena.domain.assignment import Assignment, job_result_from_dict, step_result_from_dict
from faena.orchestration.control_plane import InProcessControlPlane
from faena.orchestration.debug import DebugBroker
from faena.orchestration.logs import LogRecorder
from faena.orchestration.orchestrator import Orchestrator
from faena.workers.port import OutputLine


@dataclass(frozen=True)
class Report:
    """One thing an agent tells about an assignment (``kind`` names the ControlPlane call)."""

    kind: str
    assignment_id: str
    job_id: str
    args: dict[str, Any]


class AgentGateway:
    def __init__(self, orchestrator: Orchestrator, logs: LogRecorder, debug: DebugBroker) -> None:
        self._o = orchestrator
        self._logs = logs
        self._debug = debug
        self._cp = InProcessControlPlane(orchestrator, logs)

    async def accept(self, assignment_id: str, job_id: str, worker_id: str) -> Assignment | None:
        return await self._cp.accept(assignment_id, job_id, worker_id)

    async def apply(self, reports: list[Report]) -> list[str]:
        """Apply reports in order; returns the assignments the agent must stop (fenced or
        cancelled)."""
        for r in reports:
            await self._one(r)
        await self._logs.flush()
        await self._o.barrier()
        placed = {r.assignment_id: r.job_id for r in reports if r.assignment_id != "-"}
        return await self.revocations(placed)

    async def revocations(self, running: dict[str, str]) -> list[str]:
        """Which of these assignments (id -> job id) the agent must stop."""
        return [a for a, job in running.items() if not await self._o.is_current(a, job)]

    async def _one(self, r: Report) -> None:
        a, j, args = r.assignment_id, r.job_id, r.args
        cp = self._cp
        if r.kind == "logs":
            lines = [OutputLine(x["stream"], x["text"], x["ts"]) for x in args["lines"]]
            await self._logs.record(
                args["run_id"], j, args["attempt"], args["index"], lines, chunk=args["chunk"]
            )
        elif r.kind == "worker_created":
            await cp.worker_created(a, j, args["worker_id"], args["provider"], args["info"])
        elif r.kind == "worker_failed":
            await cp.worker_failed(
                a, j, args["worker_id"], args["message"], args.get("retryable", True)
            )
        elif r.kind == "worker_terminated":
            await cp.worker_terminated(a, j, args["worker_id"], args["exit_code"])
        elif r.kind == "step_started":
            await cp.step_started(a, j, args["index"], args["attempt"])
        elif r.kind == "step_finished":
            result = step_result_from_dict(args["result"])
            await cp.step_finished(a, j, args["index"], args["attempt"], result)
        elif r.kind == "step_skipped":
            await cp.step_skipped(a, j, args["index"], args["reason"])
        elif r.kind == "job_paused":
            await cp.job_paused(a, j, args["until"])
        elif r.kind == "job_resumed":
            await cp.job_resumed(a, j, args["reason"])
        elif r.kind == "exec_output":
            lines = [OutputLine(x["stream"], x["text"], x["ts"]) for x in args["lines"]]
            await self._debug.output(args["exec_id"], lines)
        elif r.kind == "exec_finished":
            await self._debug.finished(args["exec_id"], j, args["exit_code"])
        elif r.kind == "job_finished":
            await cp.job_finished(a, j, job_result_from_dict(args["result"]))
        else:
            raise ValueError(f"unknown report kind {r.kind!r}")
