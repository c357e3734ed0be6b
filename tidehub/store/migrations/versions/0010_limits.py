"""Per-key and per-account limits: requests per minute and tasks at once, and the partial indexes
that count a key's and an account's active tasks; the id of the request that submitted a task.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

ACTIVE_TASK = sa.text("status IN ('queued', 'running')")


def upgrade() -> None:
    for table in ("api_keys", "accounts"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("rpm", sa.Integer))
            batch.add_column(sa.Column("max_concurrency", sa.Integer))
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("request_id", sa.String(128)))
    op.create_index("ix_tasks_active_key", "tasks", ["key_id"], sqlite_where=ACTIVE_TASK,
                    postgresql_where=ACTIVE_TASK)
    op.create_index("ix_tasks_active_account", "tasks", ["account_id"], sqlite_where=ACTIVE_TASK,
                    postgresql_where=ACTIVE_TASK)


def downgrade() -> None:
    op.drop_index("ix_tasks_active_account", "tasks")
    op.drop_index("ix_tasks_active_key", "tasks")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("request_id")
    for table in ("api_keys", "accounts"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("max_concurrency")
            batch.drop_column("rpm")
