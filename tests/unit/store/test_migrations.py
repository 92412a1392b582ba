"""The packaged Alembic migrations: head constant, upgrade from empty, parity with sql.py."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import create_async_engine

from faena.store.port import IdempotencyRecord, LogLine, TokenRecord
from faena.store.sql import HEAD_REVISION, METADATA, MIGRATIONS_DIR, SqlStore, upgrade_schema


def alembic_config(connection: sa.Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    config.attributes["connection"] = connection
    return config


TABLES = {
    "runs",
    "jobs",
    "specs",
    "events",
    "outbox",
    "inbox",
    "logs",
    "log_chunks",
    "idempotency",
    "tokens",
    "leadership",
    "alembic_version",
}


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "nested" / "faena.db"


@pytest.fixture
def sync_engine(db_path: Path) -> Iterator[sa.Engine]:
    engine = sa.create_engine(f"sqlite:///{db_path}")
    yield engine
    engine.dispose()


async def migrate_with_store(db_path: Path) -> None:
    store = SqlStore(f"sqlite+aiosqlite:///{db_path}")
    await store.open()  # creates the parent directory too
    await store.close()


def schema(bind: sa.Engine | sa.Connection) -> dict[str, dict[str, Any]]:
    """Tables as the database reports them: columns, primary key, indexes, unique constraints."""
    inspector = sa.inspect(bind)
    return {
        table: {
            "columns": [(c["name"], c["nullable"]) for c in inspector.get_columns(table)],
            "primary_key": inspector.get_pk_constraint(table)["constrained_columns"],
            "indexes": sorted(
                (i["name"], tuple(i["column_names"]))
                for i in inspector.get_indexes(table)
                # PostgreSQL also lists the index behind each unique constraint.
                if not i.get("duplicates_constraint")
            ),
            "unique": sorted(
                (u["name"], tuple(u["column_names"]))
                for u in inspector.get_unique_constraints(table)
            ),
        }
        for table in inspector.get_table_names()
        if table != "alembic_version"
    }


def declared(metadata: sa.MetaData) -> dict[str, dict[str, Any]]:
    """The same description, from sql.py's METADATA."""
    return {
        table.name: {
            "columns": [(c.name, bool(c.nullable)) for c in table.columns],
            "primary_key": [c.name for c in table.primary_key.columns],
            "indexes": sorted((i.name, tuple(c.name for c in i.columns)) for i in table.indexes),
            "unique": sorted(
                (u.name, tuple(c.name for c in u.columns))
                for u in table.constraints
                if isinstance(u, sa.UniqueConstraint)
            ),
        }
        for table in metadata.sorted_tables
    }


def test_head_constant_is_the_migrations_head() -> None:
    scripts = ScriptDirectory.from_config(alembic_config())
    assert scripts.get_heads() == [HEAD_REVISION]
    names = sorted(p.name for p in (MIGRATIONS_DIR / "versions").glob("*.py"))
    assert names[-1].startswith(f"{HEAD_REVISION}_")  # files are numbered like revisions


async def test_upgrade_from_empty_creates_all_tables(db_path: Path, sync_engine: sa.Engine) -> None:
    assert not db_path.parent.exists()
    await migrate_with_store(db_path)

    tables = set(sa.inspect(sync_engine).get_table_names())
    assert tables == TABLES
    with sync_engine.connect() as conn:
        assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar_one() == (
            HEAD_REVISION
        )


async def test_migrated_schema_matches_sql_metadata(db_path: Path, sync_engine: sa.Engine) -> None:
    await migrate_with_store(db_path)
    assert schema(sync_engine) == declared(METADATA)


def test_downgrade_to_base_drops_every_table(db_path: Path, sync_engine: sa.Engine) -> None:
    db_path.parent.mkdir()
    with sync_engine.begin() as conn:
        upgrade_schema(conn)
    with sync_engine.begin() as conn:
        command.downgrade(alembic_config(conn), "base")
    assert set(sa.inspect(sync_engine).get_table_names()) == {"alembic_version"}


async def test_open_upgrades_a_0002_database_in_place(
    db_path: Path, sync_engine: sa.Engine
) -> None:
    db_path.parent.mkdir()
    with sync_engine.begin() as conn:
        command.upgrade(alembic_config(conn), "0002")
        conn.execute(
            sa.text(
                "INSERT INTO runs (run_id, state, created_at, data) "
                "VALUES ('old-run', 'SUCCEEDED', 1.0, :data)"
            ),
            {"data": '{"run_id":"old-run","state":"SUCCEEDED"}'},
        )
        conn.execute(
            sa.text(
                "INSERT INTO logs (run_id, job_id, attempt, step_index, stream, ts, text) "
                "VALUES ('old-run', 'j1', 1, 0, 'stdout', 1.0, 'old line')"
            )
        )

    store = SqlStore(f"sqlite:///{db_path}")
    await store.open()
    try:
        assert await store.get_run("old-run") == {
            "run_id": "old-run",
            "state": "SUCCEEDED",
            "jobs": [],
        }
        assert [line.text for line in await store.read_logs("old-run")] == ["old line"]
        # The new tables work.
        record = IdempotencyRecord("t", "k", "h", {"run_id": "old-run"}, 5.0)
        assert await store.remember_idempotency(record, not_before=0.0) == record
        assert await store.recall_idempotency("t", "k", not_before=0.0) == record
        token = TokenRecord("tok-1", "hash-1", "alice", ("runs:read",), created_at=5.0)
        await store.put_token(token)
        assert await store.token_by_hash("hash-1") == token
        again = LogLine("old-run", "j1", 1, 0, "stdout", 2.0, "new line", chunk="c1")
        await store.append_logs([again])
        await store.append_logs([again])
        assert [line.text for line in await store.read_logs("old-run")] == [
            "old line",
            "new line",
        ]
    finally:
        await store.close()

    with sync_engine.connect() as conn:
        assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar_one() == (
            HEAD_REVISION
        )
    assert schema(sync_engine) == declared(METADATA)


async def test_upgrade_is_idempotent(db_path: Path, sync_engine: sa.Engine) -> None:
    await migrate_with_store(db_path)
    with sync_engine.begin() as conn:
        upgrade_schema(conn)  # already at head: nothing to do, nothing fails
    await migrate_with_store(db_path)
    assert schema(sync_engine) == declared(METADATA)


_OPEN_AND_REPORT = """
import asyncio, sys
from faena.store.sql import SqlStore

async def main():
    store = SqlStore(sys.argv[1])
    await store.open()
    await store.close()

asyncio.run(main())
print("alembic" in sys.modules)
"""


def _imports_alembic(url: str) -> bool:
    out = subprocess.run(
        [sys.executable, "-c", _OPEN_AND_REPORT, url],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return out.stdout.strip() == "True"


def test_open_skips_alembic_when_the_schema_is_at_head(db_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{db_path}"
    assert _imports_alembic(url)  # an empty database needs the migrations
    assert not _imports_alembic(url)  # at head: one query, no Alembic import


# -- PostgreSQL: the same migrations on a real server ----------------------------------


def on_postgres(url: str, fn: Callable[[sa.Connection], Any]) -> Any:
    """``fn`` on a connection to ``url``, in one transaction (committed)."""

    async def run() -> Any:
        engine = create_async_engine(url)
        try:
            async with engine.begin() as conn:
                return await conn.run_sync(fn)
        finally:
            await engine.dispose()

    return asyncio.run(run())


def version(conn: sa.Connection) -> str:
    return str(conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar_one())


def test_postgres_open_migrates_a_fresh_database_to_head(postgres_url: str) -> None:
    assert _imports_alembic(postgres_url)  # empty: the migrations run
    assert not _imports_alembic(postgres_url)  # reopened at head: one query, no Alembic

    def check(conn: sa.Connection) -> None:
        assert set(sa.inspect(conn).get_table_names()) == TABLES
        assert version(conn) == HEAD_REVISION
        assert schema(conn) == declared(METADATA)

    on_postgres(postgres_url, check)


def test_postgres_downgrade_to_base_and_upgrade_again(postgres_url: str) -> None:
    on_postgres(postgres_url, upgrade_schema)
    on_postgres(postgres_url, lambda conn: command.downgrade(alembic_config(conn), "base"))
    assert on_postgres(postgres_url, lambda c: set(sa.inspect(c).get_table_names())) == {
        "alembic_version"
    }
    on_postgres(postgres_url, upgrade_schema)
    assert on_postgres(postgres_url, schema) == declared(METADATA)


async def test_postgres_open_upgrades_a_0002_database_in_place(postgres_url: str) -> None:
    def at_0002(conn: sa.Connection) -> None:
        command.upgrade(alembic_config(conn), "0002")
        conn.execute(
            sa.text(
                "INSERT INTO logs (run_id, job_id, attempt, step_index, stream, ts, text) "
                "VALUES ('old-run', 'j1', 1, 0, 'stdout', 1.0, 'old line')"
            )
        )

    engine = create_async_engine(postgres_url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(at_0002)
    finally:
        await engine.dispose()

    store = SqlStore(postgres_url)
    await store.open()
    try:
        again = LogLine("old-run", "j1", 1, 0, "stdout", 2.0, "new line", chunk="c1")
        await store.append_logs([again])
        await store.append_logs([again])
        lines = await store.read_logs("old-run")
        assert [line.text for line in lines] == ["old line", "new line"]
        assert lines[1].id > lines[0].id  # the sequence carries on after the old rows
        token = TokenRecord("tok-1", "hash-1", "alice", ("runs:read",), created_at=5.0)
        await store.put_token(token)
        assert await store.token_by_hash("hash-1") == token
        assert await store._read(version) == HEAD_REVISION
    finally:
        await store.close()


async def test_postgres_replicas_opening_an_empty_database_together_migrate_it_once(
    postgres_url: str,
) -> None:
    stores = [SqlStore(postgres_url) for _ in range(4)]
    try:
        await asyncio.gather(*(s.open() for s in stores))  # no "relation already exists"
        assert await stores[0]._read(version) == HEAD_REVISION
    finally:
        for s in stores:
            await s.close()
