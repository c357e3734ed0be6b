"""The console: operators, their sessions and the audit log; redemption codes can be disabled and
come in batches; indexes for the console's lists (newest first, over a time window).

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "operators",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("name", sa.String(100), nullable=False, unique=True),
        sa.Column("role", sa.String(20), nullable=False),
        sa.Column("password_hash", sa.String(200), nullable=False),
        sa.Column("created_at", sa.Float(53), nullable=False),
        sa.Column("updated_at", sa.Float(53), nullable=False),
        sa.Column("last_login_at", sa.Float(53)),
        sa.Column("disabled_at", sa.Float(53)),
    )
    op.create_table(
        "console_sessions",
        sa.Column("token_hash", sa.String(64), primary_key=True),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("operator_id", sa.String(40)),
        sa.Column("account_id", sa.String(40)),
        sa.Column("key_id", sa.String(40)),
        sa.Column("csrf_token", sa.String(64), nullable=False),
        sa.Column("address", sa.String(100)),
        sa.Column("created_at", sa.Float(53), nullable=False),
        sa.Column("last_seen_at", sa.Float(53), nullable=False),
        sa.Column("expires_at", sa.Float(53), nullable=False),
    )
    op.create_index("ix_console_sessions_operator_id", "console_sessions", ["operator_id"])
    op.create_index("ix_console_sessions_key_id", "console_sessions", ["key_id"])
    op.create_index("ix_console_sessions_expires_at", "console_sessions", ["expires_at"])
    op.create_table(
        "audit_log",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("at", sa.Float(53), nullable=False),
        sa.Column("actor", sa.String(120), nullable=False),
        sa.Column("address", sa.String(100)),
        sa.Column("action", sa.String(60), nullable=False),
        sa.Column("target", sa.String(120)),
        sa.Column("details", sa.JSON),
    )
    op.create_index("ix_audit_log_at", "audit_log", ["at"])
    with op.batch_alter_table("redemption_codes") as batch:
        batch.add_column(sa.Column("disabled_at", sa.Float(53)))
        batch.add_column(sa.Column("batch_id", sa.String(40)))
    op.create_index("ix_redemption_codes_created_at", "redemption_codes", ["created_at"])
    op.create_index("ix_api_keys_created_at", "api_keys", ["created_at"])
    op.create_index("ix_accounts_created_at", "accounts", ["created_at"])
    op.create_index("ix_webhook_deliveries_created_at", "webhook_deliveries", ["created_at"])
    op.create_index("ix_tasks_created", "tasks", ["created_at"])
    op.create_index("ix_tasks_key_created", "tasks", ["key_id", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_tasks_key_created", "tasks")
    op.drop_index("ix_tasks_created", "tasks")
    op.drop_index("ix_webhook_deliveries_created_at", "webhook_deliveries")
    op.drop_index("ix_accounts_created_at", "accounts")
    op.drop_index("ix_api_keys_created_at", "api_keys")
    op.drop_index("ix_redemption_codes_created_at", "redemption_codes")
    with op.batch_alter_table("redemption_codes") as batch:
        batch.drop_column("batch_id")
        batch.drop_column("disabled_at")
    op.drop_table("audit_log")
    op.drop_table("console_sessions")
    op.drop_table("operators")
