"""Usage rollups at three grains (key, account, model), kept in primary-key order on SQLite
(WITHOUT ROWID): the table is rebuilt, its rows kept as the key grain and summed into the others.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_LATENCY_BUCKETS = 14
_SUMS = ("count", "credits", "input_tokens", "output_tokens", "latency_ms",
         *(f"lat_{i}" for i in range(_LATENCY_BUCKETS)))
_GROUP = ("period", "grain", "start", "account_id", "key_id", "model", "channel_id", "user_identifier", "kind",
          "outcome")


def _create(name: str, *, grain: bool) -> None:
    op.create_table(
        name,
        sa.Column("period", sa.String(4), primary_key=True),
        *([sa.Column("grain", sa.String(8), primary_key=True)] if grain else []),
        sa.Column("start", sa.BigInteger, primary_key=True),
        sa.Column("account_id", sa.String(40), primary_key=True),
        sa.Column("key_id", sa.String(40), primary_key=True),
        sa.Column("model", sa.String(120), primary_key=True),
        sa.Column("channel_id", sa.String(40), primary_key=True),
        sa.Column("user_identifier", sa.String(200), primary_key=True),
        sa.Column("kind", sa.String(8), primary_key=True),
        sa.Column("outcome", sa.String(20), primary_key=True),
        *(sa.Column(name, sa.BigInteger, nullable=False) for name in _SUMS),
        sqlite_with_rowid=not grain,
    )


def _replace(new_table: str, index: list[str]) -> None:
    op.drop_index("ix_usage_rollups_account", table_name="usage_rollups")
    op.drop_table("usage_rollups")
    op.rename_table(new_table, "usage_rollups")
    op.create_index("ix_usage_rollups_account", "usage_rollups", index)


def upgrade() -> None:
    _create("usage_rollups_new", grain=True)
    sums = ", ".join(_SUMS)
    totals = ", ".join(f"SUM({name})" for name in _SUMS)
    columns = ", ".join(_GROUP)
    op.execute(f"INSERT INTO usage_rollups_new ({columns}, {sums}) SELECT period, 'key', start, account_id, key_id, "
               f"model, channel_id, user_identifier, kind, outcome, {sums} FROM usage_rollups")
    op.execute(f"INSERT INTO usage_rollups_new ({columns}, {sums}) SELECT period, 'account', start, account_id, '', "
               f"model, '', '', kind, outcome, {totals} FROM usage_rollups "
               f"GROUP BY period, start, account_id, model, kind, outcome")
    op.execute(f"INSERT INTO usage_rollups_new ({columns}, {sums}) SELECT period, 'model', start, '', '', "
               f"model, '', '', kind, outcome, {totals} FROM usage_rollups GROUP BY period, start, model, kind, outcome")
    _replace("usage_rollups_new", ["account_id", "period", "grain", "start"])


def downgrade() -> None:
    # The key grain holds every figure the coarser ones were summed from: it alone is kept.
    _create("usage_rollups_old", grain=False)
    columns = ", ".join(name for name in _GROUP if name != "grain")
    sums = ", ".join(_SUMS)
    op.execute(f"INSERT INTO usage_rollups_old ({columns}, {sums}) SELECT {columns}, {sums} FROM usage_rollups "
               f"WHERE grain = 'key'")
    _replace("usage_rollups_old", ["account_id", "period", "start"])
