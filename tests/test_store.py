"""Store semantics the engine relies on, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import time

from tidehub.store import Store


def task_row(task_id: str, now: float) -> dict:
    return {
        "id": task_id, "account_id": "acct", "key_id": "key", "model": "m", "endpoint": "e",
        "capability": "image", "mode": "text-to-image", "input": {"prompt": "x"}, "status": "queued",
        "progress": 0, "attempts": 0, "cancel_upstream": False, "next_check_at": now,
        "deadline_at": now + 60, "created_at": now, "updated_at": now, "held": 0,
    }


def test_claims_are_exclusive_under_concurrency(database_url: str) -> None:
    store = Store(database_url)
    now = time.time()
    for i in range(300):
        store.tasks.open(task_row(f"t{i}", now))
    claimed: dict[str, list[str]] = {}

    def worker(owner: str) -> None:
        got: list[str] = []
        while True:
            batch = store.tasks.claim_due(owner, time.time(), time.time() + 60, 25)
            if not batch:
                break
            got += [t["id"] for t in batch]
        claimed[owner] = got

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    everything = [t for ids in claimed.values() for t in ids]
    assert len(everything) == 300 and len(set(everything)) == 300
    store.close()


def test_leases_expire_and_compare_and_set_guards_transitions(database_url: str) -> None:
    store = Store(database_url)
    now = time.time()
    store.tasks.open(task_row("t1", now))
    assert [t["id"] for t in store.tasks.claim_due("a", now, now + 0.2, 10)] == ["t1"]
    assert store.tasks.claim_due("b", now + 0.1, now + 10, 10) == []  # still leased by a
    assert [t["id"] for t in store.tasks.claim_due("b", now + 0.3, now + 10, 10)] == ["t1"]  # a's lease ran out
    # a is gone as far as the task is concerned: its writes no longer apply.
    assert not store.tasks.update("t1", {"status": "running"}, status_in=("queued",), lease_owner="a")
    assert store.tasks.update("t1", {"status": "running"}, status_in=("queued",), lease_owner="b")
    assert store.tasks.end_active("t1", "canceled", "canceled", "by test", now)
    assert not store.tasks.end_active("t1", "timeout", "timeout", "too late", now)  # only once
    assert not store.tasks.complete("t1", "b", {"status": "succeeded", "finished_at": now}, [], 0)
    assert store.tasks.get("t1")["status"] == "canceled"
    assert store.tasks.get("t1", account_id="someone-else") is None
    store.close()


def test_migrations_are_idempotent(database_url: str) -> None:
    Store(database_url).close()
    store = Store(database_url)
    store.ping()
    store.close()


def test_migrations_build_the_schema_that_schema_py_declares(database_url: str) -> None:
    """Every table, column and index of store/schema.py exists after the migrations, and nothing
    more: a change made in one place and not the other fails here."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from tidehub.store.schema import metadata

    store = Store(database_url)
    try:
        with store.engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": False}), metadata)
    finally:
        store.close()
    # Only structural differences count (a server default spelt differently is not one).
    structural = [d for d in diff if isinstance(d, tuple) and d[0] in (
        "add_table", "remove_table", "add_column", "remove_column", "add_index", "remove_index")]
    structural = [d for d in structural if not (d[0] == "remove_table" and d[1].name == "alembic_version")]
    assert structural == [], structural


def test_statements_run_on_the_driver_read_and_write_as_sqlalchemy_does(database_url: str) -> None:
    import pytest
    import sqlalchemy as sa

    from tidehub.store.base import DuplicateKey
    from tidehub.store.schema import tasks

    store = Store(database_url)
    now = time.time()
    store.tasks.open({**task_row("t1", now), "input": {"prompt": "x", "n": [1, 2]}, "output": None})
    got = store.tasks.get("t1")
    with store.engine.connect() as conn:  # the same row through SQLAlchemy's own execution path
        expected = dict(conn.execute(sa.select(tasks).where(tasks.c.id == "t1")).one()._mapping)
    assert got == expected
    assert got["input"] == {"prompt": "x", "n": [1, 2]} and got["cancel_upstream"] is False
    assert got["created_at"] == now and got["output"] is None
    with pytest.raises(DuplicateKey):  # a driver's error comes out as SQLAlchemy's
        store.tasks.open(task_row("t1", now))
    assert store.events.after("t1", 0)[0]["data"] == {"status": "queued"}
    store.close()


def test_compare_and_set_updates_on_the_driver_check_every_condition(database_url: str) -> None:
    store = Store(database_url)
    now = time.time()
    store.tasks.open(task_row("t1", now))
    store.tasks.claim_due("a", now, now + 60, 10)
    logs = [{"message": "step 1", "level": "INFO"}]
    # Each condition alone refuses: the status, the lease, the account.
    assert not store.tasks.update("t1", {"progress": 5}, status_in=("running",), lease_owner="a")
    assert not store.tasks.update("t1", {"progress": 5}, status_in=("queued",), lease_owner="b")
    assert not store.tasks.update("t1", {"progress": 5}, account_id="someone-else")
    assert store.tasks.get("t1")["progress"] == 0
    assert store.tasks.update("t1", {"progress": 7, "logs": logs, "cancel_upstream": True, "lease_owner": None,
                                         "lease_until": None},
                              status_in=("queued", "running"), lease_owner="a", account_id="acct",
                              events=[("progress", {"progress": 7})])
    got = store.tasks.get("t1")
    assert (got["progress"], got["logs"], got["cancel_upstream"], got["lease_owner"]) == (7, logs, True, None)
    # A step that reschedules after it (the engine's commonest write) takes the next event number.
    assert store.tasks.claim_due("a", now + 1, now + 60, 10)
    assert store.tasks.reschedule("t1", "a", now + 5, now + 1, 9, None, [("progress", {"progress": 9})])
    assert not store.tasks.reschedule("t1", "a", now + 5, now + 1, 10, None)  # its lease was let go
    assert [(e["seq"], e["kind"]) for e in store.events.after("t1", 0)] == [
        (1, "status"), (2, "progress"), (3, "progress")]
    assert store.tasks.get("t1")["progress"] == 9
    store.close()


def test_queue_positions_come_from_one_read_of_the_queue_head(database_url: str) -> None:
    import asyncio

    from tidehub.core.tasks import QueueHead
    from tidehub.store.tasks import QUEUE_POSITION_CAP

    store = Store(database_url)
    now = time.time()
    for i in range(QUEUE_POSITION_CAP + 5):
        store.tasks.open(task_row(f"q{i}", now + i))
    store.tasks.open({**task_row("r", now - 5), "status": "running"})  # not waiting: never counted

    async def positions() -> list[int]:
        head = QueueHead(store, max_age=60)
        return [await head.position(now + i) for i in (0, 1, 2, QUEUE_POSITION_CAP - 1, QUEUE_POSITION_CAP + 4)]

    assert asyncio.run(positions()) == [0, 1, 2, QUEUE_POSITION_CAP - 1, QUEUE_POSITION_CAP]
    store.close()


def test_prepared_inserts_many_rows_in_a_few_statements_and_reports_a_duplicate() -> None:
    """On SQLite a batch insert is one multi-row INSERT per few hundred rows (not one statement per
    row); every row lands, and a taken key fails the batch as DuplicateKey, as executemany would."""
    import pytest
    import sqlalchemy as sa

    from tidehub.store.base import DuplicateKey, Prepared

    engine = sa.create_engine("sqlite://")
    table = sa.Table("t", sa.MetaData(), sa.Column("id", sa.String, primary_key=True), sa.Column("data", sa.JSON),
                     sa.Column("flag", sa.Boolean))
    table.metadata.create_all(engine)
    insert = Prepared(sa.insert(table), engine.dialect, ["id", "data", "flag"])
    insert._rows_per_statement = 7  # several statements, the last one short
    rows = [{"id": f"r{i}", "data": {"n": i}, "flag": i % 2 == 0} for i in range(30)]
    with engine.begin() as conn:
        raw = conn.connection.driver_connection.cursor()
        statements: list[str] = []

        class Counted:
            def execute(self, sql: str, params: object) -> object:
                statements.append(sql)
                return raw.execute(sql, params)

        cursor = Counted()
        insert.execute_many(cursor, rows)
        assert len(statements) == 5  # 30 rows, 7 a statement
        got = conn.execute(sa.select(table).order_by(table.c.data["n"].as_integer())).all()
        assert [(r.id, r.data, r.flag) for r in got] == [(r["id"], r["data"], r["flag"]) for r in rows]
        with pytest.raises(DuplicateKey):
            insert.execute_many(cursor, [{"id": "new", "data": None, "flag": None}, rows[3]])
