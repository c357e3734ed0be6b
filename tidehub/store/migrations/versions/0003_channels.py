"""Channels: upstream accounts with routing settings, their health, and the channel of each task.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "channels",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("name", sa.String(100), nullable=False, unique=True),
        sa.Column("adapter", sa.String(40), nullable=False),
        sa.Column("base_url", sa.Text, nullable=False),
        sa.Column("secret", sa.Text, nullable=False, server_default=""),
        sa.Column("models", sa.JSON, nullable=False),
        sa.Column("priority", sa.Integer, nullable=False, server_default="0"),
        sa.Column("weight", sa.Integer, nullable=False, server_default="1"),
        sa.Column("max_concurrency", sa.Integer),
        sa.Column("rpm", sa.Integer),
        sa.Column("enabled", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column("created_at", sa.Float(53), nullable=False),
        sa.Column("updated_at", sa.Float(53), nullable=False),
    )
    op.create_table(
        "channel_health",
        sa.Column("channel_id", sa.String(40), primary_key=True),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("requests", sa.Integer, nullable=False),
        sa.Column("errors", sa.Integer, nullable=False),
        sa.Column("consecutive_failures", sa.Integer, nullable=False),
        sa.Column("latency_ms", sa.Float),
        sa.Column("in_flight", sa.Integer, nullable=False),
        sa.Column("updated_at", sa.Float(53), nullable=False),
    )
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("channel_id", sa.String(40)))
        batch.add_column(sa.Column("failed_channels", sa.JSON))
    op.create_index("ix_tasks_status_channel", "tasks", ["status", "channel_id"])


def downgrade() -> None:
    op.drop_index("ix_tasks_status_channel", "tasks")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("failed_channels")
        batch.drop_column("channel_id")
    op.drop_table("channel_health")
    op.drop_table("channels")
