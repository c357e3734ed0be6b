"""Accounts and their money (balances, the ledger), API keys, and redemption codes."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from tidehub.store.base import Queries, writes
from tidehub.store.schema import accounts, api_keys, ledger, redemption_codes

# The hot reads, built once (building a statement costs more than running it on SQLite).
_KEY_BY_HASH = sa.select(
    api_keys.c.id, api_keys.c.account_id, api_keys.c.revoked_at, api_keys.c.expires_at,
    api_keys.c.allowed_models, api_keys.c.allowed_ips,
).where(
    api_keys.c.key_hash == sa.bindparam("key_hash")
)


def credit(conn: sa.Connection, account_id: str, amount: int, now: float, kind: str, note: str) -> bool:
    """Add ``amount`` to an account's balance and write the ledger entry (a top-up or a redemption)."""
    done = conn.execute(
        sa.update(accounts).where(accounts.c.id == account_id)
        .values(credits=accounts.c.credits + amount, added=accounts.c.added + amount)
    ).rowcount
    if done:
        conn.execute(sa.insert(ledger).values(account_id=account_id, kind=kind, amount=amount, note=note,
                                              created_at=now))
    return done == 1


class AccountQueries(Queries):
    @writes
    def create(self, conn: sa.Connection, account_id: str, name: str, now: float, credits: int = 0) -> None:
        conn.execute(sa.insert(accounts).values(id=account_id, name=name, created_at=now))
        if credits:
            credit(conn, account_id, credits, now, "topup", "initial credits")

    @writes
    def add_credits(self, conn: sa.Connection, account_id: str, amount: int, now: float, note: str = "") -> bool:
        return credit(conn, account_id, amount, now, "topup", note)

    def get(self, account_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(accounts).where(accounts.c.id == account_id)).first()
        return dict(row._mapping) if row else None

    def ledger(self, account_id: str) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(ledger).where(ledger.c.account_id == account_id).order_by(ledger.c.id)).all()
        return [dict(r._mapping) for r in rows]

    def exists(self, account_id: str) -> bool:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(accounts.c.id).where(accounts.c.id == account_id)).first() is not None


class KeyQueries(Queries):
    @writes
    def insert(self, conn: sa.Connection, **values: Any) -> None:
        conn.execute(sa.insert(api_keys).values(**values))

    def by_hash(self, key_hash: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(_KEY_BY_HASH, {"key_hash": key_hash}).first()
        return dict(row._mapping) if row else None

    def list(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(
                    api_keys.c.id,
                    api_keys.c.account_id,
                    api_keys.c.name,
                    api_keys.c.prefix,
                    api_keys.c.created_at,
                    api_keys.c.revoked_at,
                    api_keys.c.expires_at,
                    api_keys.c.spend_cap,
                    api_keys.c.spent,
                    api_keys.c.allowed_models,
                    api_keys.c.allowed_ips,
                ).order_by(api_keys.c.created_at)
            ).all()
        return [dict(r._mapping) for r in rows]

    @writes
    def revoke(self, conn: sa.Connection, key_id: str, now: float) -> bool:
        res = conn.execute(
            sa.update(api_keys)
            .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
            .values(revoked_at=now)
        )
        return res.rowcount == 1


class CodeQueries(Queries):
    @writes
    def insert(self, conn: sa.Connection, rows: list[dict[str, Any]]) -> None:
        conn.execute(sa.insert(redemption_codes), rows)

    @writes
    def redeem(self, conn: sa.Connection, code_hash: str, account_id: str, now: float) -> tuple[str, int]:
        """Use a code once, ever: ("ok", credits) or (reason, 0) with reason unknown, used or expired."""
        row = conn.execute(
            sa.update(redemption_codes)
            .where(redemption_codes.c.code_hash == code_hash, redemption_codes.c.redeemed_at.is_(None),
                   sa.or_(redemption_codes.c.expires_at.is_(None), redemption_codes.c.expires_at > now))
            .values(redeemed_at=now, redeemed_by=account_id)
            .returning(redemption_codes.c.credits, redemption_codes.c.prefix)
        ).first()
        if row is not None:
            credit(conn, account_id, row.credits, now, "redeem", f"code {row.prefix}")
            return "ok", row.credits
        code = conn.execute(sa.select(redemption_codes.c.redeemed_at).where(
            redemption_codes.c.code_hash == code_hash)).first()
        if code is None:
            return "unknown", 0
        return ("used" if code.redeemed_at is not None else "expired"), 0
