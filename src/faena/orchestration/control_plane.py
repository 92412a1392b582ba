"""The agent protocol served in-process: the orchestrator plus the log recorder."""

from __future__ import annotations

from faena.domain.assignment import Assignment, JobResult, StepResult
from faena.orchestration.logs import LogRecorder
from faena.orchestration.orchestrator import Orchestrator
from faena.workers.port import OutputLine


class InProcessControlPlane:
    """What an embedded agent talks to instead of HTTP."""

    def __init__(self, orchestrator: Orchestrator, logs: LogRecorder) -> None:
        self._o = orchestrator
        self._logs = logs

    async def accept(self, assignment_id: str, job_id: str, worker_id: str) -> Assignment | None:
        return await self._o.accept(assignment_id, job_id, worker_id)

    async def worker_created(
        self,
        assignment_id: str,
        job_id: str,
        worker_id: str,
        provider: str,
        info: dict[str, str],
    ) -> None:
        # Not awaited alone: it shares the commit of the agent's next report.
        await self._o.worker_created(assignment_id, job_id, worker_id, provider, info, wait=False)

    async def worker_failed(
        self,
        assignment_id: str,
        job_id: str,
        worker_id: str,
        message: str,
        retryable: bool = True,
    ) -> None:
        await self._o.worker_failed(assignment_id, job_id, worker_id, message, retryable)

    async def worker_terminated(
        self, assignment_id: str, job_id: str, worker_id: str, exit_code: int
    ) -> None:
        await self._o.worker_terminated(assignment_id, job_id, worker_id, exit_code, wait=False)

    async def step_started(self, assignment_id: str, job_id: str, index: int, attempt: int) -> bool:
        # In-process, a revocation reaches the agent on the bus; the start is recorded
        # in order with the agent's later reports without a round trip of its own.
        await self._o.step_started(assignment_id, job_id, index, attempt, wait=False)
        return True

    async def step_finished(
        self, assignment_id: str, job_id: str, index: int, attempt: int, result: StepResult
    ) -> None:
        await self._logs.flush()
        await self._o.step_finished(assignment_id, job_id, index, attempt, result, wait=False)

    async def step_skipped(self, assignment_id: str, job_id: str, index: int, reason: str) -> None:
        await self._o.step_skipped(assignment_id, job_id, index, reason)

    async def logs(
        self, run_id: str, job_id: str, attempt: int, index: int, lines: list[OutputLine]
    ) -> None:
        await self._logs.record(run_id, job_id, attempt, index, lines)

    async def job_paused(self, assignment_id: str, job_id: str, until: float) -> None:
        await self._logs.flush()
        await self._o.job_paused(assignment_id, job_id, until)

    async def job_resumed(self, assignment_id: str, job_id: str, reason: str) -> None:
        await self._o.job_resumed(assignment_id, job_id, reason)

    async def job_finished(self, assignment_id: str, job_id: str, result: JobResult) -> None:
        await self._logs.flush()
        await self._o.job_finished(assignment_id, job_id, result)
