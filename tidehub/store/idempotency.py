"""Idempotency keys: the task a (account, key) pair gave, for a day. They are written with the
task they name (store/tasks.py)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from tidehub.store.base import Queries, writes
from tidehub.store.schema import idempotency_keys



class IdempotencyQueries(Queries):
    def get(self, account_id: str, key: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(idempotency_keys).where(
                idempotency_keys.c.account_id == account_id, idempotency_keys.c.key == key)).first()
        return dict(row._mapping) if row else None

    @writes
    def forget(self, conn: sa.Connection, before: float) -> int:
        return conn.execute(sa.delete(idempotency_keys).where(idempotency_keys.c.created_at < before)).rowcount
