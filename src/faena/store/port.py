"""The Store port: runs, jobs, the append-only event log, outbox, inbox and logs.

One ``commit`` is one transaction: the events a state change causes are appended to the
event log and the outbox together with the projection rows they produce, so a crash can
never keep one without the other (transactional outbox). Adapters: ``memory`` (tests,
embedded throwaway) and ``sql`` (SQLite embedded, PostgreSQL distributed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from faena.domain.errors import FaenaError
from faena.domain.events import Event


class AmbiguousRef(FaenaError):
    """A run id prefix matches more than one run."""


@dataclass
class Commit:
    """Everything one transaction writes."""

    events: list[Event] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)
    jobs: list[dict[str, Any]] = field(default_factory=list)
    specs: dict[str, dict[str, Any]] = field(default_factory=dict)
    inbox: list[tuple[str, str]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.events or self.runs or self.jobs or self.specs or self.inbox)


@dataclass(frozen=True)
class StoredEvent:
    """An event with its position in the global, append-only log."""

    seq: int
    event: Event


@dataclass(frozen=True)
class LogLine:
    """One output line of a step; ``id`` is assigned by the store, increasing."""

    run_id: str
    job_id: str
    attempt: int
    step_index: int
    stream: str
    ts: float
    text: str
    id: int = 0


class Store(Protocol):
    """Durable state of runs. Every method is safe to call concurrently."""

    async def open(self) -> None:
        """Connect and bring the schema up to date (migrations)."""
        ...

    async def close(self) -> None: ...

    async def commit(self, batch: Commit) -> None:
        """Write a batch atomically. Run rows carry ``run_id``; job rows ``job_id`` and
        ``run_id``; existing rows are replaced. Events whose ``event_id`` is already stored
        are ignored (idempotent)."""
        ...

    async def run_events(self, run_id: str) -> list[StoredEvent]:
        """The run's events in log order (``correlation_id == run_id``)."""
        ...

    async def events_after(self, seq: int, limit: int = 1000) -> list[StoredEvent]:
        """Global log from ``seq`` (exclusive), oldest first."""
        ...

    async def get_spec(self, spec_hash: str) -> dict[str, Any] | None: ...

    async def get_run(self, run_id: str) -> dict[str, Any] | None:
        """The run row with its job rows under ``"jobs"`` (creation order), or None."""
        ...

    async def list_runs(
        self, limit: int = 20, offset: int = 0, state: str | None = None
    ) -> list[dict[str, Any]]:
        """Run rows (without jobs), newest first."""
        ...

    async def resolve_run_id(self, ref: str) -> str | None:
        """A full id, a unique prefix, or ``last``; None when nothing matches.
        Raises AmbiguousRef when a prefix matches several runs."""
        ...

    async def seen(self, consumer: str, keys: list[str]) -> set[str]:
        """Which of ``keys`` the consumer has already processed (its inbox)."""
        ...

    async def outbox_pending(self, limit: int = 1000) -> list[Event]:
        """Events committed but not yet marked published, oldest first."""
        ...

    async def mark_published(self, event_ids: list[str]) -> None: ...

    async def append_logs(self, lines: list[LogLine]) -> None: ...

    async def read_logs(
        self,
        run_id: str,
        job_id: str | None = None,
        after_id: int = 0,
        limit: int = 10000,
    ) -> list[LogLine]:
        """Log lines in write order, with their ids."""
        ...
