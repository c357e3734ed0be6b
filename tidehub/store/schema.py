"""The one schema. Every change to it is also a numbered Alembic migration in migrations/versions.

Times are float epoch seconds: cheap to compare in the engine's claim query on every backend.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

accounts = sa.Table(
    "accounts",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False, server_default=""),
    sa.Column("created_at", sa.Float(53), nullable=False),
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("account_id", sa.String(40), sa.ForeignKey("accounts.id"), nullable=False, index=True),
    sa.Column("name", sa.String(200), nullable=False, server_default=""),
    # The first characters of the key, so an operator can tell keys apart without the secret.
    sa.Column("prefix", sa.String(20), nullable=False),
    sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("created_at", sa.Float(53), nullable=False),
    sa.Column("revoked_at", sa.Float(53)),
)

tasks = sa.Table(
    "tasks",
    metadata,
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
    # Set while the upstream still has to be told about a cancel or timeout.
    sa.Column("cancel_upstream", sa.Boolean, nullable=False, server_default=sa.false()),
    # The engine has work for a task when next_check_at is due and no live lease covers it.
    sa.Column("next_check_at", sa.Float(53)),
    sa.Column("lease_owner", sa.String(64)),
    sa.Column("lease_until", sa.Float(53)),
    sa.Column("deadline_at", sa.Float(53), nullable=False),
    sa.Column("created_at", sa.Float(53), nullable=False),
    sa.Column("updated_at", sa.Float(53), nullable=False),
    sa.Column("started_at", sa.Float(53)),
    sa.Column("finished_at", sa.Float(53)),
    sa.Index("ix_tasks_next_check_at", "next_check_at"),
    sa.Index("ix_tasks_account_created", "account_id", "created_at"),
)

assets = sa.Table(
    "assets",
    metadata,
    sa.Column("token", sa.String(64), primary_key=True),
    sa.Column("task_id", sa.String(64), nullable=False, index=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("path", sa.String(400), nullable=False),
    sa.Column("content_type", sa.String(100), nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("source_url", sa.Text, nullable=False),
    sa.Column("created_at", sa.Float(53), nullable=False),
    sa.Column("expires_at", sa.Float(53), nullable=False, index=True),
)
