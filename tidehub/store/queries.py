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

T = TypeVar("T")

ACTIVE = ("queued", "running")
TERMINAL = ("succeeded", "failed", "timeout", "canceled")


def writes(fn: Callable[..., T]) -> Callable[..., T]:
    """Marks a query that writes, so ``Store.call`` runs it on the writer thread (SQLite)."""
    fn._writes = True  # type: ignore[attr-defined]
    return fn


class Store:
    def __init__(self, url: str, *, run_migrations: bool = True) -> None:
        self.engine = create_engine(url)
        self.dialect = self.engine.dialect.name
        if run_migrations:
            migrate(self.engine)
        if self.dialect == "sqlite":
            # SQLite takes one writer at a time, and a writer that finds the lock taken sleeps in
            # steps of milliseconds. One writer thread never contends; readers run beside it (WAL).
            self._readers = ThreadPoolExecutor(max_workers=4, thread_name_prefix="tidehub-db-read")
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tidehub-db-write")
        else:
            self._readers = self._writer = ThreadPoolExecutor(max_workers=16, thread_name_prefix="tidehub-db")

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        pool = self._writer if getattr(fn, "_writes", False) else self._readers
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(pool, functools.partial(fn, *args, **kwargs))

    def close(self) -> None:
        self._readers.shutdown(wait=True)
        self._writer.shutdown(wait=True)
        self.engine.dispose()

    def _write(self) -> sa.engine.base.Connection:
        return self.engine.connect().execution_options(immediate=True)

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")

    # -- accounts and keys -------------------------------------------------------------------

    @writes
    def create_account(self, account_id: str, name: str, now: float) -> None:
        with self._write() as conn, conn.begin():
            conn.execute(sa.insert(accounts).values(id=account_id, name=name, created_at=now))

    def account_exists(self, account_id: str) -> bool:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(accounts.c.id).where(accounts.c.id == account_id)).first() is not None

    @writes
    def insert_key(self, **values: Any) -> None:
        with self._write() as conn, conn.begin():
            conn.execute(sa.insert(api_keys).values(**values))

    def key_by_hash(self, key_hash: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(api_keys.c.id, api_keys.c.account_id, api_keys.c.revoked_at).where(
                    api_keys.c.key_hash == key_hash
                )
            ).first()
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
    def revoke_key(self, key_id: str, now: float) -> bool:
        with self._write() as conn, conn.begin():
            res = conn.execute(
                sa.update(api_keys)
                .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=now)
            )
            return res.rowcount == 1

    # -- tasks -------------------------------------------------------------------------------

    @writes
    def insert_task(self, row: dict[str, Any]) -> None:
        with self._write() as conn, conn.begin():
            conn.execute(sa.insert(tasks).values(**row))

    def get_task(self, task_id: str, account_id: str | None = None) -> dict[str, Any] | None:
        query = sa.select(tasks).where(tasks.c.id == task_id)
        if account_id is not None:
            query = query.where(tasks.c.account_id == account_id)
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return dict(row._mapping) if row else None

    @writes
    def update_task(
        self,
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
        with self._write() as conn, conn.begin():
            return conn.execute(query.values(**values)).rowcount == 1

    @writes
    def end_active(
        self, task_id: str, status: str, code: str, message: str, now: float, *, account_id: str | None = None
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
        with self._write() as conn, conn.begin():
            return conn.execute(query).rowcount == 1

    @writes
    def complete_task(
        self, task_id: str, lease_owner: str, values: dict[str, Any], asset_rows: list[dict[str, Any]]
    ) -> bool:
        """Finish a running task and record its files in one transaction, or neither."""
        query = (
            sa.update(tasks)
            .where(tasks.c.id == task_id, tasks.c.status == "running", tasks.c.lease_owner == lease_owner)
            .values(**values)
        )
        with self._write() as conn, conn.begin():
            if conn.execute(query).rowcount != 1:
                return False
            if asset_rows:
                conn.execute(sa.insert(assets), asset_rows)
            return True

    @writes
    def claim_due(self, owner: str, now: float, lease_until: float, limit: int) -> list[dict[str, Any]]:
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
        with self._write() as conn, conn.begin():
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
    def insert_assets(self, rows: list[dict[str, Any]]) -> None:
        if rows:
            with self._write() as conn, conn.begin():
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
    def delete_assets(self, tokens: list[str]) -> None:
        if tokens:
            with self._write() as conn, conn.begin():
                conn.execute(sa.delete(assets).where(assets.c.token.in_(tokens)))
