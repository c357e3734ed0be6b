"""Usage rollups by hour and day (filled from the tasks already settled), and the engine's due
index narrowed to the rows it still has work for.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_LATENCY_BUCKETS = 14


def upgrade() -> None:
    op.create_table(
        "usage_rollups",
        sa.Column("period", sa.String(4), primary_key=True),
        sa.Column("start", sa.BigInteger, primary_key=True),
        sa.Column("account_id", sa.String(40), primary_key=True),
        sa.Column("key_id", sa.String(40), primary_key=True),
        sa.Column("model", sa.String(120), primary_key=True),
        sa.Column("channel_id", sa.String(40), primary_key=True),
        sa.Column("user_identifier", sa.String(200), primary_key=True),
        sa.Column("kind", sa.String(8), primary_key=True),
        sa.Column("outcome", sa.String(20), primary_key=True),
        sa.Column("count", sa.BigInteger, nullable=False),
        sa.Column("credits", sa.BigInteger, nullable=False),
        sa.Column("input_tokens", sa.BigInteger, nullable=False),
        sa.Column("output_tokens", sa.BigInteger, nullable=False),
        sa.Column("latency_ms", sa.BigInteger, nullable=False),
        *(sa.Column(f"lat_{i}", sa.BigInteger, nullable=False) for i in range(_LATENCY_BUCKETS)),
    )
    op.create_index("ix_usage_rollups_account", "usage_rollups", ["account_id", "period", "start"])
    op.drop_index("ix_tasks_next_check_at", table_name="tasks")
    op.create_index("ix_tasks_next_check_at", "tasks", ["next_check_at"],
                    sqlite_where=sa.text("next_check_at IS NOT NULL"),
                    postgresql_where=sa.text("next_check_at IS NOT NULL"))
    _backfill(op.get_bind())


def _backfill(conn: sa.Connection) -> None:
    """The settled tasks so far, rolled up in pages by id (the same sums a settlement adds)."""
    from tidehub.store import rollups

    columns = ("id", "mode", "account_id", "key_id", "model", "channel_id", "user_identifier", "status",
               "captured", "created_at", "started_at", "finished_at", "output")
    tasks = sa.table("tasks", *(sa.column(name) for name in columns[:-1]), sa.column("output", sa.JSON))
    terminal = ("succeeded", "failed", "timeout", "canceled")
    after = ""
    while True:
        page = conn.execute(sa.select(tasks).where(tasks.c.id > after, tasks.c.status.in_(terminal))
                            .order_by(tasks.c.id).limit(5000)).all()
        if not page:
            return
        rollups.add(conn, [dict(row._mapping) for row in page])
        after = page[-1].id


def downgrade() -> None:
    op.drop_index("ix_tasks_next_check_at", table_name="tasks")
    op.create_index("ix_tasks_next_check_at", "tasks", ["next_check_at"])
    op.drop_index("ix_usage_rollups_account", table_name="usage_rollups")
    op.drop_table("usage_rollups")
