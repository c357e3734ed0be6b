"""Channels (upstream accounts), the health the engines publish, and how busy each one is."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from tidehub.core.lifecycle import ACTIVE
from tidehub.store.base import Queries, heavy, writes
from tidehub.store.schema import channel_health, channels, tasks



class ChannelQueries(Queries):
    @writes
    def insert(self, conn: sa.Connection, row: dict[str, Any]) -> None:
        conn.execute(sa.insert(channels).values(**row))

    @writes
    def update(self, conn: sa.Connection, channel_id: str, values: dict[str, Any]) -> bool:
        return conn.execute(sa.update(channels).where(channels.c.id == channel_id).values(**values)).rowcount == 1

    def list(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(sa.select(channels).order_by(channels.c.name)).all()]

    def version(self) -> tuple[int, float]:
        """Changes when any channel changes: lets every process notice an edit made elsewhere."""
        with self.engine.connect() as conn:
            count, latest = conn.execute(sa.select(sa.func.count(), sa.func.max(channels.c.updated_at))).one()
        return int(count), float(latest or 0)

    @heavy
    def running_counts(self) -> dict[str, int]:
        query = (sa.select(tasks.c.channel_id, sa.func.count())
                 .where(tasks.c.status.in_(ACTIVE), tasks.c.channel_id.is_not(None))
                 .group_by(tasks.c.channel_id))
        with self.engine.connect() as conn:
            return {c: int(n) for c, n in conn.execute(query).all() if c is not None}

    @writes
    def save_health(self, conn: sa.Connection, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            updated = conn.execute(sa.update(channel_health).where(channel_health.c.channel_id == row["channel_id"])
                                   .values(**row)).rowcount
            if not updated:
                conn.execute(sa.insert(channel_health).values(**row))

    def health(self) -> dict[str, dict[str, Any]]:
        with self.engine.connect() as conn:
            return {r.channel_id: dict(r._mapping) for r in conn.execute(sa.select(channel_health)).all()}
