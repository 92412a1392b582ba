"""The Store port: runs, jobs, the append-only event log, outbox, inbox, logs, API
idempotency records and API tokens.

One ``commit`` is one transaction: the events a state change causes are appended to the
event log and the outbox together with the projection rows they produce, so a crash can
never keep one without the other (transactional outbox). Adapters: ``memory`` (tests,
embedded throwaway) and ``sql`` (SQLite embedded, PostgreSQL distributed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from faena.domain.errors import ErrorCode, FaenaError, NotFound
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
    # The leader's term this batch was made under: the store refuses it (Deposed) once
    # another replica has claimed a later term. None: not fenced (one process only).
    fence: int | None = None

    def __bool__(self) -> bool:
        return bool(self.events or self.runs or self.jobs or self.specs or self.inbox)


class Deposed(FaenaError):
    """A write made under a leadership term that another replica has since replaced.

    ORC-INFRA (503, retry): the request did nothing, and the new leader will take it."""

    code = ErrorCode.ORC_INFRA


@dataclass(frozen=True)
class Leader:
    """Who leads orchestration: the fencing ``term``, the replica and its API URL."""

    term: int
    holder: str
    url: str
    since: float


def check_fence(leader: Leader | None, fence: int | None) -> None:
    """Raise Deposed when a batch fenced with ``fence`` comes after another claim."""
    if fence is not None and leader is not None and leader.term != fence:
        raise Deposed(
            f"this replica no longer leads: its term {fence} was replaced by term "
            f"{leader.term} ({leader.holder})"
        )


@dataclass(frozen=True)
class StoredEvent:
    """An event with its position in the global, append-only log."""

    seq: int
    event: Event


@dataclass(frozen=True)
class LogLine:
    """One output line of a step; ``id`` is assigned by the store, increasing.

    ``chunk`` is the sender's key for the batch the line came in (write only: read_logs
    returns None); a re-sent chunk is not stored twice.
    """

    run_id: str
    job_id: str
    attempt: int
    step_index: int
    stream: str
    ts: float
    text: str
    id: int = 0
    chunk: str | None = None


@dataclass(frozen=True)
class IdempotencyRecord:
    """The outcome of an API request made with an ``Idempotency-Key``."""

    tenant_id: str
    key: str
    body_hash: str
    result: dict[str, Any]
    created_at: float


@dataclass(frozen=True)
class TokenRecord:
    """An API token, by the hash of its secret (the raw token is never stored)."""

    token_id: str
    token_hash: str
    subject: str
    scopes: tuple[str, ...]
    tenant_id: str = "default"
    kind: str = "user"  # admin | user | registration | agent
    node_id: str | None = None
    created_at: float = 0.0
    expires_at: float | None = None
    revoked_at: float | None = None


class Store(Protocol):
    """Durable state of runs. Every method is safe to call concurrently."""

    async def open(self) -> None:
        """Connect and bring the schema up to date (migrations)."""
        ...

    async def close(self) -> None: ...

    async def commit(self, batch: Commit) -> None:
        """Write a batch atomically. Run rows carry ``run_id``; job rows ``job_id`` and
        ``run_id``; existing rows are replaced. Events whose ``event_id`` is already stored
        are ignored (idempotent). A ``fence`` older than the claimed term raises Deposed."""
        ...

    async def claim_leadership(self, holder: str, url: str, keep: int | None = None) -> int:
        """Record ``holder`` as leader and return its term: a new, higher one, or ``keep``
        when that is still the stored term (a leader re-taking its lock after a database
        restart). Raises Deposed when ``keep`` is given and another term was claimed.
        Serialised with fenced commits: a commit is either before the claim or refused."""
        ...

    async def leader(self) -> Leader | None:
        """The last claimed leadership, if any."""
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

    async def append_logs(self, lines: list[LogLine]) -> None:
        """Store the lines, except those whose (run_id, chunk) an earlier call stored."""
        ...

    async def read_logs(
        self,
        run_id: str,
        job_id: str | None = None,
        after_id: int = 0,
        limit: int = 10000,
    ) -> list[LogLine]:
        """Log lines in write order, with their ids."""
        ...

    # -- API idempotency records -------------------------------------------------------

    async def remember_idempotency(
        self, record: IdempotencyRecord, not_before: float
    ) -> IdempotencyRecord:
        """Store ``record`` unless a live one (created at or after ``not_before``) has its
        (tenant_id, key); return the stored one. The first writer wins, races included."""
        ...

    async def recall_idempotency(
        self, tenant_id: str, key: str, not_before: float
    ) -> IdempotencyRecord | None:
        """The record of (tenant_id, key) if created at or after ``not_before``."""
        ...

    async def purge_idempotency(self, older_than: float) -> int:
        """Delete the records created before ``older_than``; return how many."""
        ...

    # -- API tokens --------------------------------------------------------------------

    async def put_token(self, record: TokenRecord) -> None:
        """Insert or replace by ``token_id``. Two tokens cannot share a hash."""
        ...

    async def token_by_hash(self, token_hash: str) -> TokenRecord | None: ...

    async def list_tokens(self, kind: str | None = None) -> list[TokenRecord]:
        """Tokens (of one kind, or all), oldest first."""
        ...

    async def revoke_token(self, token_id: str, at: float) -> bool:
        """Mark revoked at ``at``, keeping an earlier revocation; False if unknown."""
        ...


async def resolve_run(store: Store, ref: str) -> str:
    """The run id ``ref`` names (an id, a unique prefix, or ``last``); raises NotFound,
    or FaenaError (ORC-VALID) for an ambiguous prefix."""
    try:
        run_id = await store.resolve_run_id(ref)
    except AmbiguousRef as exc:
        raise FaenaError(exc.message, code=ErrorCode.ORC_VALID) from exc
    if run_id is None:
        raise NotFound(f"no run matches '{ref}'")
    return run_id
