"""API idempotency records, API tokens, and the keys of stored log chunks.

Revision ID: 0003
Revises: 0002

The control plane keeps Idempotency-Key outcomes and (hashed) API tokens across restarts;
log_chunks lets append_logs drop a chunk of lines a remote agent sends again.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "log_chunks",
        sa.Column("run_id", sa.String, primary_key=True),
        sa.Column("chunk", sa.String, primary_key=True),
    )

    op.create_table(
        "idempotency",
        sa.Column("tenant_id", sa.String, primary_key=True),
        sa.Column("key", sa.String, primary_key=True),
        sa.Column("body_hash", sa.String, nullable=False),
        sa.Column("result", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    # purge_idempotency deletes by age.
    op.create_index("ix_idempotency_created_at", "idempotency", ["created_at"])

    op.create_table(
        "tokens",
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


def downgrade() -> None:
    for table in ("tokens", "idempotency", "log_chunks"):
        op.drop_table(table)
