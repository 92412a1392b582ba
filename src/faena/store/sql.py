"""The SQL adapter of the Store port: SQLAlchemy 2 async Core on SQLite or PostgreSQL.

Everything that differs between the two databases sits behind ``_Dialect`` (the upsert
construct, how a write transaction begins, whether writes are serialised in-process).
The schema is owned by the Alembic migrations in ``migrations/``; ``METADATA`` mirrors
them for queries and a test keeps the two equal.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from faena.domain.errors import ErrorCode
from faena.domain.events import Event
from faena.store.port import AmbiguousRef, Commit, LogLine, StoredEvent

__all__ = ["HEAD_REVISION", "METADATA", "MIGRATIONS_DIR", "SqlStore", "upgrade_schema"]

# The newest file in migrations/versions; open() skips Alembic when the database has it.
HEAD_REVISION = "0001"
MIGRATIONS_DIR = Path(__file__).with_name("migrations")

_LOG_CHUNK = "ci.log.v1.chunk"  # logs go through append_logs, never the event log
_IN_CHUNK = 500  # SQLite limits bound parameters per statement: split long IN lists
_CANDIDATES = 10  # ambiguous prefixes list at most this many runs
_BEGIN_OPTION = "faena_sqlite_begin"
_SQLITE_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA busy_timeout=5000",
    "PRAGMA foreign_keys=ON",
)


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
    sqlite_autoincrement=True,
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

    def upsert(self, table: sa.Table, keys: Sequence[str], keep: Sequence[str] = ()) -> sa.Insert:
        """INSERT that replaces an existing row, except its ``keep`` columns."""
        ins = self._insert(table)
        fixed = set(keys) | set(keep)
        values = {c.name: ins.excluded[c.name] for c in table.c if c.name not in fixed}
        stmt: sa.Insert = ins.on_conflict_do_update(index_elements=list(keys), set_=values)
        return stmt

    def prepare(self, engine: AsyncEngine) -> AsyncEngine:
        """Install per-connection settings; returns the engine that write transactions use."""
        if self.name != "sqlite":
            return engine
        sync_engine = engine.sync_engine

        def on_connect(dbapi_connection: Any, _record: Any) -> None:
            # The driver must not emit BEGIN itself (it would skip DDL and defer the lock):
            # on_begin does, for writes only.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            for pragma in _SQLITE_PRAGMAS:
                cursor.execute(pragma)
            cursor.close()

        def on_begin(connection: sa.Connection) -> None:
            # Writes: IMMEDIATE takes the write lock at BEGIN, waiting up to busy_timeout,
            # where a deferred transaction that reads first fails on upgrade without waiting.
            # Reads get no BEGIN: each is one statement, atomic on its own, and skipping it
            # saves a driver round trip (aiosqlite hops to its thread for every call).
            begin = connection.get_execution_options().get(_BEGIN_OPTION)
            if begin:
                connection.exec_driver_sql(begin)

        sa.event.listen(sync_engine, "connect", on_connect)
        sa.event.listen(sync_engine, "begin", on_begin)
        return engine.execution_options(**{_BEGIN_OPTION: "BEGIN IMMEDIATE"})

    def write_lock(self) -> contextlib.AbstractAsyncContextManager[Any]:
        """SQLite has one writer: queue this process's writers instead of busy-waiting."""
        if self.name == "sqlite":
            return asyncio.Lock()
        return contextlib.nullcontext()


class _Statements:
    """The write statements, built once per store rather than on every commit."""

    def __init__(self, dialect: _Dialect) -> None:
        self.events = dialect.insert_ignore(EVENTS, ["event_id"]).returning(EVENTS.c.event_id)
        self.outbox = dialect.insert_ignore(OUTBOX, ["event_id"])
        self.specs = dialect.insert_ignore(SPECS, ["spec_hash"])
        self.inbox = dialect.insert_ignore(INBOX, ["consumer", "key"])
        self.runs = dialect.upsert(RUNS, ["run_id"])
        # A replaced job keeps its position: creation order survives updates.
        self.jobs = dialect.upsert(JOBS, ["job_id"], keep=["position"])


class SqlStore:
    """The Store port on a SQL database: ``sqlite+aiosqlite:///path`` or ``postgresql+asyncpg://``."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._dialect = _Dialect(make_url(url).get_backend_name())
        self._engine: AsyncEngine | None = None
        self._writer: AsyncEngine | None = None
        self._statements = _Statements(self._dialect)
        self._lock = self._dialect.write_lock()

    # -- lifecycle ---------------------------------------------------------------------

    async def open(self) -> None:
        """Connect and migrate the schema to head (Alembic runs only when it is behind)."""
        if self._engine is not None:
            return
        url = make_url(self._url)
        if self._dialect.name == "sqlite":
            _make_parent_dir(url.database)
        engine = create_async_engine(url)
        self._lock = self._dialect.write_lock()  # made here: bound to the loop that uses it
        self._writer = self._dialect.prepare(engine)
        self._engine = engine
        try:
            if await self._revision() != HEAD_REVISION:
                async with self._writing() as conn:
                    await conn.run_sync(upgrade_schema)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        engine, self._engine, self._writer = self._engine, None, None
        if engine is not None:
            await engine.dispose()

    async def _revision(self) -> str | None:
        try:
            async with self._reading() as conn:
                result = await conn.execute(sa.text("SELECT version_num FROM alembic_version"))
                value = result.scalar()
        except (sa.exc.OperationalError, sa.exc.ProgrammingError):
            return None  # no alembic_version table: an empty database
        return None if value is None else str(value)

    @contextlib.asynccontextmanager
    async def _reading(self) -> AsyncIterator[AsyncConnection]:
        if self._engine is None:
            raise RuntimeError("SqlStore is not open")
        async with self._engine.connect() as conn:
            yield conn

    @contextlib.asynccontextmanager
    async def _writing(self) -> AsyncIterator[AsyncConnection]:
        if self._writer is None:
            raise RuntimeError("SqlStore is not open")
        async with self._lock, self._writer.begin() as conn:
            yield conn

    # -- writes ------------------------------------------------------------------------

    async def commit(self, batch: Commit) -> None:
        """Write a batch in one transaction (see the port)."""
        if not batch:
            return
        st = self._statements
        async with self._writing() as conn:
            events = _unique_events(batch.events)
            if events:
                bodies = {e.event_id: _dumps(e.to_dict()) for e in events}
                # RETURNING names the events this commit added: already-stored ones are
                # skipped by ON CONFLICT and must not be queued for publishing again.
                added = await conn.execute(
                    st.events,
                    [
                        {
                            "event_id": e.event_id,
                            "correlation_id": e.correlation_id,
                            "subject": e.subject,
                            "occurred_at": e.occurred_at,
                            "idempotency_key": e.idempotency_key,
                            "body": bodies[e.event_id],
                        }
                        for e in events
                    ],
                )
                new = set(added.scalars().all())
                if new:
                    await conn.execute(
                        st.outbox,
                        [
                            {"event_id": e.event_id, "body": bodies[e.event_id], "published": False}
                            for e in events
                            if e.event_id in new
                        ],
                    )
            if batch.specs:
                await conn.execute(
                    st.specs,
                    [{"spec_hash": h, "body": _dumps(body)} for h, body in batch.specs.items()],
                )
            if batch.runs:
                runs = {row["run_id"]: row for row in batch.runs}
                await conn.execute(st.runs, [_run_params(row) for row in runs.values()])
            if batch.jobs:
                jobs = {row["job_id"]: row for row in batch.jobs}
                await conn.execute(st.jobs, await _job_params(conn, list(jobs.values())))
            if batch.inbox:
                now = time.time()
                await conn.execute(
                    st.inbox,
                    [
                        {"consumer": consumer, "key": key, "processed_at": now}
                        for consumer, key in dict.fromkeys(batch.inbox)
                    ],
                )

    async def mark_published(self, event_ids: list[str]) -> None:
        if not event_ids:
            return
        async with self._writing() as conn:
            for chunk in _chunks(event_ids):
                await conn.execute(
                    sa.update(OUTBOX).where(OUTBOX.c.event_id.in_(chunk)).values(published=True)
                )

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
        async with self._writing() as conn:
            await conn.execute(sa.insert(LOGS), params)

    # -- reads -------------------------------------------------------------------------

    async def run_events(self, run_id: str) -> list[StoredEvent]:
        query = (
            sa.select(EVENTS.c.seq, EVENTS.c.body)
            .where(EVENTS.c.correlation_id == run_id)
            .order_by(EVENTS.c.seq)
        )
        async with self._reading() as conn:
            rows = (await conn.execute(query)).all()
        return [StoredEvent(seq, Event.from_dict(json.loads(body))) for seq, body in rows]

    async def events_after(self, seq: int, limit: int = 1000) -> list[StoredEvent]:
        query = (
            sa.select(EVENTS.c.seq, EVENTS.c.body)
            .where(EVENTS.c.seq > seq)
            .order_by(EVENTS.c.seq)
            .limit(limit)
        )
        async with self._reading() as conn:
            rows = (await conn.execute(query)).all()
        return [StoredEvent(s, Event.from_dict(json.loads(body))) for s, body in rows]

    async def get_spec(self, spec_hash: str) -> dict[str, Any] | None:
        query = sa.select(SPECS.c.body).where(SPECS.c.spec_hash == spec_hash)
        async with self._reading() as conn:
            body = (await conn.execute(query)).scalar()
        return None if body is None else _loads(body)

    async def get_run(self, run_id: str) -> dict[str, Any] | None:
        # One statement, so the run row and its jobs come from the same snapshot:
        # the run row first (position -1), then the jobs in creation order.
        run_part = sa.select(
            sa.literal(-1).label("position"), sa.literal("").label("job_id"), RUNS.c.data
        ).where(RUNS.c.run_id == run_id)
        jobs_part = sa.select(JOBS.c.position, JOBS.c.job_id, JOBS.c.data).where(
            JOBS.c.run_id == run_id
        )
        query = sa.union_all(run_part, jobs_part).order_by("position", "job_id")
        async with self._reading() as conn:
            rows = (await conn.execute(query)).all()
        if not rows or rows[0].position != -1:
            return None  # jobs without their run row are not a run
        run = _loads(rows[0].data)
        run["jobs"] = [_loads(row.data) for row in rows[1:]]
        return run

    async def list_runs(
        self, limit: int = 20, offset: int = 0, state: str | None = None
    ) -> list[dict[str, Any]]:
        query = sa.select(RUNS.c.data).order_by(RUNS.c.created_at.desc(), RUNS.c.run_id.desc())
        if state is not None:
            query = query.where(RUNS.c.state == str(state))
        query = query.limit(limit).offset(offset)
        async with self._reading() as conn:
            rows = (await conn.execute(query)).scalars().all()
        return [_loads(data) for data in rows]

    async def resolve_run_id(self, ref: str) -> str | None:
        if not ref:
            return None
        async with self._reading() as conn:
            if ref == "last":
                newest = (
                    sa.select(RUNS.c.run_id)
                    .order_by(RUNS.c.created_at.desc(), RUNS.c.run_id.desc())
                    .limit(1)
                )
                return _opt_str((await conn.execute(newest)).scalar())
            exact = sa.select(RUNS.c.run_id).where(RUNS.c.run_id == ref)
            if (await conn.execute(exact)).scalar() is not None:
                return ref
            # substr, not LIKE: LIKE is case-insensitive on SQLite and treats _ and % specially.
            prefixed = (
                sa.select(RUNS.c.run_id)
                .where(sa.func.substr(RUNS.c.run_id, 1, len(ref)) == ref)
                .order_by(RUNS.c.run_id)
                .limit(_CANDIDATES + 1)
            )
            matches = [str(m) for m in (await conn.execute(prefixed)).scalars().all()]
        return _one_match(ref, matches)

    async def seen(self, consumer: str, keys: list[str]) -> set[str]:
        found: set[str] = set()
        if not keys:
            return found
        async with self._reading() as conn:
            for chunk in _chunks(keys):
                query = sa.select(INBOX.c.key).where(
                    INBOX.c.consumer == consumer, INBOX.c.key.in_(chunk)
                )
                found.update((await conn.execute(query)).scalars().all())
        return found

    async def outbox_pending(self, limit: int = 1000) -> list[Event]:
        query = (
            sa.select(OUTBOX.c.body)
            .where(OUTBOX.c.published == sa.false())
            .order_by(OUTBOX.c.seq)
            .limit(limit)
        )
        async with self._reading() as conn:
            bodies = (await conn.execute(query)).scalars().all()
        return [Event.from_dict(json.loads(body)) for body in bodies]

    async def read_logs(
        self,
        run_id: str,
        job_id: str | None = None,
        after_id: int = 0,
        limit: int = 10000,
    ) -> list[LogLine]:
        query = sa.select(LOGS).where(LOGS.c.run_id == run_id, LOGS.c.id > after_id)
        if job_id is not None:
            query = query.where(LOGS.c.job_id == job_id)
        query = query.order_by(LOGS.c.id).limit(limit)
        async with self._reading() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [
            LogLine(
                run_id=r["run_id"],
                job_id=r["job_id"],
                attempt=r["attempt"],
                step_index=r["step_index"],
                stream=r["stream"],
                ts=r["ts"],
                text=r["text"],
                id=r["id"],
            )
            for r in rows
        ]


# -- helpers ---------------------------------------------------------------------------

T = TypeVar("T")


def _dumps(value: Any) -> str:
    # No default=: a value JSON cannot hold is a caller bug, raised (TypeError) not stringified.
    return json.dumps(value, separators=(",", ":"))


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


async def _job_params(conn: AsyncConnection, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Job parameters, new jobs numbered after their run's existing ones."""
    next_position: dict[str, int] = {}
    run_ids = list(dict.fromkeys(row["run_id"] for row in rows))
    for chunk in _chunks(run_ids):
        query = (
            sa.select(JOBS.c.run_id, sa.func.max(JOBS.c.position))
            .where(JOBS.c.run_id.in_(chunk))
            .group_by(JOBS.c.run_id)
        )
        for run_id, highest in (await conn.execute(query)).all():
            next_position[run_id] = int(highest) + 1
    params = []
    for row in rows:
        run_id = row["run_id"]
        position = next_position.get(run_id, 0)
        next_position[run_id] = position + 1
        params.append(
            {
                "job_id": row["job_id"],
                "run_id": run_id,
                "position": position,
                "key": _opt_str(row.get("key")),
                "name": _opt_str(row.get("name")),
                "state": _opt_str(row.get("state")),
                "attempt": int(row.get("attempt") or 0),
                "data": _dumps(row),
            }
        )
    return params
