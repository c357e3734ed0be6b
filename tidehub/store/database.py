"""The database: engine creation and migrations for SQLite (the embedded default) and PostgreSQL,
and the ``Store`` handle through which the rest of Tidehub reaches every domain's queries."""

from __future__ import annotations

import asyncio
import functools
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, TypeVar

import orjson
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy import event

from tidehub.store.base import Queries

T = TypeVar("T")

MIGRATIONS = Path(__file__).parent / "migrations"


def _json_dumps(value: object) -> str:
    return orjson.dumps(value).decode()


def create_engine(url: str) -> sa.Engine:
    if url.startswith("sqlite"):
        return _sqlite_engine(url)
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        # psycopg 3 is the driver we ship for PostgreSQL.
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    return sa.create_engine(
        url,
        pool_size=16,
        max_overflow=16,
        pool_pre_ping=True,
        json_serializer=_json_dumps,
        json_deserializer=orjson.loads,
    )


def _sqlite_engine(url: str) -> sa.Engine:
    path = url.split("///", 1)[1].split("?", 1)[0] if "///" in url else ""  # sqlite:// alone is in memory
    if path and path != ":memory:":
        _owner_only(Path(path))
    engine = sa.create_engine(
        url,
        pool_size=8,
        max_overflow=8,
        # Reads run without BEGIN and writes always commit or roll back: nothing to reset.
        pool_reset_on_return=None,
        connect_args={"check_same_thread": False, "timeout": 30},
        json_serializer=_json_dumps,
        json_deserializer=orjson.loads,
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):  # type: ignore[no-untyped-def]
        # We issue BEGIN ourselves (below), so pysqlite must not.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        # WAL + NORMAL survives a killed process (not a power cut mid-checkpoint), at a far lower
        # cost per commit than FULL.
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):  # type: ignore[no-untyped-def]
        # Writers take the lock up front: a deferred transaction that reads then writes can fail
        # with SQLITE_BUSY instead of waiting. Reads are single statements and need no BEGIN:
        # each runs on its own consistent snapshot.
        if conn.get_execution_options().get("immediate", False):
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _owner_only(db: Path) -> None:
    """The database file, made before SQLite opens it, readable by its owner only: it holds webhook
    secrets and key hashes. SQLite gives the -wal and -shm files it makes later the same mode."""
    db.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.close(os.open(db, os.O_RDWR | os.O_CREAT, 0o600))
    for made in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        try:
            os.chmod(made, 0o600)  # files made before this rule existed
        except FileNotFoundError:
            pass


def migrate(engine: sa.Engine) -> None:
    """Bring the schema to the newest revision; safe when several processes start at once."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.connect() as conn:
        # SQLite: BEGIN IMMEDIATE serialises starters; PostgreSQL: a transaction advisory lock.
        conn = conn.execution_options(immediate=True)
        with conn.begin():
            if conn.dialect.name == "postgresql":
                conn.exec_driver_sql("SELECT pg_advisory_xact_lock(72091)")
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")


class Store:
    """The database handle: one engine, one group-commit writer, and the queries of each domain
    (``store.tasks``, ``store.accounts``, ...)."""

    def __init__(self, url: str, *, run_migrations: bool = True) -> None:
        from tidehub.store.accounts import AccountQueries, CodeQueries, KeyQueries
        from tidehub.store.assets import AssetQueries
        from tidehub.store.channels import ChannelQueries
        from tidehub.store.console import AuditQueries, OperatorQueries, SessionQueries, TaskListQueries
        from tidehub.store.events import EventQueries
        from tidehub.store.idempotency import IdempotencyQueries
        from tidehub.store.rollups import RollupQueries
        from tidehub.store.tasks import TaskQueries
        from tidehub.store.webhooks import WebhookQueries
        from tidehub.store.writer import GroupCommitWriter

        self.engine = create_engine(url)
        self.dialect = self.engine.dialect.name
        if run_migrations:
            migrate(self.engine)
        # A SQLite read by key takes microseconds and never waits for the writer (WAL): a hop to
        # a thread would cost more than the query. PostgreSQL reads cross the network, and reads
        # marked ``heavy`` may scan many rows: threads.
        self.inline_reads = self.dialect == "sqlite"
        self._readers = ThreadPoolExecutor(max_workers=8, thread_name_prefix="tidehub-db-read")
        # One writer, with group commit: SQLite takes one writer at a time anyway (and a writer that
        # finds the lock taken sleeps in steps of milliseconds); PostgreSQL saves commits.
        self.writer = GroupCommitWriter(self.engine)
        self.accounts = AccountQueries(self.engine)
        self.keys = KeyQueries(self.engine)
        self.codes = CodeQueries(self.engine)
        self.tasks = TaskQueries(self.engine)
        self.events = EventQueries(self.engine)
        self.channels = ChannelQueries(self.engine)
        self.idempotency = IdempotencyQueries(self.engine)
        self.webhooks = WebhookQueries(self.engine)
        self.assets = AssetQueries(self.engine)
        self.operators = OperatorQueries(self.engine)
        self.sessions = SessionQueries(self.engine)
        self.audit = AuditQueries(self.engine)
        self.task_list = TaskListQueries(self.engine)
        self.rollups = RollupQueries(self.engine)

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        in_tx = getattr(fn, "_in_transaction", None)
        if in_tx is not None:
            owner = fn.__self__  # type: ignore[attr-defined]
            return await self.writer.run(lambda conn: in_tx(owner, conn, *args, **kwargs))
        if self.inline_reads and not getattr(fn, "_heavy", False):
            return fn(*args, **kwargs)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, functools.partial(fn, *args, **kwargs))

    def close(self) -> None:
        self._readers.shutdown(wait=True)
        self.writer.close()
        for queries in vars(self).values():
            if isinstance(queries, Queries):
                queries.close()
        self.engine.dispose()

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
