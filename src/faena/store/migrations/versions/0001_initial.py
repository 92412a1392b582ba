"""Initial schema: runs, jobs, specs, the event log, outbox, inbox and logs.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def _serial() -> sa.types.TypeEngine[int]:
    # SQLite only autoincrements an INTEGER PRIMARY KEY (the rowid alias), not a BIGINT one.
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("run_id", sa.String, primary_key=True),
        sa.Column("pipeline", sa.String),
        sa.Column("state", sa.String),
        sa.Column("tenant_id", sa.String),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("started_at", sa.Float),
        sa.Column("finished_at", sa.Float),
        sa.Column("spec_hash", sa.String),
        sa.Column("data", sa.Text, nullable=False),
    )
    op.create_index("ix_runs_created_at", "runs", ["created_at"])
    op.create_index("ix_runs_state_created_at", "runs", ["state", "created_at"])

    op.create_table(
        "jobs",
        sa.Column("job_id", sa.String, primary_key=True),
        sa.Column("run_id", sa.String, nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("key", sa.String),
        sa.Column("name", sa.String),
        sa.Column("state", sa.String),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("data", sa.Text, nullable=False),
    )
    op.create_index("ix_jobs_run_id_position", "jobs", ["run_id", "position"])

    op.create_table(
        "specs",
        sa.Column("spec_hash", sa.String, primary_key=True),
        sa.Column("body", sa.Text, nullable=False),
    )

    op.create_table(
        "events",
        sa.Column("seq", _serial(), primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.String, nullable=False),
        sa.Column("correlation_id", sa.String, nullable=False),
        sa.Column("subject", sa.String, nullable=False),
        sa.Column("occurred_at", sa.Float, nullable=False),
        sa.Column("idempotency_key", sa.String, nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.UniqueConstraint("event_id", name="uq_events_event_id"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_events_correlation_id_seq", "events", ["correlation_id", "seq"])

    op.create_table(
        "outbox",
        sa.Column("seq", _serial(), primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.String, nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("published", sa.Boolean, nullable=False),
        sa.UniqueConstraint("event_id", name="uq_outbox_event_id"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_outbox_published_seq", "outbox", ["published", "seq"])

    op.create_table(
        "inbox",
        sa.Column("consumer", sa.String, primary_key=True),
        sa.Column("key", sa.String, primary_key=True),
        sa.Column("processed_at", sa.Float, nullable=False),
    )

    op.create_table(
        "logs",
        sa.Column("id", _serial(), primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String, nullable=False),
        sa.Column("job_id", sa.String, nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("step_index", sa.Integer, nullable=False),
        sa.Column("stream", sa.String, nullable=False),
        sa.Column("ts", sa.Float, nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_logs_run_id_job_id_id", "logs", ["run_id", "job_id", "id"])


def downgrade() -> None:
    for table in ("logs", "inbox", "outbox", "events", "specs", "jobs", "runs"):
        op.drop_table(table)
