"""The control plane as an agent sees it (the agent protocol).

Every call is idempotent: repeating one changes nothing. Calls for an assignment that was
revoked or superseded are ignored by the control plane (fencing), so a stale agent can
never change a job that moved on.
"""

from __future__ import annotations

from typing import Protocol

from faena.domain.assignment import Assignment, JobResult, StepResult
from faena.workers.port import OutputLine


class ControlPlane(Protocol):
    async def accept(self, assignment_id: str, job_id: str, worker_id: str) -> Assignment | None:
        """Take the assignment; None means do not run it."""
        ...

    async def worker_created(
        self,
        assignment_id: str,
        job_id: str,
        worker_id: str,
        provider: str,
        info: dict[str, str],
    ) -> None: ...

    async def worker_failed(
        self,
        assignment_id: str,
        job_id: str,
        worker_id: str,
        message: str,
        retryable: bool = True,
    ) -> None: ...

    async def worker_terminated(
        self, assignment_id: str, job_id: str, worker_id: str, exit_code: int
    ) -> None: ...

    async def step_started(self, assignment_id: str, job_id: str, index: int, attempt: int) -> bool:
        """False tells the agent the job moved on without it (fenced)."""
        ...

    async def step_finished(
        self, assignment_id: str, job_id: str, index: int, attempt: int, result: StepResult
    ) -> None: ...

    async def step_skipped(
        self, assignment_id: str, job_id: str, index: int, reason: str
    ) -> None: ...

    async def logs(
        self, run_id: str, job_id: str, attempt: int, index: int, lines: list[OutputLine]
    ) -> None: ...

    async def job_paused(self, assignment_id: str, job_id: str, until: float) -> None:
        """A failed step's worker is kept for debugging until ``until`` (epoch seconds)."""
        ...

    async def job_resumed(self, assignment_id: str, job_id: str, reason: str) -> None: ...

    async def job_finished(self, assignment_id: str, job_id: str, result: JobResult) -> None: ...
