"""Live task events: what happened to each task, in order, and the upstream's log lines on the task.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "task_events",
        sa.Column("task_id", sa.String(64), primary_key=True),
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("at", sa.Float(53), nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("data", sa.JSON, nullable=False),
    )
    op.create_index("ix_task_events_at", "task_events", ["at"])
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("logs", sa.JSON))
        batch.add_column(sa.Column("logs_seen", sa.Integer, nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("logs_seen")
        batch.drop_column("logs")
    op.drop_index("ix_task_events_at", "task_events")
    op.drop_table("task_events")
