"""The leadership record: who leads orchestration, and the fencing term.

Revision ID: 0004
Revises: 0003

Replicas of the control plane elect a leader (a PostgreSQL advisory lock); the one that wins
raises ``term`` here, and every orchestration commit names the term it was made under, so a
deposed leader's writes are refused (fencing). ``url`` is where followers forward commands.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "leadership",
        sa.Column("name", sa.String, primary_key=True),
        sa.Column("term", sa.BigInteger, nullable=False),
        sa.Column("holder", sa.String, nullable=False),
        sa.Column("url", sa.String, nullable=False),
        sa.Column("since", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("leadership")
