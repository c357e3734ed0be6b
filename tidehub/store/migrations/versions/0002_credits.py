"""Credits: account balances, key limits, the ledger, redemption codes, usage columns on tasks.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("accounts") as batch:
        batch.add_column(sa.Column("credits", sa.BigInteger, nullable=False, server_default="0"))
        batch.add_column(sa.Column("held", sa.BigInteger, nullable=False, server_default="0"))
        batch.add_column(sa.Column("spent", sa.BigInteger, nullable=False, server_default="0"))
        batch.add_column(sa.Column("added", sa.BigInteger, nullable=False, server_default="0"))
        batch.create_check_constraint("ck_accounts_not_negative", "credits >= 0 AND held >= 0")
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("expires_at", sa.Float(53)))
        batch.add_column(sa.Column("spend_cap", sa.BigInteger))
        batch.add_column(sa.Column("spent", sa.BigInteger, nullable=False, server_default="0"))
        batch.add_column(sa.Column("allowed_models", sa.JSON))
        batch.add_column(sa.Column("allowed_ips", sa.JSON))
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("user_identifier", sa.String(200)))
        batch.add_column(sa.Column("held", sa.BigInteger, nullable=False, server_default="0"))
        batch.add_column(sa.Column("captured", sa.BigInteger, nullable=False, server_default="0"))
    op.create_table(
        "ledger",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("account_id", sa.String(40), nullable=False),
        sa.Column("task_id", sa.String(64)),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.Column("note", sa.String(200)),
        sa.Column("created_at", sa.Float(53), nullable=False),
        sa.UniqueConstraint("task_id", "kind", name="uq_ledger_task_kind"),
    )
    op.create_index("ix_ledger_account_id", "ledger", ["account_id"])
    op.create_table(
        "redemption_codes",
        sa.Column("code_hash", sa.String(64), primary_key=True),
        sa.Column("prefix", sa.String(20), nullable=False),
        sa.Column("credits", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.Float(53), nullable=False),
        sa.Column("expires_at", sa.Float(53)),
        sa.Column("redeemed_at", sa.Float(53)),
        sa.Column("redeemed_by", sa.String(40)),
    )


def downgrade() -> None:
    op.drop_table("redemption_codes")
    op.drop_table("ledger")
    with op.batch_alter_table("tasks") as batch:
        for name in ("captured", "held", "user_identifier"):
            batch.drop_column(name)
    with op.batch_alter_table("api_keys") as batch:
        for name in ("allowed_ips", "allowed_models", "spent", "spend_cap", "expires_at"):
            batch.drop_column(name)
    with op.batch_alter_table("accounts") as batch:
        batch.drop_constraint("ck_accounts_not_negative", type_="check")
        for name in ("added", "spent", "held", "credits"):
            batch.drop_column(name)
