"""The console's own rows: operators, sign-in sessions, and the audit log."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from tidehub.store.base import Queries, heavy, writes
from tidehub.store.paging import Page, fetch_page
from tidehub.store.schema import api_keys, audit_log, console_sessions, operators, tasks
from tidehub.store.tasks import CREDIT_BLOCK

# What the console may show of an operator: never the password hash.
_PUBLIC = [operators.c.id, operators.c.name, operators.c.role, operators.c.created_at, operators.c.updated_at,
           operators.c.last_login_at, operators.c.disabled_at]


class OperatorQueries(Queries):
    @writes
    def insert(self, conn: sa.Connection, row: dict[str, Any]) -> None:
        conn.execute(sa.insert(operators).values(**row))

    def by_name(self, name: str, *, with_hash: bool = False) -> dict[str, Any] | None:
        columns = [*_PUBLIC, operators.c.password_hash] if with_hash else _PUBLIC
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(*columns).where(operators.c.name == name)).first()
        return dict(row._mapping) if row else None

    def list(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(sa.select(*_PUBLIC).order_by(operators.c.name)).all()]

    @writes
    def update(self, conn: sa.Connection, operator_id: str, values: dict[str, Any]) -> bool:
        return conn.execute(sa.update(operators).where(operators.c.id == operator_id).values(**values)).rowcount == 1

    @writes
    def disable(self, conn: sa.Connection, operator_id: str, now: float) -> bool:
        """Disable an operator and end every session of theirs, in one transaction."""
        done = conn.execute(sa.update(operators).where(operators.c.id == operator_id, operators.c.disabled_at.is_(None))
                            .values(disabled_at=now, updated_at=now)).rowcount == 1
        conn.execute(sa.delete(console_sessions).where(console_sessions.c.operator_id == operator_id))
        return done


class SessionQueries(Queries):
    @writes
    def insert(self, conn: sa.Connection, row: dict[str, Any]) -> None:
        conn.execute(sa.insert(console_sessions).values(**row))

    def resolve(self, token_hash: str) -> dict[str, Any] | None:
        """The session with what decides whether it still stands: its operator (name, role,
        disabled) or its key (revoked, expiry)."""
        query = (
            sa.select(console_sessions, operators.c.name.label("operator_name"), operators.c.role,
                      operators.c.disabled_at.label("operator_disabled_at"),
                      api_keys.c.revoked_at.label("key_revoked_at"), api_keys.c.expires_at.label("key_expires_at"),
                      api_keys.c.name.label("key_name"), api_keys.c.prefix.label("key_prefix"))
            .select_from(console_sessions
                         .outerjoin(operators, operators.c.id == console_sessions.c.operator_id)
                         .outerjoin(api_keys, api_keys.c.id == console_sessions.c.key_id))
            .where(console_sessions.c.token_hash == token_hash)
        )
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return dict(row._mapping) if row else None

    @writes
    def touch(self, conn: sa.Connection, token_hash: str, now: float) -> None:
        conn.execute(sa.update(console_sessions).where(console_sessions.c.token_hash == token_hash)
                     .values(last_seen_at=now))

    @writes
    def delete(self, conn: sa.Connection, token_hash: str) -> None:
        conn.execute(sa.delete(console_sessions).where(console_sessions.c.token_hash == token_hash))

    @writes
    def delete_of_operator(self, conn: sa.Connection, operator_id: str) -> int:
        return conn.execute(sa.delete(console_sessions).where(console_sessions.c.operator_id == operator_id)).rowcount

    @writes
    def sweep(self, conn: sa.Connection, now: float, idle_before: float) -> int:
        """Delete the sessions past their absolute expiry or idle too long."""
        return conn.execute(sa.delete(console_sessions).where(
            sa.or_(console_sessions.c.expires_at <= now, console_sessions.c.last_seen_at < idle_before))).rowcount


class AuditQueries(Queries):
    @writes
    def write(self, conn: sa.Connection, row: dict[str, Any]) -> None:
        conn.execute(sa.insert(audit_log).values(**row))

    @heavy
    def page(self, *, since: float | None = None, actor: str | None = None, action: str | None = None,
             target: str | None = None, after: str | None = None, limit: int = 50) -> Page:
        query = sa.select(audit_log)
        if since is not None:
            query = query.where(audit_log.c.at >= since)
        if actor:
            query = query.where(audit_log.c.actor == actor)
        if action:
            # "key" matches key.create and key.revoke.
            query = query.where(sa.or_(audit_log.c.action == action, audit_log.c.action.like(f"{action}.%")))
        if target:
            query = query.where(audit_log.c.target == target)
        with self.engine.connect() as conn:
            return fetch_page(conn, query, audit_log.c.at, audit_log.c.id, after, limit)


class TaskListQueries(Queries):
    """The console's task and relay-call list.

    Interim: the ``stats`` work brings ``store.tasks.page`` with the same filters; the console
    moves to it once that lands, and this class goes."""

    @heavy
    def page(self, *, since: float | None = None, until: float | None = None, status: str | None = None,
             model: str | None = None, channel_id: str | None = None, account_id: str | None = None,
             key_id: str | None = None, user_identifier: str | None = None, task_id: str | None = None,
             after: str | None = None, limit: int = 50) -> Page:
        t = tasks.c
        columns = [t.id, t.account_id, t.key_id, t.model, t.endpoint, t.capability, t.mode, t.status, t.progress,
                   t.channel_id, t.adapter, t.user_identifier, t.held, t.captured, t.attempts, t.error_code,
                   t.created_at, t.finished_at]
        query = sa.select(*columns).where(t.mode != CREDIT_BLOCK)
        if task_id:
            query = query.where(t.id == task_id)
        if account_id:
            query = query.where(t.account_id == account_id)
        if since is not None:
            query = query.where(t.created_at >= since)
        if until is not None:
            query = query.where(t.created_at < until)
        for column, value in ((t.status, status), (t.model, model), (t.channel_id, channel_id), (t.key_id, key_id),
                              (t.user_identifier, user_identifier)):
            if value:
                query = query.where(column == value)
        with self.engine.connect() as conn:
            return fetch_page(conn, query, t.created_at, t.id, after, limit)
