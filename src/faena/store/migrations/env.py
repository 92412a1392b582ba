"""Alembic environment: migrates the connection SqlStore hands over; no alembic.ini needed."""

from __future__ import annotations

from alembic import context


def run_migrations() -> None:
    connection = context.config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("faena migrations run through faena.store.sql.upgrade_schema()")
    context.configure(connection=connection, target_metadata=None)
    with context.begin_transaction():
        context.run_migrations()


run_migrations()
