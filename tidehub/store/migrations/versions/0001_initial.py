"""Accounts, API keys, tasks and assets.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False, server_default=""),
        sa.Column("created_at", sa.Float(53), nullable=False),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("account_id", sa.String(40), sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("name", sa.String(200), nullable=False, server_default=""),
        sa.Column("prefix", sa.String(20), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", sa.Float(53), nullable=False),
        sa.Column("revoked_at", sa.Float(53)),
    )
    op.create_index("ix_api_keys_account_id", "api_keys", ["account_id"])
    op.create_table(
        "tasks",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("account_id", sa.String(40), nullable=False),
        sa.Column("key_id", sa.String(40), nullable=False),
        sa.Column("model", sa.String(120), nullable=False),
        sa.Column("endpoint", sa.String(200), nullable=False),
        sa.Column("capability", sa.String(20), nullable=False),
        sa.Column("mode", sa.String(60), nullable=False),
        sa.Column("input", sa.JSON, nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("progress", sa.Integer, nullable=False, server_default="0"),
        sa.Column("queue_position", sa.Integer),
        sa.Column("adapter", sa.String(40)),
        sa.Column("upstream_ref", sa.String(200)),
        sa.Column("upstream", sa.JSON),
        sa.Column("output", sa.JSON),
        sa.Column("error_code", sa.String(60)),
        sa.Column("error_message", sa.Text),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("webhook_url", sa.Text),
        sa.Column("cancel_upstream", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("next_check_at", sa.Float(53)),
        sa.Column("lease_owner", sa.String(64)),
        sa.Column("lease_until", sa.Float(53)),
        sa.Column("deadline_at", sa.Float(53), nullable=False),
        sa.Column("created_at", sa.Float(53), nullable=False),
        sa.Column("updated_at", sa.Float(53), nullable=False),
        sa.Column("started_at", sa.Float(53)),
        sa.Column("finished_at", sa.Float(53)),
    )
    op.create_index("ix_tasks_next_check_at", "tasks", ["next_check_at"])
    op.create_index("ix_tasks_account_created", "tasks", ["account_id", "created_at"])
    op.create_table(
        "assets",
        sa.Column("token", sa.String(64), primary_key=True),
        sa.Column("task_id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("path", sa.String(400), nullable=False),
        sa.Column("content_type", sa.String(100), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("source_url", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float(53), nullable=False),
        sa.Column("expires_at", sa.Float(53), nullable=False),
    )
    op.create_index("ix_assets_task_id", "assets", ["task_id"])
    op.create_index("ix_assets_expires_at", "assets", ["expires_at"])


def downgrade() -> None:
    op.drop_table("assets")
    op.drop_table("tasks")
    op.drop_table("api_keys")
    op.drop_table("accounts")
