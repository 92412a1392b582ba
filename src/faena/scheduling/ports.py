"""What the scheduler needs: a place to record its placement decisions."""

from __future__ import annotations

from typing import Protocol


class AssignmentRecorder(Protocol):
    async def create_assignment(
        self, job_id: str, attempt: int, node_id: str, policy: str
    ) -> str | None:
        """Record a placement; None means the job no longer waits for one."""
        ...


class NodeLossHandler(Protocol):
    async def node_lost(self, node_id: str, message: str) -> list[str]:
        """Fail over the jobs placed on a node that stopped answering."""
        ...
