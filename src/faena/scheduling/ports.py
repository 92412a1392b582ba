"""What the scheduler needs: a place to record its placement decisions."""

from __future__ import annotations

from typing import Protocol


class AssignmentRecorder(Protocol):
    async def create_assignment(
        self, job_id: str, attempt: int, node_id: str, policy: str
    ) -> str | None:
        """Record a placement; None means the job no longer waits for one."""
        ...
