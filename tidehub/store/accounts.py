"""Accounts and their money (balances, the ledger), API keys, and redemption codes."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from tidehub.store.base import Queries, heavy, writes
from tidehub.store.paging import Page, fetch_page
from tidehub.store.schema import accounts, api_keys, ledger, redemption_codes

# The hot reads, built once (building a statement costs more than running it on SQLite).
_KEY_BY_HASH = sa.select(
    api_keys.c.id, api_keys.c.account_id, api_keys.c.revoked_at, api_keys.c.expires_at,
    api_keys.c.allowed_models, api_keys.c.allowed_ips, api_keys.c.rpm, api_keys.c.max_concurrency,
    accounts.c.rpm.label("account_rpm"), accounts.c.max_concurrency.label("account_max_concurrency"),
).select_from(api_keys.join(accounts, accounts.c.id == api_keys.c.account_id)).where(
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

    @heavy
    def search(self, text: str = "", *, after: str | None = None, limit: int = 50) -> Page:
        """Accounts whose id starts with ``text`` or whose name contains it, newest first."""
        query = sa.select(accounts.c.id, accounts.c.name, accounts.c.created_at, accounts.c.credits,
                          accounts.c.held, accounts.c.spent, accounts.c.added)
        if text:
            query = query.where(sa.or_(accounts.c.id.startswith(text, autoescape=True),
                                       accounts.c.name.icontains(text, autoescape=True)))
        with self.engine.connect() as conn:
            return fetch_page(conn, query, accounts.c.created_at, accounts.c.id, after, limit)

    @heavy
    def ledger_page(self, account_id: str, *, after: str | None = None, limit: int = 50) -> Page:
        query = sa.select(ledger).where(ledger.c.account_id == account_id)
        with self.engine.connect() as conn:
            # By id, which grows with time: the account index then yields the rows in order.
            return fetch_page(conn, query, ledger.c.id, ledger.c.id, after, limit)

    @writes
    def set_limits(self, conn: sa.Connection, account_id: str, values: dict[str, Any]) -> bool:
        """The account's rpm and max_concurrency (None: no limit)."""
        return conn.execute(sa.update(accounts).where(accounts.c.id == account_id).values(**values)).rowcount == 1

    def exists(self, account_id: str) -> bool:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(accounts.c.id).where(accounts.c.id == account_id)).first() is not None


# What may be shown of a key: never its hash.
_KEY_PUBLIC = [api_keys.c.id, api_keys.c.account_id, api_keys.c.name, api_keys.c.prefix, api_keys.c.created_at,
               api_keys.c.revoked_at, api_keys.c.expires_at, api_keys.c.spend_cap, api_keys.c.spent,
               api_keys.c.allowed_models, api_keys.c.allowed_ips, api_keys.c.rpm, api_keys.c.max_concurrency]


class KeyQueries(Queries):
    @writes
    def insert(self, conn: sa.Connection, **values: Any) -> None:
        conn.execute(sa.insert(api_keys).values(**values))

    def get(self, key_id: str, account_id: str | None = None) -> dict[str, Any] | None:
        query = sa.select(*_KEY_PUBLIC).where(api_keys.c.id == key_id)
        if account_id is not None:
            query = query.where(api_keys.c.account_id == account_id)
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return dict(row._mapping) if row else None

    @heavy
    def page(self, *, account_id: str | None = None, state: str | None = None, text: str = "",
             now: float = 0.0, after: str | None = None, limit: int = 50) -> Page:
        """Keys newest first; ``state`` is active, revoked or expired."""
        query = sa.select(*_KEY_PUBLIC)
        if account_id:
            query = query.where(api_keys.c.account_id == account_id)
        if state == "active":
            query = query.where(api_keys.c.revoked_at.is_(None),
                                sa.or_(api_keys.c.expires_at.is_(None), api_keys.c.expires_at > now))
        elif state == "revoked":
            query = query.where(api_keys.c.revoked_at.is_not(None))
        elif state == "expired":
            query = query.where(api_keys.c.revoked_at.is_(None), api_keys.c.expires_at <= now)
        if text:
            query = query.where(sa.or_(api_keys.c.id == text, api_keys.c.prefix.startswith(text, autoescape=True),
                                       api_keys.c.name.contains(text, autoescape=True)))
        with self.engine.connect() as conn:
            return fetch_page(conn, query, api_keys.c.created_at, api_keys.c.id, after, limit)

    @writes
    def update(self, conn: sa.Connection, key_id: str, values: dict[str, Any]) -> bool:
        return conn.execute(sa.update(api_keys).where(api_keys.c.id == key_id).values(**values)).rowcount == 1

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
                    api_keys.c.rpm,
                    api_keys.c.max_concurrency,
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
        """Use a code once, ever: ("ok", credits) or (reason, 0) with reason unknown, used, disabled
        or expired."""
        row = conn.execute(
            sa.update(redemption_codes)
            .where(redemption_codes.c.code_hash == code_hash, redemption_codes.c.redeemed_at.is_(None),
                   redemption_codes.c.disabled_at.is_(None),
                   sa.or_(redemption_codes.c.expires_at.is_(None), redemption_codes.c.expires_at > now))
            .values(redeemed_at=now, redeemed_by=account_id)
            .returning(redemption_codes.c.credits, redemption_codes.c.prefix)
        ).first()
        if row is not None:
            credit(conn, account_id, row.credits, now, "redeem", f"code {row.prefix}")
            return "ok", row.credits
        code = conn.execute(sa.select(redemption_codes.c.redeemed_at, redemption_codes.c.disabled_at).where(
            redemption_codes.c.code_hash == code_hash)).first()
        if code is None:
            return "unknown", 0
        if code.redeemed_at is not None:
            return "used", 0
        return ("disabled" if code.disabled_at is not None else "expired"), 0

    @heavy
    def page(self, *, state: str | None = None, batch_id: str | None = None, now: float = 0.0,
             after: str | None = None, limit: int = 50) -> Page:
        """Codes newest first (``state``: unused, used, expired or disabled), shown by their id (the
        start of their hash) and printed prefix: the codes themselves are not stored."""
        c = redemption_codes.c
        query = sa.select(sa.func.substr(c.code_hash, 1, 16).label("id"), c.prefix, c.credits, c.created_at,
                          c.expires_at, c.redeemed_at, c.redeemed_by, c.disabled_at, c.batch_id, c.code_hash)
        usable = [c.redeemed_at.is_(None), c.disabled_at.is_(None)]
        if state == "unused":
            query = query.where(*usable, sa.or_(c.expires_at.is_(None), c.expires_at > now))
        elif state == "used":
            query = query.where(c.redeemed_at.is_not(None))
        elif state == "expired":
            query = query.where(*usable, c.expires_at <= now)
        elif state == "disabled":
            query = query.where(c.redeemed_at.is_(None), c.disabled_at.is_not(None))
        if batch_id:
            query = query.where(c.batch_id == batch_id)
        with self.engine.connect() as conn:
            page = fetch_page(conn, query, c.created_at, c.code_hash, after, limit)
        for row in page.rows:
            del row["code_hash"]
        return page

    @writes
    def disable(self, conn: sa.Connection, code_id: str, now: float) -> int:
        """Disable unused codes by id (the first 16 hex digits of the hash) or by batch id."""
        c = redemption_codes.c
        which = c.batch_id == code_id if code_id.startswith("batch_") else c.code_hash.startswith(code_id)
        return conn.execute(sa.update(redemption_codes)
                            .where(which, c.redeemed_at.is_(None), c.disabled_at.is_(None))
                            .values(disabled_at=now)).rowcount
