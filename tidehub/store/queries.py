"""Every query Tidehub runs, in one place.

The methods are synchronous (SQLAlchemy Core); the async parts of the gateway call them through
``Store.call`` on a small thread pool, so the event loop never waits on the database.
"""

from __future__ import annotations

import asyncio
import functools
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable, TypeVar

import sqlalchemy as sa

from tidehub.store.database import create_engine, migrate
from tidehub.store.schema import accounts, api_keys, assets, tasks
from tidehub.store.writer import GroupCommitWriter

T = TypeVar("T")

ACTIVE = ("queued", "running")
TERMINAL = ("succeeded", "failed", "timeout", "canceled")


# The hot reads, built once (building a statement costs more than running it on SQLite).
_KEY_BY_HASH = sa.select(api_keys.c.id, api_keys.c.account_id, api_keys.c.revoked_at).where(
    api_keys.c.key_hash == sa.bindparam("key_hash")
)
_TASK = sa.select(tasks).where(tasks.c.id == sa.bindparam("id"))
_ACCOUNT_TASK = _TASK.where(tasks.c.account_id == sa.bindparam("account_id"))


def writes(fn: Callable[..., T]) -> Callable[..., T]:
    """A write is written as ``fn(self, conn, ...)`` inside a transaction. Called directly (CLI,
    tests) it gets a transaction of its own; through ``Store.call`` it joins the group commit."""

    @functools.wraps(fn)
    def alone(self: "Store", *args: Any, **kwargs: Any) -> T:
        with self.engine.connect().execution_options(immediate=True) as conn, conn.begin():
            return fn(self, conn, *args, **kwargs)

    alone._in_transaction = fn  # type: ignore[attr-defined]
    return alone


class Store:
    def __init__(self, url: str, *, run_migrations: bool = True) -> None:
        self.engine = create_engine(url)
        self.dialect = self.engine.dialect.name
        if run_migrations:
            migrate(self.engine)
        # A SQLite read by key takes microseconds and never waits for the writer (WAL): a hop to
        # a thread would cost more than the query. PostgreSQL reads cross the network: threads.
        self.inline_reads = self.dialect == "sqlite"
        self._readers = ThreadPoolExecutor(max_workers=8, thread_name_prefix="tidehub-db-read")
        # One writer, with group commit: SQLite takes one writer at a time anyway (and a writer that
        # finds the lock taken sleeps in steps of milliseconds); PostgreSQL saves commits.
        self.writer = GroupCommitWriter(self.engine)

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        in_tx = getattr(fn, "_in_transaction", None)
        if in_tx is not None:
            owner = fn.__self__  # type: ignore[attr-defined]
            return await self.writer.run(lambda conn: in_tx(owner, conn, *args, **kwargs))
        if self.inline_reads:
            return fn(*args, **kwargs)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, functools.partial(fn, *args, **kwargs))

    def close(self) -> None:
        self._readers.shutdown(wait=True)
        self.writer.close()
        self.engine.dispose()

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")

    # -- accounts and keys -------------------------------------------------------------------

    @writes
    def create_account(self, conn: sa.Connection, account_id: str, name: str, now: float) -> None:
        conn.execute(sa.insert(accounts).values(id=account_id, name=name, created_at=now))

    def account_exists(self, account_id: str) -> bool:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(accounts.c.id).where(accounts.c.id == account_id)).first() is not None

    @writes
    def insert_key(self, conn: sa.Connection, **values: Any) -> None:
        conn.execute(sa.insert(api_keys).values(**values))

    def key_by_hash(self, key_hash: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(_KEY_BY_HASH, {"key_hash": key_hash}).first()
        return dict(row._mapping) if row else None

    def list_keys(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(
                    api_keys.c.id,
                    api_keys.c.account_id,
                    api_keys.c.name,
                    api_keys.c.prefix,
                    api_keys.c.created_at,
                    api_keys.c.revoked_at,
                ).order_by(api_keys.c.created_at)
            ).all()
        return [dict(r._mapping) for r in rows]

    @writes
    def revoke_key(self, conn: sa.Connection, key_id: str, now: float) -> bool:
        res = conn.execute(
            sa.update(api_keys)
            .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
            .values(revoked_at=now)
        )
        return res.rowcount == 1

    # -- tasks -------------------------------------------------------------------------------

    @writes
    def insert_task(self, conn: sa.Connection, row: dict[str, Any]) -> None:
        conn.execute(sa.insert(tasks).values(**row))

    def get_task(self, task_id: str, account_id: str | None = None) -> dict[str, Any] | None:
        """A task by id; with ``account_id``, only if it belongs to that account."""
        with self.engine.connect() as conn:
            if account_id is None:
                row = conn.execute(_TASK, {"id": task_id}).first()
            else:
                row = conn.execute(_ACCOUNT_TASK, {"id": task_id, "account_id": account_id}).first()
        return dict(row._mapping) if row else None

    @writes
    def update_task(
        self,
        conn: sa.Connection,
        task_id: str,
        values: dict[str, Any],
        *,
        status_in: Iterable[str] | None = None,
        lease_owner: str | None = None,
        account_id: str | None = None,
    ) -> bool:
        """Compare-and-set: apply ``values`` only if the task is still in one of ``status_in``
        (and still leased by ``lease_owner``). Returns whether it applied."""
        query = sa.update(tasks).where(tasks.c.id == task_id)
        if status_in is not None:
            query = query.where(tasks.c.status.in_(tuple(status_in)))
        if lease_owner is not None:
            query = query.where(tasks.c.lease_owner == lease_owner)
        if account_id is not None:
            query = query.where(tasks.c.account_id == account_id)
        return conn.execute(query.values(**values)).rowcount == 1

    @writes
    def end_active(
        self,
        conn: sa.Connection,
        task_id: str,
        status: str,
        code: str,
        message: str,
        now: float,
        *,
        account_id: str | None = None,
    ) -> bool:
        """Move an active task to a terminal ``status`` (cancel, timeout). If the upstream already
        has the job, flag it so the engine tells the upstream to stop; the lease is dropped so the
        engine can do that at once."""
        has_job = tasks.c.upstream_ref.is_not(None)
        query = sa.update(tasks).where(tasks.c.id == task_id, tasks.c.status.in_(ACTIVE))
        if account_id is not None:
            query = query.where(tasks.c.account_id == account_id)
        query = query.values(
            status=status,
            error_code=code,
            error_message=message,
            finished_at=now,
            updated_at=now,
            cancel_upstream=has_job,
            next_check_at=sa.case((has_job, now), else_=None),
            lease_owner=None,
            lease_until=None,
        )
        return conn.execute(query).rowcount == 1

    @writes
    def complete_task(
        self,
        conn: sa.Connection,
        task_id: str,
        lease_owner: str,
        values: dict[str, Any],
        asset_rows: list[dict[str, Any]],
    ) -> bool:
        """Finish a running task and record its files in one transaction, or neither."""
        query = (
            sa.update(tasks)
            .where(tasks.c.id == task_id, tasks.c.status == "running", tasks.c.lease_owner == lease_owner)
            .values(**values)
        )
        if conn.execute(query).rowcount != 1:
            return False
        if asset_rows:
            conn.execute(sa.insert(assets), asset_rows)
        return True

    @writes
    def claim_due(
        self, conn: sa.Connection, owner: str, now: float, lease_until: float, limit: int
    ) -> list[dict[str, Any]]:
        """Lease up to ``limit`` tasks the engine has work for, oldest due first."""
        due = (
            sa.select(tasks.c.id)
            .where(
                tasks.c.next_check_at <= now,
                sa.or_(tasks.c.lease_until.is_(None), tasks.c.lease_until < now),
            )
            .order_by(tasks.c.next_check_at)
            .limit(limit)
        )
        if self.dialect == "postgresql":
            due = due.with_for_update(skip_locked=True)
        query = (
            sa.update(tasks)
            .where(tasks.c.id.in_(due.scalar_subquery()))
            .values(lease_owner=owner, lease_until=lease_until)
            .returning(*tasks.c)
        )
        return [dict(r._mapping) for r in conn.execute(query).all()]

    def next_due_at(self) -> float | None:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.min(tasks.c.next_check_at))).scalar()

    def count_tasks(self, statuses: Iterable[str]) -> int:
        with self.engine.connect() as conn:
            return conn.execute(
                sa.select(sa.func.count()).select_from(tasks).where(tasks.c.status.in_(tuple(statuses)))
            ).scalar_one()

    # -- assets ------------------------------------------------------------------------------

    @writes
    def insert_assets(self, conn: sa.Connection, rows: list[dict[str, Any]]) -> None:
        if rows:
            conn.execute(sa.insert(assets), rows)

    def get_asset(self, token: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(assets).where(assets.c.token == token)).first()
        return dict(row._mapping) if row else None

    def assets_of(self, task_id: str) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(assets).where(assets.c.task_id == task_id)).all()
        return [dict(r._mapping) for r in rows]

    def expired_assets(self, now: float, limit: int = 500) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(assets.c.token, assets.c.path).where(assets.c.expires_at <= now).limit(limit)
            ).all()
        return [dict(r._mapping) for r in rows]

    @writes
    def delete_assets(self, conn: sa.Connection, tokens: list[str]) -> None:
        if tokens:
            conn.execute(sa.delete(assets).where(assets.c.token.in_(tokens)))
