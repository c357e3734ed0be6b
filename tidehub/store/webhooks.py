"""Client webhooks: the account's signing secret, the delivery outbox and its attempts."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from tidehub.store.base import Queries, heavy, writes
from tidehub.store.paging import Page, fetch_page
from tidehub.store.schema import accounts, webhook_attempts, webhook_deliveries



class WebhookQueries(Queries):
    @writes
    def secret(self, conn: sa.Connection, account_id: str, new: str, *, rotate: bool = False) -> str:
        """The account's signing secret: ``new`` becomes it if there is none yet (or on rotation)."""
        query = sa.update(accounts).where(accounts.c.id == account_id)
        if not rotate:
            query = query.where(accounts.c.webhook_secret.is_(None))
        conn.execute(query.values(webhook_secret=new))
        return conn.execute(sa.select(accounts.c.webhook_secret).where(accounts.c.id == account_id)).scalar_one()

    @writes
    def claim(self, conn: sa.Connection, now: float, lease_until: float, limit: int) -> list[dict[str, Any]]:
        due = (sa.select(webhook_deliveries.c.id)
               .where(webhook_deliveries.c.next_attempt_at <= now, webhook_deliveries.c.status == "pending")
               .order_by(webhook_deliveries.c.next_attempt_at).limit(limit))
        if self.dialect == "postgresql":
            due = due.with_for_update(skip_locked=True)
        query = (sa.update(webhook_deliveries).where(webhook_deliveries.c.id.in_(due.scalar_subquery()))
                 .values(next_attempt_at=lease_until).returning(*webhook_deliveries.c))
        return [dict(r._mapping) for r in conn.execute(query).all()]

    @writes
    def record_attempt(
        self, conn: sa.Connection, delivery_id: str, attempt: dict[str, Any], status: str, next_attempt_at: float | None
    ) -> None:
        conn.execute(sa.insert(webhook_attempts).values(delivery_id=delivery_id, **attempt))
        values: dict[str, Any] = {"status": status, "attempts": attempt["attempt"], "next_attempt_at": next_attempt_at,
                                  "last_status_code": attempt["status_code"], "last_error": attempt["error"]}
        if status == "delivered":
            values["delivered_at"] = attempt["at"]
        conn.execute(sa.update(webhook_deliveries).where(webhook_deliveries.c.id == delivery_id).values(**values))

    @heavy
    def deliveries(self, account_id: str, task_id: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        query = sa.select(webhook_deliveries).where(webhook_deliveries.c.account_id == account_id)
        if task_id is not None:
            query = query.where(webhook_deliveries.c.task_id == task_id)
        query = query.order_by(webhook_deliveries.c.created_at.desc()).limit(limit)
        with self.engine.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(query).all()]
            ids = [r["id"] for r in rows]
            attempts = conn.execute(sa.select(webhook_attempts).where(webhook_attempts.c.delivery_id.in_(ids))
                                    .order_by(webhook_attempts.c.id)).all() if ids else []
        by_delivery: dict[str, list[dict[str, Any]]] = {}
        for a in attempts:
            by_delivery.setdefault(a.delivery_id, []).append(dict(a._mapping))
        for row in rows:
            row["attempt_log"] = by_delivery.get(row["id"], [])
        return rows

    @writes
    def redeliver(self, conn: sa.Connection, account_id: str | None, delivery_id: str, now: float) -> bool:
        """Send a delivery again (``account_id`` None: whichever account's, for operators)."""
        query = sa.update(webhook_deliveries).where(webhook_deliveries.c.id == delivery_id)
        if account_id is not None:
            query = query.where(webhook_deliveries.c.account_id == account_id)
        return conn.execute(query.values(status="pending", next_attempt_at=now)).rowcount == 1

    @heavy
    def page(self, *, account_id: str | None = None, task_id: str | None = None, status: str | None = None,
             after: str | None = None, limit: int = 50) -> Page:
        """Deliveries newest first, each with its attempts."""
        d = webhook_deliveries.c
        query = sa.select(webhook_deliveries)
        for column, value in ((d.account_id, account_id), (d.task_id, task_id), (d.status, status)):
            if value:
                query = query.where(column == value)
        with self.engine.connect() as conn:
            page = fetch_page(conn, query, d.created_at, d.id, after, limit)
            ids = [r["id"] for r in page.rows]
            attempts = conn.execute(sa.select(webhook_attempts).where(webhook_attempts.c.delivery_id.in_(ids))
                                    .order_by(webhook_attempts.c.id)).all() if ids else []
        by_delivery: dict[str, list[dict[str, Any]]] = {}
        for a in attempts:
            by_delivery.setdefault(a.delivery_id, []).append(dict(a._mapping))
        for row in page.rows:
            row["attempt_log"] = by_delivery.get(row["id"], [])
        return page
