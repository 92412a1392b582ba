"""The in-memory adapter of the Store port: for tests and throwaway embedded runs.

It keeps the SQL adapter's semantics, JSON round trip included: rows, specs and events
are stored as JSON text, so callers get copies (StrEnums back as str, tuples as lists) and
a value JSON cannot hold fails the whole commit, as it does in SQL.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from typing import Any

from faena.domain.errors import ErrorCode
from faena.domain.events import Event
from faena.store.port import (
    AmbiguousRef,
    Commit,
    Deposed,
    IdempotencyRecord,
    Leader,
    LogLine,
    StoredEvent,
    TokenRecord,
    check_fence,
)

__all__ = ["MemoryStore"]

_LOG_CHUNK = "ci.log.v1.chunk"  # logs go through append_logs, never the event log
_CANDIDATES = 10  # ambiguous prefixes list at most this many runs


@dataclass(frozen=True)
class _Run:
    created_at: float
    state: str | None
    data: str


@dataclass(frozen=True)
class _Idempotency:
    body_hash: str
    result: str  # JSON, as in SQL: callers get copies
    created_at: float


class MemoryStore:
    """The Store port in process memory; nothing survives the process."""

    def __init__(self) -> None:
        self._events: list[tuple[str, str]] = []  # (correlation_id, body); seq = index + 1
        self._event_ids: set[str] = set()
        self._run_seqs: dict[str, list[int]] = {}
        self._pending: dict[str, str] = {}  # outbox: event_id -> body, oldest first
        self._specs: dict[str, str] = {}
        self._runs: dict[str, _Run] = {}
        self._jobs: dict[str, dict[str, str]] = {}  # run_id -> job_id -> data, creation order
        self._job_run: dict[str, str] = {}
        self._inbox: dict[str, set[str]] = {}
        self._logs: dict[str, list[LogLine]] = {}
        self._log_id = 0
        self._log_chunks: set[tuple[str, str]] = set()  # (run_id, chunk) already stored
        self._idempotency: dict[tuple[str, str], _Idempotency] = {}
        self._tokens: dict[str, TokenRecord] = {}
        self._token_ids: dict[str, str] = {}  # token_hash -> token_id
        self._leader: Leader | None = None

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def commit(self, batch: Commit) -> None:
        """Write a batch atomically (see the port)."""
        if not batch:
            return
        # Everything that can fail happens before the first change.
        check_fence(self._leader, batch.fence)
        events: dict[str, tuple[str, str]] = {}
        for event in batch.events:
            if event.subject == _LOG_CHUNK or event.event_id in self._event_ids:
                continue
            if event.event_id not in events:
                events[event.event_id] = (event.correlation_id, _dumps(event.to_dict()))
        specs = {h: _dumps(body) for h, body in batch.specs.items() if h not in self._specs}
        runs = {
            row["run_id"]: _Run(
                float(row.get("created_at") or 0.0), _opt_str(row.get("state")), _dumps(row)
            )
            for row in batch.runs
        }
        jobs = {row["job_id"]: (row["run_id"], _dumps(row)) for row in batch.jobs}
        if None in runs or None in jobs or any(run_id is None for run_id, _ in jobs.values()):
            raise ValueError("run rows need a run_id, job rows a job_id and a run_id")
        inbox = {(consumer, key) for consumer, key in batch.inbox}

        for event_id, (correlation_id, body) in events.items():
            self._events.append((correlation_id, body))
            self._event_ids.add(event_id)
            self._run_seqs.setdefault(correlation_id, []).append(len(self._events))
            self._pending[event_id] = body
        self._specs.update(specs)
        self._runs.update(runs)
        for job_id, (run_id, data) in jobs.items():
            previous = self._job_run.get(job_id)
            if previous is not None and previous != run_id:
                del self._jobs[previous][job_id]
            self._jobs.setdefault(run_id, {})[job_id] = data
            self._job_run[job_id] = run_id
        for consumer, key in inbox:
            self._inbox.setdefault(consumer, set()).add(key)

    async def claim_leadership(self, holder: str, url: str, keep: int | None = None) -> int:
        current = self._leader.term if self._leader is not None else 0
        if keep is not None and keep != current:
            raise Deposed(f"term {keep} is over: term {current} was claimed since")
        term = keep if keep is not None else current + 1
        self._leader = Leader(term, holder, url, time.time())
        return term

    async def leader(self) -> Leader | None:
        return self._leader

    async def run_events(self, run_id: str) -> list[StoredEvent]:
        return [self._stored(seq) for seq in self._run_seqs.get(run_id, [])]

    async def events_after(self, seq: int, limit: int = 1000) -> list[StoredEvent]:
        start = max(seq, 0)
        end = min(start + max(limit, 0), len(self._events))
        return [self._stored(s) for s in range(start + 1, end + 1)]

    async def get_spec(self, spec_hash: str) -> dict[str, Any] | None:
        body = self._specs.get(spec_hash)
        return None if body is None else _loads(body)

    async def get_run(self, run_id: str) -> dict[str, Any] | None:
        run = self._runs.get(run_id)
        if run is None:
            return None
        row = _loads(run.data)
        row["jobs"] = [_loads(data) for data in self._jobs.get(run_id, {}).values()]
        return row

    async def list_runs(
        self, limit: int = 20, offset: int = 0, state: str | None = None
    ) -> list[dict[str, Any]]:
        wanted = None if state is None else str(state)
        runs = [
            (run.created_at, run_id, run.data)
            for run_id, run in self._runs.items()
            if wanted is None or run.state == wanted
        ]
        runs.sort(reverse=True)
        start = max(offset, 0)
        return [_loads(data) for _, _, data in runs[start : start + max(limit, 0)]]

    async def resolve_run_id(self, ref: str) -> str | None:
        if not ref:
            return None
        if ref == "last":
            if not self._runs:
                return None
            return max(self._runs, key=lambda run_id: (self._runs[run_id].created_at, run_id))
        if ref in self._runs:
            return ref
        matches = sorted(run_id for run_id in self._runs if run_id.startswith(ref))
        if len(matches) <= 1:
            return matches[0] if matches else None
        shown = ", ".join(matches[:_CANDIDATES])
        more = " and more" if len(matches) > _CANDIDATES else ""
        raise AmbiguousRef(
            f"run id prefix {ref!r} matches several runs: {shown}{more}", code=ErrorCode.ORC_VALID
        )

    async def seen(self, consumer: str, keys: list[str]) -> set[str]:
        return self._inbox.get(consumer, set()) & set(keys)

    async def outbox_pending(self, limit: int = 1000) -> list[Event]:
        pending: list[Event] = []
        for body in self._pending.values():
            if len(pending) >= limit:
                break
            pending.append(Event.from_dict(json.loads(body)))
        return pending

    async def mark_published(self, event_ids: list[str]) -> None:
        for event_id in event_ids:
            self._pending.pop(event_id, None)

    async def append_logs(self, lines: list[LogLine]) -> None:
        # Chunks stored by earlier calls only: one call may carry several lines of a chunk.
        earlier = set(self._log_chunks)
        for line in lines:
            if line.chunk is not None:
                key = (line.run_id, line.chunk)
                if key in earlier:
                    continue
                self._log_chunks.add(key)
            self._log_id += 1
            stored = dataclasses.replace(line, id=self._log_id, chunk=None)  # as SQL reads it
            self._logs.setdefault(line.run_id, []).append(stored)

    async def read_logs(
        self,
        run_id: str,
        job_id: str | None = None,
        after_id: int = 0,
        limit: int = 10000,
    ) -> list[LogLine]:
        out: list[LogLine] = []
        for line in self._logs.get(run_id, []):
            if len(out) >= limit:
                break
            if line.id > after_id and (job_id is None or line.job_id == job_id):
                out.append(line)  # LogLine is frozen with immutable fields: safe to share
        return out

    async def remember_idempotency(
        self, record: IdempotencyRecord, not_before: float
    ) -> IdempotencyRecord:
        where = (record.tenant_id, record.key)
        stored = self._idempotency.get(where)
        if stored is None or stored.created_at < not_before:
            stored = _Idempotency(record.body_hash, _dumps(record.result), record.created_at)
            self._idempotency[where] = stored
        return _idempotency_record(where, stored)

    async def recall_idempotency(
        self, tenant_id: str, key: str, not_before: float
    ) -> IdempotencyRecord | None:
        stored = self._idempotency.get((tenant_id, key))
        if stored is None or stored.created_at < not_before:
            return None
        return _idempotency_record((tenant_id, key), stored)

    async def purge_idempotency(self, older_than: float) -> int:
        old = [k for k, stored in self._idempotency.items() if stored.created_at < older_than]
        for k in old:
            del self._idempotency[k]
        return len(old)

    async def put_token(self, record: TokenRecord) -> None:
        owner = self._token_ids.get(record.token_hash)
        if owner is not None and owner != record.token_id:
            raise ValueError("another token has this token_hash")  # SQL: unique constraint
        previous = self._tokens.get(record.token_id)
        if previous is not None:
            del self._token_ids[previous.token_hash]
        # A tuple, as SQL reads it back, even if the caller passed a list.
        self._tokens[record.token_id] = dataclasses.replace(record, scopes=tuple(record.scopes))
        self._token_ids[record.token_hash] = record.token_id

    async def token_by_hash(self, token_hash: str) -> TokenRecord | None:
        token_id = self._token_ids.get(token_hash)
        return None if token_id is None else self._tokens[token_id]

    async def list_tokens(self, kind: str | None = None) -> list[TokenRecord]:
        tokens = [t for t in self._tokens.values() if kind is None or t.kind == kind]
        return sorted(tokens, key=lambda t: (t.created_at, t.token_id))

    async def revoke_token(self, token_id: str, at: float) -> bool:
        token = self._tokens.get(token_id)
        if token is None:
            return False
        if token.revoked_at is None:
            self._tokens[token_id] = dataclasses.replace(token, revoked_at=at)
        return True

    def _stored(self, seq: int) -> StoredEvent:
        return StoredEvent(seq, Event.from_dict(json.loads(self._events[seq - 1][1])))


def _dumps(value: Any) -> str:
    # No default=: a value JSON cannot hold is a caller bug, raised (TypeError) not stringified.
    return json.dumps(value, separators=(",", ":"))


def _idempotency_record(where: tuple[str, str], stored: _Idempotency) -> IdempotencyRecord:
    tenant_id, key = where
    return IdempotencyRecord(
        tenant_id, key, stored.body_hash, _loads(stored.result), stored.created_at
    )


def _loads(text: str) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(text)
    return value


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)
