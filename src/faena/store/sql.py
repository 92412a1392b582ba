"""The SQL adapter of the Store port: SQLAlchemy 2 Core on SQLite or PostgreSQL.

Every store operation is one synchronous function of a ``Connection`` (``_Sql``), written
once in Core and run whole by a backend:

- SQLite (default): on the store's own thread, through the stdlib ``sqlite3`` driver. One
  ``run_in_executor`` hop per operation, where aiosqlite hops to its thread for every
  statement, BEGIN and COMMIT (about 20 hops per commit). The single thread also queues
  this process's writers, so they never busy-wait on SQLite's one write lock.
- PostgreSQL (asyncpg), and SQLite through aiosqlite when asked (``run_in_thread=False``,
  which keeps this path tested): on the event loop via ``AsyncConnection.run_sync``.

Everything else that differs between the two databases sits behind ``_Dialect`` (the upsert
construct, how a write transaction begins, whether writes are serialised in-process, the
locks PostgreSQL needs for what SQLite's single writer gives for free).

PostgreSQL runs transactions concurrently (READ COMMITTED, one transaction per write
operation), from several tasks and possibly several control-plane replicas. Where order
matters, a transaction-scoped advisory lock serialises the writers:

- The event log (and outbox): a sequence hands out ``seq`` at INSERT, not at COMMIT, so two
  concurrent commits could become visible out of order and a reader paging with
  ``events_after(cursor)`` would skip the one that commits last. Commits that log events
  or add jobs hold one lock; that also keeps a run's job positions (``_NEXT_POSITION``)
  distinct. Seqs are increasing in commit order; they may have gaps (a rolled-back
  commit, an event already stored: PostgreSQL draws the seq before it sees the conflict).
- Log lines: the same holds for a run's lines and ``read_logs(after_id=...)``; the lock
  is per run, so runs append in parallel.
- Migrations: replicas starting together on an empty database migrate it once.

The outbox needs no claim: each process publishes what it commits and marks it published
(OutboxRelay), and scans ``outbox_pending`` only to catch up. Two replicas catching up at
once publish some events twice, which at-least-once delivery allows (consumers dedupe by
event_id and their inbox). A claim (SELECT ... FOR UPDATE SKIP LOCKED) would not remove
that: a row lock lasts only as long as its transaction, and publishing inside one would
hold it across a network call; a lease column would be a schema change. Only the leading
replica runs the relay (orchestration/leadership.py), which is what keeps duplicates rare.

Leadership: ``claim_leadership`` raises the term under the event-log lock, and a fenced
commit checks the term under the same lock, so a commit of a deposed leader is either
before the claim or refused (see ``Commit.fence``).

The schema is owned by the Alembic migrations in ``migrations/``; ``METADATA`` mirrors
them for queries and a test keeps the two equal.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from faena.domain.errors import ErrorCode, FaenaError
from faena.domain.events import Event
from faena.store.port import (
    AmbiguousRef,
    Commit,
    IdempotencyRecord,
    Leader,
    LogLine,
    StoredEvent,
    TokenRecord,
    check_fence,
)

__all__ = ["HEAD_REVISION", "METADATA", "MIGRATIONS_DIR", "SqlStore", "upgrade_schema"]

# The newest file in migrations/versions; open() skips Alembic when the database has it.
HEAD_REVISION = "0004"
MIGRATIONS_DIR = Path(__file__).with_name("migrations")

_LOG_CHUNK = "ci.log.v1.chunk"  # logs go through append_logs, never the event log
_IN_CHUNK = 500  # SQLite limits bound parameters per statement: split long IN lists
_CANDIDATES = 10  # ambiguous prefixes list at most this many runs
_BEGIN_OPTION = "faena_sqlite_begin"
# PostgreSQL advisory lock keys, (class, object) pairs of int4: the store's own class,
# and the class of per-run log locks whose object is a hash of the run id.
_LOCK_CLASS = 0x6661656E  # "faen"
_LOCK_CLASS_RUN_LOGS = 0x6661656F
_LOCK_EVENT_LOG = {"lock_class": _LOCK_CLASS, "lock_key": 1}
_LOCK_MIGRATIONS = {"lock_class": _LOCK_CLASS, "lock_key": 2}
_SQLITE_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA busy_timeout=5000",
    "PRAGMA foreign_keys=ON",
)

T = TypeVar("T")
Op = Callable[[sa.Connection], T]  # one store operation, run whole by a backend


def _serial() -> sa.types.TypeEngine[int]:
    # SQLite only autoincrements an INTEGER PRIMARY KEY (the rowid alias), not a BIGINT one.
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


METADATA = sa.MetaData()

RUNS = sa.Table(
    "runs",
    METADATA,
    sa.Column("run_id", sa.String, primary_key=True),
    sa.Column("pipeline", sa.String),
    sa.Column("state", sa.String),
    sa.Column("tenant_id", sa.String),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("started_at", sa.Float),
    sa.Column("finished_at", sa.Float),
    sa.Column("spec_hash", sa.String),
    sa.Column("data", sa.Text, nullable=False),
    sa.Index("ix_runs_created_at", "created_at"),
    sa.Index("ix_runs_state_created_at", "state", "created_at"),
)

JOBS = sa.Table(
    "jobs",
    METADATA,
    sa.Column("job_id", sa.String, primary_key=True),
    sa.Column("run_id", sa.String, nullable=False),
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("key", sa.String),
    sa.Column("name", sa.String),
    sa.Column("state", sa.String),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("data", sa.Text, nullable=False),
    sa.Index("ix_jobs_run_id_position", "run_id", "position"),
)

SPECS = sa.Table(
    "specs",
    METADATA,
    sa.Column("spec_hash", sa.String, primary_key=True),
    sa.Column("body", sa.Text, nullable=False),
)

EVENTS = sa.Table(
    "events",
    METADATA,
    sa.Column("seq", _serial(), primary_key=True, autoincrement=True),
    sa.Column("event_id", sa.String, nullable=False),
    sa.Column("correlation_id", sa.String, nullable=False),
    sa.Column("subject", sa.String, nullable=False),
    sa.Column("occurred_at", sa.Float, nullable=False),
    sa.Column("idempotency_key", sa.String, nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    sa.UniqueConstraint("event_id", name="uq_events_event_id"),
    sa.Index("ix_events_correlation_id_seq", "correlation_id", "seq"),
    sqlite_autoincrement=True,
)

OUTBOX = sa.Table(
    "outbox",
    METADATA,
    sa.Column("seq", _serial(), primary_key=True, autoincrement=True),
    sa.Column("event_id", sa.String, nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("published", sa.Boolean, nullable=False),
    sa.UniqueConstraint("event_id", name="uq_outbox_event_id"),
    sa.Index("ix_outbox_published_seq", "published", "seq"),
    sqlite_autoincrement=True,
)

INBOX = sa.Table(
    "inbox",
    METADATA,
    sa.Column("consumer", sa.String, primary_key=True),
    sa.Column("key", sa.String, primary_key=True),
    sa.Column("processed_at", sa.Float, nullable=False),
)

LOGS = sa.Table(
    "logs",
    METADATA,
    sa.Column("id", _serial(), primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.String, nullable=False),
    sa.Column("job_id", sa.String, nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("step_index", sa.Integer, nullable=False),
    sa.Column("stream", sa.String, nullable=False),
    sa.Column("ts", sa.Float, nullable=False),
    sa.Column("text", sa.Text, nullable=False),
    sa.Index("ix_logs_run_id_job_id_id", "run_id", "job_id", "id"),
    sa.Index("ix_logs_run_id_id", "run_id", "id"),
    sqlite_autoincrement=True,
)

# (run_id, chunk) of every log chunk stored: a re-sent chunk is recognised and dropped.
LOG_CHUNKS = sa.Table(
    "log_chunks",
    METADATA,
    sa.Column("run_id", sa.String, primary_key=True),
    sa.Column("chunk", sa.String, primary_key=True),
)

IDEMPOTENCY = sa.Table(
    "idempotency",
    METADATA,
    sa.Column("tenant_id", sa.String, primary_key=True),
    sa.Column("key", sa.String, primary_key=True),
    sa.Column("body_hash", sa.String, nullable=False),
    sa.Column("result", sa.Text, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Index("ix_idempotency_created_at", "created_at"),
)

TOKENS = sa.Table(
    "tokens",
    METADATA,
    sa.Column("token_id", sa.String, primary_key=True),
    sa.Column("token_hash", sa.String, nullable=False),
    sa.Column("subject", sa.String, nullable=False),
    sa.Column("scopes", sa.Text, nullable=False),
    sa.Column("tenant_id", sa.String, nullable=False),
    sa.Column("kind", sa.String, nullable=False),
    sa.Column("node_id", sa.String),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float),
    sa.Column("revoked_at", sa.Float),
    sa.UniqueConstraint("token_hash", name="uq_tokens_token_hash"),
)

LEADERSHIP = sa.Table(
    "leadership",
    METADATA,
    sa.Column("name", sa.String, primary_key=True),
    sa.Column("term", sa.BigInteger, nullable=False),
    sa.Column("holder", sa.String, nullable=False),
    sa.Column("url", sa.String, nullable=False),
    sa.Column("since", sa.Float, nullable=False),
)


def upgrade_schema(connection: sa.Connection) -> None:
    """Run the packaged Alembic migrations up to head on ``connection`` (no alembic.ini)."""
    # Imported here: Alembic costs start-up time and open() needs it only on a schema change.
    from alembic import command
    from alembic.config import Config

    config = Config()
    # Config values go through ConfigParser interpolation, where a bare '%' is an error.
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


class _Dialect:
    """The narrow seam between SQLite and PostgreSQL."""

    def __init__(self, name: str) -> None:
        if name not in ("sqlite", "postgresql"):
            raise ValueError(f"unsupported database {name!r}: use sqlite or postgresql")
        self.name = name

    def _insert(self, table: sa.Table) -> Any:
        # Both dialects' Insert offer the same on_conflict_do_* API.
        if self.name == "sqlite":
            from sqlalchemy.dialects.sqlite import insert as sqlite_insert

            return sqlite_insert(table)
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table)

    def insert_ignore(self, table: sa.Table, keys: Sequence[str]) -> sa.Insert:
        """INSERT that skips rows whose ``keys`` already exist."""
        stmt: sa.Insert = self._insert(table).on_conflict_do_nothing(index_elements=list(keys))
        return stmt

    def upsert(
        self,
        table: sa.Table,
        keys: Sequence[str],
        keep: Sequence[str] = (),
        values: Mapping[str, sa.ColumnElement[Any]] | None = None,
        where: sa.ColumnElement[bool] | None = None,
    ) -> sa.Insert:
        """INSERT that replaces an existing row, except its ``keep`` columns; ``values``
        computes columns of a new row in SQL; ``where`` limits which rows are replaced."""
        ins = self._insert(table)
        if values:
            ins = ins.values(**values)
        fixed = set(keys) | set(keep)
        updates = {c.name: ins.excluded[c.name] for c in table.c if c.name not in fixed}
        stmt: sa.Insert = ins.on_conflict_do_update(
            index_elements=list(keys), set_=updates, where=where
        )
        return stmt

    @property
    def write_begin(self) -> str | None:
        """The statement that opens a write transaction, when the driver's own will not do.

        SQLite: IMMEDIATE takes the write lock at BEGIN, waiting up to busy_timeout, where
        a deferred transaction that reads first fails on upgrade without waiting.
        """
        return "BEGIN IMMEDIATE" if self.name == "sqlite" else None

    def configure(self, engine: sa.Engine) -> None:
        """Install per-connection settings on ``engine`` (sync: the stdlib driver's, or an
        AsyncEngine's ``sync_engine``). A pool listener: it costs nothing per statement."""
        if self.name != "sqlite":
            return

        def on_connect(dbapi_connection: Any, _record: Any) -> None:
            # The driver must not emit BEGIN itself (it would skip DDL and defer the lock):
            # writes begin with write_begin, reads get no BEGIN (each read operation is one
            # statement, atomic on its own, or needs no snapshot).
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            for pragma in _SQLITE_PRAGMAS:
                cursor.execute(pragma)
            cursor.close()

        sa.event.listen(engine, "connect", on_connect)

    @property
    def read_isolation(self) -> str | None:
        """PostgreSQL reads run in autocommit: no BEGIN and ROLLBACK round trips around
        them (each read operation is one statement, or needs no snapshot, as on SQLite)."""
        return "AUTOCOMMIT" if self.name == "postgresql" else None

    def xact_lock(self) -> sa.TextClause | None:
        """A statement taking a transaction-scoped lock (see the module doc); None where
        writers are already serialised (SQLite)."""
        if self.name != "postgresql":
            return None
        return sa.text("SELECT pg_advisory_xact_lock(:lock_class, :lock_key)").bindparams(
            sa.bindparam("lock_class", type_=sa.Integer()),
            sa.bindparam("lock_key", type_=sa.Integer()),
        )

    def write_lock(self) -> contextlib.AbstractAsyncContextManager[Any]:
        """SQLite has one writer: queue this process's writers instead of busy-waiting.

        Only the async backend needs it: the thread backend runs one operation at a time.
        """
        if self.name == "sqlite":
            return asyncio.Lock()
        return contextlib.nullcontext()


# -- statements ------------------------------------------------------------------------
# Built once: a prebuilt statement also memoises its compiled-cache key, which Core
# otherwise recomputes on every call. Values go in as bound parameters.


def _param(name: str, type_: sa.types.TypeEngine[Any] | None = None) -> sa.BindParameter[Any]:
    return sa.bindparam(name, type_=type_)


def _in(name: str) -> sa.BindParameter[Any]:
    return sa.bindparam(name, expanding=True)


_LIMIT = _param("limit", sa.Integer())
_REVISION = sa.text("SELECT version_num FROM alembic_version")
_RUN_EVENTS = (
    sa.select(EVENTS.c.seq, EVENTS.c.body)
    .where(EVENTS.c.correlation_id == _param("run_id"))
    .order_by(EVENTS.c.seq)
)
_EVENTS_AFTER = (
    sa.select(EVENTS.c.seq, EVENTS.c.body)
    .where(EVENTS.c.seq > _param("seq"))
    .order_by(EVENTS.c.seq)
    .limit(_LIMIT)
)
_GET_SPEC = sa.select(SPECS.c.body).where(SPECS.c.spec_hash == _param("spec_hash"))
# One statement, so the run row and its jobs come from the same snapshot:
# the run row first (position -1), then the jobs in creation order.
_GET_RUN = sa.union_all(
    sa.select(sa.literal(-1).label("position"), sa.literal("").label("job_id"), RUNS.c.data).where(
        RUNS.c.run_id == _param("run_id")
    ),
    sa.select(JOBS.c.position, JOBS.c.job_id, JOBS.c.data).where(JOBS.c.run_id == _param("run_id")),
).order_by("position", "job_id")
_NEWEST_FIRST = (RUNS.c.created_at.desc(), RUNS.c.run_id.desc())
_LIST_RUNS = sa.select(RUNS.c.data).order_by(*_NEWEST_FIRST).limit(_LIMIT).offset(_param("offset"))
_LIST_RUNS_IN_STATE = (
    sa.select(RUNS.c.data)
    .where(RUNS.c.state == _param("state"))
    .order_by(*_NEWEST_FIRST)
    .limit(_LIMIT)
    .offset(_param("offset"))
)
_NEWEST_RUN = sa.select(RUNS.c.run_id).order_by(*_NEWEST_FIRST).limit(1)
_RUN_EXISTS = sa.select(RUNS.c.run_id).where(RUNS.c.run_id == _param("ref"))
# substr, not LIKE: LIKE is case-insensitive on SQLite and treats _ and % specially.
_RUNS_PREFIXED = (
    sa.select(RUNS.c.run_id)
    .where(sa.func.substr(RUNS.c.run_id, 1, _param("length", sa.Integer())) == _param("ref"))
    .order_by(RUNS.c.run_id)
    .limit(_CANDIDATES + 1)
)
_SEEN = sa.select(INBOX.c.key).where(
    INBOX.c.consumer == _param("consumer"), INBOX.c.key.in_(_in("keys"))
)
_OUTBOX_PENDING = (
    sa.select(OUTBOX.c.body)
    .where(OUTBOX.c.published == sa.false())
    .order_by(OUTBOX.c.seq)
    .limit(_LIMIT)
)
_MARK_PUBLISHED = (
    sa.update(OUTBOX).where(OUTBOX.c.event_id.in_(_in("event_ids"))).values(published=True)
)
# A new job's position: after its run's existing jobs. Computed by the database for each
# row as it goes in (SQLite and asyncpg run an executemany row by row, each seeing the rows
# before it), which saves a query per commit. A driver that sent the rows as one multi-row
# INSERT would number a batch's new jobs alike: the creation-order contract test says so.
_NEXT_POSITION = (
    sa.select(sa.func.coalesce(sa.func.max(JOBS.c.position) + 1, 0))
    .where(JOBS.c.run_id == _param("position_run_id"))
    .scalar_subquery()
)
_INSERT_LOGS = sa.insert(LOGS)
# Columns in LogLine's field order: a row unpacks straight into one.
_LOG_COLUMNS = (
    LOGS.c.run_id,
    LOGS.c.job_id,
    LOGS.c.attempt,
    LOGS.c.step_index,
    LOGS.c.stream,
    LOGS.c.ts,
    LOGS.c.text,
    LOGS.c.id,
)
_READ_LOGS = (
    sa.select(*_LOG_COLUMNS)
    .where(LOGS.c.run_id == _param("run_id"), LOGS.c.id > _param("after_id"))
    .order_by(LOGS.c.id)
    .limit(_LIMIT)
)
_READ_JOB_LOGS = _READ_LOGS.where(LOGS.c.job_id == _param("job_id"))
_IDEMPOTENCY_COLUMNS = (  # IdempotencyRecord's field order
    IDEMPOTENCY.c.tenant_id,
    IDEMPOTENCY.c.key,
    IDEMPOTENCY.c.body_hash,
    IDEMPOTENCY.c.result,
    IDEMPOTENCY.c.created_at,
)
_GET_IDEMPOTENCY = sa.select(*_IDEMPOTENCY_COLUMNS).where(
    IDEMPOTENCY.c.tenant_id == _param("tenant_id"), IDEMPOTENCY.c.key == _param("key")
)
_RECALL_IDEMPOTENCY = _GET_IDEMPOTENCY.where(IDEMPOTENCY.c.created_at >= _param("not_before"))
_PURGE_IDEMPOTENCY = sa.delete(IDEMPOTENCY).where(
    IDEMPOTENCY.c.created_at < _param("older_than", sa.Float())
)
_TOKEN_COLUMNS = (  # TokenRecord's field order
    TOKENS.c.token_id,
    TOKENS.c.token_hash,
    TOKENS.c.subject,
    TOKENS.c.scopes,
    TOKENS.c.tenant_id,
    TOKENS.c.kind,
    TOKENS.c.node_id,
    TOKENS.c.created_at,
    TOKENS.c.expires_at,
    TOKENS.c.revoked_at,
)
_TOKEN_BY_HASH = sa.select(*_TOKEN_COLUMNS).where(TOKENS.c.token_hash == _param("token_hash"))
_LIST_TOKENS = sa.select(*_TOKEN_COLUMNS).order_by(TOKENS.c.created_at, TOKENS.c.token_id)
_LIST_TOKENS_OF_KIND = _LIST_TOKENS.where(TOKENS.c.kind == _param("kind"))
# The bound parameter is not named token_id: UPDATE reserves column names for SET values.
# coalesce keeps the first revocation time; the row still counts as matched (rowcount 1).
_REVOKE_TOKEN = (
    sa.update(TOKENS)
    .where(TOKENS.c.token_id == _param("revoke_id"))
    .values(revoked_at=sa.func.coalesce(TOKENS.c.revoked_at, _param("at", sa.Float())))
)
_ORCHESTRATION = "orchestration"  # the one leadership row
_GET_LEADER = sa.select(
    LEADERSHIP.c.term, LEADERSHIP.c.holder, LEADERSHIP.c.url, LEADERSHIP.c.since
).where(LEADERSHIP.c.name == _ORCHESTRATION)


@dataclass(slots=True)
class _CommitParams:
    """A batch as bound parameters, JSON encoded on the caller's thread (see commit)."""

    events: list[dict[str, Any]] = field(default_factory=list)
    outbox: list[dict[str, Any]] = field(default_factory=list)
    specs: list[dict[str, Any]] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)
    jobs: list[dict[str, Any]] = field(default_factory=list)
    inbox: list[dict[str, Any]] = field(default_factory=list)
    fence: int | None = None


class _Sql:
    """The store's operations, each a function of one Connection (the backend's choice).

    Reads decode their rows here, so a backend's thread does that work too.
    """

    def __init__(self, dialect: _Dialect) -> None:
        # The write statements depend on the dialect's INSERT ... ON CONFLICT construct.
        self._events = dialect.insert_ignore(EVENTS, ["event_id"])
        self._outbox = dialect.insert_ignore(OUTBOX, ["event_id"])
        self._specs = dialect.insert_ignore(SPECS, ["spec_hash"])
        self._inbox = dialect.insert_ignore(INBOX, ["consumer", "key"])
        self._runs = dialect.upsert(RUNS, ["run_id"])
        # A replaced job keeps its position: creation order survives updates.
        self._jobs = dialect.upsert(
            JOBS, ["job_id"], keep=["position"], values={"position": _NEXT_POSITION}
        )
        # RETURNING gives the keys this statement inserted: a chunk another transaction
        # stored first (even one committing concurrently, on PostgreSQL) is not among them.
        self._log_chunks = dialect.insert_ignore(LOG_CHUNKS, ["run_id", "chunk"]).returning(
            LOG_CHUNKS.c.run_id, LOG_CHUNKS.c.chunk
        )
        # One statement, so concurrent callers cannot both insert: an expired record is
        # replaced, a live one kept (first writer wins).
        self._remember = dialect.upsert(
            IDEMPOTENCY,
            ["tenant_id", "key"],
            where=IDEMPOTENCY.c.created_at < _param("not_before", sa.Float()),
        )
        self._tokens = dialect.upsert(TOKENS, ["token_id"])
        self._leadership = dialect.upsert(LEADERSHIP, ["name"])
        self._lock = dialect.xact_lock()

    # -- writes (run inside a write transaction) ---------------------------------------

    def migrate(self, conn: sa.Connection) -> None:
        if self._lock is not None:
            # Another replica may be migrating: wait, then Alembic finds the schema at head.
            conn.execute(self._lock, _LOCK_MIGRATIONS)
        upgrade_schema(conn)

    def commit(self, conn: sa.Connection, batch: _CommitParams) -> None:
        fenced = batch.fence is not None
        if self._lock is not None and (batch.events or batch.jobs or fenced):
            conn.execute(self._lock, _LOCK_EVENT_LOG)  # until COMMIT: see the module doc
        if fenced:
            # Under the event-log lock, which claim_leadership takes too: a claim is either
            # before this commit (refused here) or after it (its recovery reads it).
            check_fence(self.leader(conn), batch.fence)
        if batch.events:
            # An event already stored is skipped by both inserts (ON CONFLICT): it got its
            # outbox row in the transaction that logged it, so it is never queued for
            # publishing twice. (This rests on outbox rows outliving their events' chance of
            # redelivery: pruning published rows would need RETURNING from the events insert
            # to pick the new ones, a quarter of a commit's database time on SQLite.)
            conn.execute(self._events, batch.events)
            conn.execute(self._outbox, batch.outbox)
        if batch.specs:
            conn.execute(self._specs, batch.specs)
        if batch.runs:
            conn.execute(self._runs, batch.runs)
        if batch.jobs:
            conn.execute(self._jobs, batch.jobs)
        if batch.inbox:
            conn.execute(self._inbox, batch.inbox)

    @staticmethod
    def mark_published(conn: sa.Connection, event_ids: Sequence[str]) -> None:
        # Sorted: concurrent callers then lock the rows they share in the same order
        # (PostgreSQL), and cannot deadlock across chunks.
        for chunk in _chunks(sorted(event_ids)):
            conn.execute(_MARK_PUBLISHED, {"event_ids": chunk})

    def append_logs(
        self,
        conn: sa.Connection,
        params: list[dict[str, Any]],
        chunks: list[tuple[str, str] | None],
    ) -> None:
        """``chunks`` holds each line's (run_id, chunk) key, None for a line without one."""
        if self._lock is not None:
            # In one order (sorted keys), so two callers' locks cannot deadlock.
            for key in sorted({_run_lock_key(p["run_id"]) for p in params}):
                conn.execute(self._lock, {"lock_class": _LOCK_CLASS_RUN_LOGS, "lock_key": key})
        keys = {key for key in chunks if key is not None}
        if keys:
            rows = [{"run_id": run_id, "chunk": chunk} for run_id, chunk in keys]
            fresh = {(r, c) for r, c in conn.execute(self._log_chunks, rows)}
            params = [
                p for p, key in zip(params, chunks, strict=True) if key is None or key in fresh
            ]
        if params:
            conn.execute(_INSERT_LOGS, params)

    def remember_idempotency(
        self, conn: sa.Connection, params: dict[str, Any], not_before: float
    ) -> IdempotencyRecord:
        conn.execute(self._remember, params | {"not_before": not_before})
        where = {"tenant_id": params["tenant_id"], "key": params["key"]}
        return _idempotency_record(conn.execute(_GET_IDEMPOTENCY, where).one())

    @staticmethod
    def purge_idempotency(conn: sa.Connection, older_than: float) -> int:
        return int(conn.execute(_PURGE_IDEMPOTENCY, {"older_than": older_than}).rowcount)

    def put_token(self, conn: sa.Connection, params: dict[str, Any]) -> None:
        conn.execute(self._tokens, params)

    @staticmethod
    def revoke_token(conn: sa.Connection, token_id: str, at: float) -> bool:
        return bool(conn.execute(_REVOKE_TOKEN, {"revoke_id": token_id, "at": at}).rowcount)

    def claim_leadership(self, conn: sa.Connection, holder: str, url: str, keep: int | None) -> int:
        if self._lock is not None:
            conn.execute(self._lock, _LOCK_EVENT_LOG)
        current = self.leader(conn)
        term = current.term if current is not None else 0
        if keep is not None and keep != term:
            check_fence(current, keep)
        term = keep if keep is not None else term + 1
        row = {"name": _ORCHESTRATION, "term": term, "holder": holder, "url": url}
        conn.execute(self._leadership, row | {"since": time.time()})
        return term

    # -- reads -------------------------------------------------------------------------

    @staticmethod
    def leader(conn: sa.Connection) -> Leader | None:
        row = conn.execute(_GET_LEADER).first()
        return None if row is None else Leader(int(row[0]), str(row[1]), str(row[2]), row[3])

    @staticmethod
    def revision(conn: sa.Connection) -> str | None:
        try:
            value = conn.execute(_REVISION).scalar()
        except (sa.exc.OperationalError, sa.exc.ProgrammingError):
            return None  # no alembic_version table: an empty database
        return None if value is None else str(value)

    @staticmethod
    def run_events(conn: sa.Connection, run_id: str) -> list[StoredEvent]:
        rows = conn.execute(_RUN_EVENTS, {"run_id": run_id}).all()
        return [StoredEvent(seq, Event.from_dict(json.loads(body))) for seq, body in rows]

    @staticmethod
    def events_after(conn: sa.Connection, seq: int, limit: int) -> list[StoredEvent]:
        rows = conn.execute(_EVENTS_AFTER, {"seq": seq, "limit": limit}).all()
        return [StoredEvent(s, Event.from_dict(json.loads(body))) for s, body in rows]

    @staticmethod
    def get_spec(conn: sa.Connection, spec_hash: str) -> dict[str, Any] | None:
        body = conn.execute(_GET_SPEC, {"spec_hash": spec_hash}).scalar()
        return None if body is None else _loads(body)

    @staticmethod
    def get_run(conn: sa.Connection, run_id: str) -> dict[str, Any] | None:
        rows = conn.execute(_GET_RUN, {"run_id": run_id}).all()
        if not rows or rows[0][0] != -1:
            return None  # jobs without their run row are not a run
        run = _loads(rows[0][2])
        run["jobs"] = [_loads(row[2]) for row in rows[1:]]
        return run

    @staticmethod
    def list_runs(
        conn: sa.Connection, limit: int, offset: int, state: str | None
    ) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if state is None:
            result = conn.execute(_LIST_RUNS, params)
        else:
            result = conn.execute(_LIST_RUNS_IN_STATE, params | {"state": state})
        return [_loads(data) for data in result.scalars().all()]

    @staticmethod
    def resolve_run_id(conn: sa.Connection, ref: str) -> str | None:
        if ref == "last":
            return _opt_str(conn.execute(_NEWEST_RUN).scalar())
        if conn.execute(_RUN_EXISTS, {"ref": ref}).scalar() is not None:
            return ref
        found = conn.execute(_RUNS_PREFIXED, {"ref": ref, "length": len(ref)}).scalars().all()
        return _one_match(ref, [str(m) for m in found])

    @staticmethod
    def seen(conn: sa.Connection, consumer: str, keys: Sequence[str]) -> set[str]:
        found: set[str] = set()
        for chunk in _chunks(keys):
            found.update(conn.execute(_SEEN, {"consumer": consumer, "keys": chunk}).scalars().all())
        return found

    @staticmethod
    def outbox_pending(conn: sa.Connection, limit: int) -> list[Event]:
        bodies = conn.execute(_OUTBOX_PENDING, {"limit": limit}).scalars().all()
        return [Event.from_dict(json.loads(body)) for body in bodies]

    @staticmethod
    def read_logs(
        conn: sa.Connection, run_id: str, job_id: str | None, after_id: int, limit: int
    ) -> list[LogLine]:
        params: dict[str, Any] = {"run_id": run_id, "after_id": after_id, "limit": limit}
        if job_id is None:
            rows = conn.execute(_READ_LOGS, params).all()
        else:
            rows = conn.execute(_READ_JOB_LOGS, params | {"job_id": job_id}).all()
        return [LogLine(*row) for row in rows]

    @staticmethod
    def recall_idempotency(
        conn: sa.Connection, tenant_id: str, key: str, not_before: float
    ) -> IdempotencyRecord | None:
        params = {"tenant_id": tenant_id, "key": key, "not_before": not_before}
        row = conn.execute(_RECALL_IDEMPOTENCY, params).first()
        return None if row is None else _idempotency_record(row)

    @staticmethod
    def token_by_hash(conn: sa.Connection, token_hash: str) -> TokenRecord | None:
        row = conn.execute(_TOKEN_BY_HASH, {"token_hash": token_hash}).first()
        return None if row is None else _token_record(row)

    @staticmethod
    def list_tokens(conn: sa.Connection, kind: str | None) -> list[TokenRecord]:
        if kind is None:
            rows = conn.execute(_LIST_TOKENS).all()
        else:
            rows = conn.execute(_LIST_TOKENS_OF_KIND, {"kind": kind}).all()
        return [_token_record(row) for row in rows]


# -- backends --------------------------------------------------------------------------


class _Backend(Protocol):
    """Runs one operation whole: a read on a connection, a write in one transaction."""

    async def read(self, op: Op[T]) -> T: ...

    async def write(self, op: Op[T]) -> T: ...

    async def close(self) -> None: ...


class _ThreadBackend:
    """SQLite through the stdlib driver, every operation on one dedicated thread.

    One thread means one operation at a time: this process's writers queue here instead
    of contending for SQLite's write lock (other processes are still waited for, by
    busy_timeout, on this thread), and one connection, made and used only on that thread,
    serves them all. An operation whose caller is cancelled still runs to its end, commit
    or rollback; close() waits for the ones already queued.
    """

    def __init__(self, url: URL, dialect: _Dialect) -> None:
        self.engine = sa.create_engine(url)
        dialect.configure(self.engine)
        self._begin = dialect.write_begin
        self._conn: sa.Connection | None = None  # the thread's; opened by its first operation
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="faena-sqlite")

    async def read(self, op: Op[T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._read, op)

    async def write(self, op: Op[T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._write, op)

    async def close(self) -> None:
        try:
            # Queued behind every operation already submitted.
            await asyncio.get_running_loop().run_in_executor(self._executor, self._dispose)
        finally:
            self._executor.shutdown(wait=True)

    def _connection(self) -> sa.Connection:
        # Kept open: a pool checkout and return per operation would cost a tenth of a
        # commit. One that an error invalidated is replaced.
        conn = self._conn
        if conn is None or conn.closed or conn.invalidated:
            if conn is not None:
                conn.close()
            conn = self._conn = self.engine.connect()
        return conn

    def _read(self, op: Op[T]) -> T:
        conn = self._connection()
        try:
            return op(conn)
        finally:
            # Ends Core's implicit transaction; the driver has none open (no BEGIN on reads).
            conn.rollback()

    def _write(self, op: Op[T]) -> T:
        conn = self._connection()
        with conn.begin():
            # Straight to the driver, not through a "begin" event listener: any engine
            # event listener makes Core dispatch events around every statement (about a
            # quarter of a commit's time). COMMIT or ROLLBACK comes from conn.begin().
            driver = conn.connection.dbapi_connection
            if self._begin and driver is not None:
                driver.execute(self._begin)
            return op(conn)

    def _dispose(self) -> None:
        conn, self._conn = self._conn, None
        try:
            if conn is not None:
                conn.close()
        finally:
            self.engine.dispose()


class _AsyncBackend:
    """An asyncio driver (asyncpg; aiosqlite): operations run through ``run_sync``."""

    def __init__(self, url: URL, dialect: _Dialect) -> None:
        self.engine: AsyncEngine = create_async_engine(url)
        sync_engine = self.engine.sync_engine
        dialect.configure(sync_engine)
        self._writer = self.engine
        self._reader = self.engine
        if dialect.read_isolation:
            self._reader = self.engine.execution_options(isolation_level=dialect.read_isolation)
        self._lock = dialect.write_lock()  # made here: bound to the loop that uses it
        begin = dialect.write_begin
        if begin:

            def on_begin(connection: sa.Connection) -> None:
                # Writes only: they run on an engine carrying this option.
                if connection.get_execution_options().get(_BEGIN_OPTION):
                    connection.exec_driver_sql(begin)

            sa.event.listen(sync_engine, "begin", on_begin)
            self._writer = self.engine.execution_options(**{_BEGIN_OPTION: True})

    async def read(self, op: Op[T]) -> T:
        async with self._reader.connect() as conn:
            return await conn.run_sync(op)

    async def write(self, op: Op[T]) -> T:
        async with self._lock, self._writer.begin() as conn:
            return await conn.run_sync(op)

    async def close(self) -> None:
        await self.engine.dispose()


class StoreUnavailable(FaenaError):
    """The database cannot be reached or opened (ORC-INFRA)."""

    code = ErrorCode.ORC_INFRA


class SqlStore:
    """The Store port on a SQL database: ``sqlite:///path`` or ``postgresql+asyncpg://``.

    SQLite URLs may name any driver (``sqlite+aiosqlite://`` included): by default the
    store runs them on its own thread through the stdlib driver (see ``_ThreadBackend``).
    ``run_in_thread=False`` keeps SQLite on aiosqlite through the async path instead, the
    one PostgreSQL takes; it is slower and exists so that path is tested everywhere.
    """

    def __init__(self, url: str, *, run_in_thread: bool = True) -> None:
        self._url = make_url(url)
        self._dialect = _Dialect(self._url.get_backend_name())
        self._threaded = run_in_thread and self._dialect.name == "sqlite"
        self._sql = _Sql(self._dialect)
        self._backend: _Backend | None = None

    # -- lifecycle ---------------------------------------------------------------------

    async def open(self) -> None:
        """Connect and migrate the schema to head (Alembic runs only when it is behind)."""
        if self._backend is not None:
            return
        url = self._url
        if self._dialect.name == "sqlite":
            _make_parent_dir(url.database)
        backend: _Backend
        if self._threaded:
            backend = _ThreadBackend(url.set(drivername="sqlite+pysqlite"), self._dialect)
        else:
            if self._dialect.name == "sqlite":
                url = url.set(drivername="sqlite+aiosqlite")
            backend = _AsyncBackend(url, self._dialect)
        try:
            if await backend.read(self._sql.revision) != HEAD_REVISION:
                await backend.write(self._sql.migrate)
        except (OSError, sa.exc.DBAPIError) as exc:
            await backend.close()
            where = self._url.render_as_string(hide_password=True)
            raise StoreUnavailable(f"cannot open the store at {where}: {exc}") from exc
        except BaseException:
            await backend.close()
            raise
        self._backend = backend

    async def close(self) -> None:
        backend, self._backend = self._backend, None
        if backend is not None:
            await backend.close()

    async def _read(self, op: Op[T]) -> T:
        if self._backend is None:
            raise RuntimeError("SqlStore is not open")
        return await self._backend.read(op)

    async def _write(self, op: Op[T]) -> T:
        if self._backend is None:
            raise RuntimeError("SqlStore is not open")
        return await self._backend.write(op)

    # -- writes ------------------------------------------------------------------------

    async def commit(self, batch: Commit) -> None:
        """Write a batch in one transaction (see the port)."""
        if not batch:
            return
        # Encoded here, on the caller's thread: the rows may share objects that other
        # tasks change while the backend's thread writes. A value JSON cannot hold fails
        # here, before the transaction begins.
        params = _commit_params(batch)
        commit = self._sql.commit
        await self._write(lambda conn: commit(conn, params))

    async def mark_published(self, event_ids: list[str]) -> None:
        if not event_ids:
            return
        ids = list(event_ids)
        await self._write(lambda conn: _Sql.mark_published(conn, ids))

    async def append_logs(self, lines: list[LogLine]) -> None:
        if not lines:
            return
        params = [
            {
                "run_id": line.run_id,
                "job_id": line.job_id,
                "attempt": line.attempt,
                "step_index": line.step_index,
                "stream": line.stream,
                "ts": line.ts,
                "text": line.text,
            }
            for line in lines
        ]
        chunks = [None if ln.chunk is None else (ln.run_id, ln.chunk) for ln in lines]
        append_logs = self._sql.append_logs
        await self._write(lambda conn: append_logs(conn, params, chunks))

    async def remember_idempotency(
        self, record: IdempotencyRecord, not_before: float
    ) -> IdempotencyRecord:
        params = {
            "tenant_id": record.tenant_id,
            "key": record.key,
            "body_hash": record.body_hash,
            "result": _dumps(record.result),  # encoded here: see commit
            "created_at": float(record.created_at),
        }
        remember = self._sql.remember_idempotency
        return await self._write(lambda conn: remember(conn, params, not_before))

    async def purge_idempotency(self, older_than: float) -> int:
        return await self._write(lambda conn: _Sql.purge_idempotency(conn, older_than))

    async def put_token(self, record: TokenRecord) -> None:
        params = {
            "token_id": record.token_id,
            "token_hash": record.token_hash,
            "subject": record.subject,
            "scopes": _dumps(list(record.scopes)),
            "tenant_id": record.tenant_id,
            "kind": record.kind,
            "node_id": record.node_id,
            "created_at": float(record.created_at),
            "expires_at": _opt_float(record.expires_at),
            "revoked_at": _opt_float(record.revoked_at),
        }
        put_token = self._sql.put_token
        await self._write(lambda conn: put_token(conn, params))

    async def revoke_token(self, token_id: str, at: float) -> bool:
        return await self._write(lambda conn: _Sql.revoke_token(conn, token_id, at))

    async def claim_leadership(self, holder: str, url: str, keep: int | None = None) -> int:
        claim = self._sql.claim_leadership
        return await self._write(lambda conn: claim(conn, holder, url, keep))

    # -- reads -------------------------------------------------------------------------

    async def leader(self) -> Leader | None:
        return await self._read(_Sql.leader)

    async def run_events(self, run_id: str) -> list[StoredEvent]:
        return await self._read(lambda conn: _Sql.run_events(conn, run_id))

    async def events_after(self, seq: int, limit: int = 1000) -> list[StoredEvent]:
        return await self._read(lambda conn: _Sql.events_after(conn, seq, limit))

    async def get_spec(self, spec_hash: str) -> dict[str, Any] | None:
        return await self._read(lambda conn: _Sql.get_spec(conn, spec_hash))

    async def get_run(self, run_id: str) -> dict[str, Any] | None:
        return await self._read(lambda conn: _Sql.get_run(conn, run_id))

    async def list_runs(
        self, limit: int = 20, offset: int = 0, state: str | None = None
    ) -> list[dict[str, Any]]:
        wanted = None if state is None else str(state)
        return await self._read(lambda conn: _Sql.list_runs(conn, limit, offset, wanted))

    async def resolve_run_id(self, ref: str) -> str | None:
        if not ref:
            return None
        return await self._read(lambda conn: _Sql.resolve_run_id(conn, ref))

    async def seen(self, consumer: str, keys: list[str]) -> set[str]:
        if not keys:
            return set()
        wanted = list(keys)
        return await self._read(lambda conn: _Sql.seen(conn, consumer, wanted))

    async def outbox_pending(self, limit: int = 1000) -> list[Event]:
        return await self._read(lambda conn: _Sql.outbox_pending(conn, limit))

    async def read_logs(
        self,
        run_id: str,
        job_id: str | None = None,
        after_id: int = 0,
        limit: int = 10000,
    ) -> list[LogLine]:
        return await self._read(lambda conn: _Sql.read_logs(conn, run_id, job_id, after_id, limit))

    async def recall_idempotency(
        self, tenant_id: str, key: str, not_before: float
    ) -> IdempotencyRecord | None:
        return await self._read(
            lambda conn: _Sql.recall_idempotency(conn, tenant_id, key, not_before)
        )

    async def token_by_hash(self, token_hash: str) -> TokenRecord | None:
        return await self._read(lambda conn: _Sql.token_by_hash(conn, token_hash))

    async def list_tokens(self, kind: str | None = None) -> list[TokenRecord]:
        return await self._read(lambda conn: _Sql.list_tokens(conn, kind))


# -- helpers ---------------------------------------------------------------------------


# json.dumps with separators= builds an encoder per call: build it once.
# No default=: a value JSON cannot hold is a caller bug, raised (TypeError) not stringified.
_dumps: Callable[[Any], str] = json.JSONEncoder(separators=(",", ":")).encode


def _loads(text: str) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(text)
    return value


def _make_parent_dir(database: str | None) -> None:
    # SQLite creates the file but not its directory; memory and URI databases have none.
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).parent.mkdir(parents=True, exist_ok=True)


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _idempotency_record(row: Sequence[Any]) -> IdempotencyRecord:
    tenant_id, key, body_hash, result, created_at = row
    return IdempotencyRecord(tenant_id, key, body_hash, _loads(result), float(created_at))


def _token_record(row: Sequence[Any]) -> TokenRecord:
    token_id, token_hash, subject, scopes, tenant_id, kind, node_id, created, expires, revoked = row
    return TokenRecord(
        token_id,
        token_hash,
        subject,
        tuple(json.loads(scopes)),
        tenant_id,
        kind,
        node_id,
        float(created),
        _opt_float(expires),
        _opt_float(revoked),
    )


def _run_lock_key(run_id: str) -> int:
    """A run's log lock object: a stable hash of its id, as an int4."""
    return zlib.crc32(run_id.encode()) - 0x80000000


def _chunks(items: Sequence[T]) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), _IN_CHUNK):
        yield items[start : start + _IN_CHUNK]


def _unique_events(events: Iterable[Event]) -> list[Event]:
    """The batch's events to log: first of each event_id, log chunks left out."""
    unique: dict[str, Event] = {}
    for event in events:
        if event.subject != _LOG_CHUNK:
            unique.setdefault(event.event_id, event)
    return list(unique.values())


def _one_match(ref: str, matches: list[str]) -> str | None:
    if not matches:
        return None
    if len(matches) == 1:
        return matches[0]
    shown = ", ".join(matches[:_CANDIDATES])
    more = " and more" if len(matches) > _CANDIDATES else ""
    raise AmbiguousRef(
        f"run id prefix {ref!r} matches several runs: {shown}{more}", code=ErrorCode.ORC_VALID
    )


def _commit_params(batch: Commit) -> _CommitParams:
    params = _CommitParams()
    for e in _unique_events(batch.events):
        body = _dumps(e.to_dict())  # once: the log and the outbox share it
        params.events.append(
            {
                "event_id": e.event_id,
                "correlation_id": e.correlation_id,
                "subject": e.subject,
                "occurred_at": e.occurred_at,
                "idempotency_key": e.idempotency_key,
                "body": body,
            }
        )
        params.outbox.append({"event_id": e.event_id, "body": body, "published": False})
    params.specs = [{"spec_hash": h, "body": _dumps(body)} for h, body in batch.specs.items()]
    # The last row of an id wins within a batch.
    runs = {row["run_id"]: row for row in batch.runs}
    params.runs = [_run_params(row) for row in runs.values()]
    jobs = {row["job_id"]: row for row in batch.jobs}
    params.jobs = [_job_params(row) for row in jobs.values()]
    if batch.inbox:
        now = time.time()
        params.inbox = [
            {"consumer": consumer, "key": key, "processed_at": now}
            for consumer, key in dict.fromkeys(batch.inbox)
        ]
    params.fence = batch.fence
    return params


def _run_params(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "run_id": row["run_id"],
        "pipeline": _opt_str(row.get("pipeline")),
        "state": _opt_str(row.get("state")),
        "tenant_id": _opt_str(row.get("tenant_id")),
        "created_at": float(row.get("created_at") or 0.0),
        "started_at": _opt_float(row.get("started_at")),
        "finished_at": _opt_float(row.get("finished_at")),
        "spec_hash": _opt_str(row.get("spec_hash")),
        "data": _dumps(row),
    }


def _job_params(row: dict[str, Any]) -> dict[str, Any]:
    """A job row's parameters; its position comes from the database (_NEXT_POSITION)."""
    return {
        "job_id": row["job_id"],
        "run_id": row["run_id"],
        "position_run_id": row["run_id"],
        "key": _opt_str(row.get("key")),
        "name": _opt_str(row.get("name")),
        "state": _opt_str(row.get("state")),
        "attempt": int(row.get("attempt") or 0),
        "data": _dumps(row),
    }
