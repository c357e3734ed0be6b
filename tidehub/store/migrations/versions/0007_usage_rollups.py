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


_GROUP = ("period", "start", "account_id", "key_id", "model", "channel_id", "user_identifier", "kind", "outcome")
_SUMS = ("count", "credits", "input_tokens", "output_tokens", "latency_ms",
         *(f"lat_{i}" for i in range(_LATENCY_BUCKETS)))


def _backfill(conn: sa.Connection) -> None:
    """The settled tasks so far, rolled up in pages by id (the sums a settlement adds, at the one
    grain this revision has; 0009 adds the coarser ones)."""
    from sqlalchemy.dialects import postgresql, sqlite

    from tidehub.store import rollups

    columns = ("id", "mode", "account_id", "key_id", "model", "channel_id", "user_identifier", "status",
               "captured", "created_at", "started_at", "finished_at", "output")
    tasks = sa.table("tasks", *(sa.column(name) for name in columns[:-1]), sa.column("output", sa.JSON))
    table = sa.table("usage_rollups", *(sa.column(name) for name in (*_GROUP, *_SUMS)))
    insert = (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(table)
    upsert = insert.on_conflict_do_update(index_elements=list(_GROUP),
                                          set_={n: table.c[n] + insert.excluded[n] for n in _SUMS})
    terminal = ("succeeded", "failed", "timeout", "canceled")
    after = ""
    while True:
        page = conn.execute(sa.select(tasks).where(tasks.c.id > after, tasks.c.status.in_(terminal))
                            .order_by(tasks.c.id).limit(5000)).all()
        if not page:
            return
        increments = [{k: v for k, v in i.items() if k != "grain"}
                      for i in rollups.contributions([dict(row._mapping) for row in page]) if i["grain"] == "key"]
        if increments:
            conn.execute(upsert, increments)
        after = page[-1].id


def downgrade() -> None:
    op.drop_index("ix_tasks_next_check_at", table_name="tasks")
    op.create_index("ix_tasks_next_check_at", "tasks", ["next_check_at"])
    op.drop_index("ix_usage_rollups_account", table_name="usage_rollups")
    op.drop_table("usage_rollups")
