"""Index logs by (run_id, id): a run's lines in write order without a sort.

Revision ID: 0002
Revises: 0001

read_logs for a whole run (no job filter) orders by id; ix_logs_run_id_job_id_id cannot
give that order, so every call read all of the run's lines and sorted them (a poll of a
100k-line log cost tens of milliseconds, however few lines were new). With this index
a call reads only the lines it returns.
"""

from __future__ import annotations

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_index("ix_logs_run_id_id", "logs", ["run_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_logs_run_id_id", table_name="logs")
