"""Mirrored result files: their rows (the files themselves live under the data dir)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from tidehub.store.base import Queries, writes
from tidehub.store.schema import assets



class AssetQueries(Queries):
    @writes
    def insert(self, conn: sa.Connection, rows: list[dict[str, Any]]) -> None:
        if rows:
            conn.execute(sa.insert(assets), rows)

    def get(self, token: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(assets).where(assets.c.token == token)).first()
        return dict(row._mapping) if row else None

    def of_task(self, task_id: str) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(assets).where(assets.c.task_id == task_id)).all()
        return [dict(r._mapping) for r in rows]

    def first_of_tasks(self, task_ids: list[str]) -> dict[str, dict[str, Any]]:
        """The first file of each of these tasks (a list page's previews), in one query."""
        if not task_ids:
            return {}
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(assets.c.task_id, assets.c.token, assets.c.name, assets.c.content_type)
                                .where(assets.c.task_id.in_(task_ids)).order_by(assets.c.name)).all()
        first: dict[str, dict[str, Any]] = {}
        for r in rows:
            first.setdefault(r.task_id, dict(r._mapping))
        return first

    def expired(self, now: float, limit: int = 500) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(assets.c.token, assets.c.path).where(assets.c.expires_at <= now).limit(limit)
            ).all()
        return [dict(r._mapping) for r in rows]

    @writes
    def delete(self, conn: sa.Connection, tokens: list[str]) -> None:
        if tokens:
            conn.execute(sa.delete(assets).where(assets.c.token.in_(tokens)))
