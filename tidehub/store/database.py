"""Engine creation and migrations for SQLite (the embedded default) and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import orjson
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy import event

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
    path = url.split("///", 1)[-1]
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
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
