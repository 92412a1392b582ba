"""The Leadership port: which control-plane replica leads orchestration and scheduling.

Every replica serves the API; one at a time leads (runs the orchestrator, the scheduler,
the node registry and the dispatcher). ``campaign`` waits for the lease and returns the
fencing term the store recorded for it; the leader passes that term with every commit
(``Commit.fence``), so a replica that lost the lease cannot change anything once another
has claimed it. Adapters: ``SoleLeader`` (one process: the embedded shape) and
``postgres_lease.PostgresLease`` (an advisory lock held on its own connection).
"""

from __future__ import annotations

import asyncio
from typing import Protocol


class Leadership(Protocol):
    """A lease on leading orchestration."""

    @property
    def fenced(self) -> bool:
        """Whether others may contend, so commits must carry the term."""
        ...

    async def campaign(self) -> int:
        """Wait until this replica leads; return its term (higher than any before)."""
        ...

    async def hold(self) -> None:
        """Return when the lease is lost for good (another replica leads now)."""
        ...

    async def close(self) -> None:
        """Resign: another replica may lead at once."""
        ...


class SoleLeader:
    """The only process (SQLite, ``faena run``): it leads from the start, never loses the
    lease, and records nothing, so it can never depose the leader of replicas that happen
    to share its database."""

    fenced = False

    def __init__(self) -> None:
        self._closed = asyncio.Event()

    async def campaign(self) -> int:
        return 1

    async def hold(self) -> None:
        await self._closed.wait()

    async def close(self) -> None:
        self._closed.set()
