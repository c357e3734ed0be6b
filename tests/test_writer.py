"""The group-commit writer (store/writer.py) on its own, over a SQLite file with one small table.

The first write of each test holds the writer thread until the test lets it go, so the writes sent
meanwhile are known to be waiting together; transactions are counted with SQLAlchemy's "begin"
event. Fast, no timings."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import sqlalchemy as sa

from tidehub.store.writer import GroupCommitWriter

META = sa.MetaData()
ROWS = sa.Table("rows", META, sa.Column("id", sa.Integer, primary_key=True), sa.Column("note", sa.String))


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[sa.Engine]:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'writer.db'}")
    META.create_all(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def transactions(engine: sa.Engine) -> list[int]:
    """One entry per transaction the writer thread began (the test's own reads are not counted)."""
    begun: list[int] = []

    def began(conn: sa.Connection) -> None:
        if threading.current_thread().name.startswith("tidehub-db-write"):
            begun.append(1)

    sa.event.listen(engine, "begin", began)
    return begun


def insert(row_id: int) -> Callable[[sa.Connection], int]:
    def write(conn: sa.Connection) -> int:
        conn.execute(ROWS.insert().values(id=row_id, note=f"row {row_id}"))
        return row_id
    return write


def stored(engine: sa.Engine) -> list[int]:
    with engine.connect() as conn:
        return sorted(conn.execute(sa.select(ROWS.c.id)).scalars())


class Gate:
    """A write that holds the writer thread until ``open``."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, conn: sa.Connection) -> str:
        self.entered.set()
        assert self.release.wait(30), "the test never let the writer go"
        return "gate"

    async def wait_entered(self) -> None:
        assert await asyncio.to_thread(self.entered.wait, 30)


async def queued_behind_a_gate(writer: GroupCommitWriter, writes: list[Callable[[sa.Connection], Any]]
                               ) -> tuple["asyncio.Future[Any]", list["asyncio.Future[Any]"]]:
    gate = Gate()
    first = asyncio.ensure_future(writer.run(gate))
    await gate.wait_entered()
    rest = [asyncio.ensure_future(writer.run(w)) for w in writes]
    await asyncio.sleep(0)  # every write is queued
    gate.release.set()
    return first, rest


async def test_a_write_when_idle_goes_at_once_alone(engine: sa.Engine, transactions: list[int]) -> None:
    writer = GroupCommitWriter(engine)
    try:
        assert await writer.run(insert(1)) == 1
        assert stored(engine) == [1] and len(transactions) == 1
        assert await writer.run(insert(2)) == 2
        assert stored(engine) == [1, 2] and len(transactions) == 2
    finally:
        writer.close()


async def test_writes_sent_during_a_commit_share_the_next_transaction(engine: sa.Engine,
                                                                       transactions: list[int]) -> None:
    writer = GroupCommitWriter(engine)
    try:
        first, rest = await queued_behind_a_gate(writer, [insert(i) for i in range(10)])
        assert await first == "gate"
        assert await asyncio.gather(*rest) == list(range(10))  # each caller gets its own result
        assert stored(engine) == list(range(10))
        assert len(transactions) == 2  # the gate's, then all ten together
    finally:
        writer.close()


async def test_a_batch_is_at_most_max_batch_writes(engine: sa.Engine, transactions: list[int]) -> None:
    writer = GroupCommitWriter(engine, max_batch=3)
    try:
        first, rest = await queued_behind_a_gate(writer, [insert(i) for i in range(7)])
        await first
        await asyncio.gather(*rest)
        assert stored(engine) == list(range(7))
        assert len(transactions) == 1 + 3  # 3 + 3 + 1 after the gate
    finally:
        writer.close()


async def test_only_the_failing_write_sees_its_error(engine: sa.Engine, transactions: list[int]) -> None:
    writer = GroupCommitWriter(engine)
    try:
        # The third write inserts a row the first one wrote: the batch fails, rolls back, and is
        # replayed one write per transaction.
        first, rest = await queued_behind_a_gate(writer, [insert(1), insert(2), insert(1), insert(3)])
        await first
        outcomes = await asyncio.gather(*rest, return_exceptions=True)
        assert outcomes[:2] == [1, 2] and outcomes[3] == 3
        assert isinstance(outcomes[2], sa.exc.IntegrityError)
        assert stored(engine) == [1, 2, 3]  # nothing twice: the failed batch left nothing behind
        assert len(transactions) == 1 + 1 + 4
        # The writer goes on working after a failure.
        assert await writer.run(insert(4)) == 4
    finally:
        writer.close()


async def test_a_failing_write_alone_raises_and_writes_nothing(engine: sa.Engine) -> None:
    writer = GroupCommitWriter(engine)

    def half_done(conn: sa.Connection) -> None:
        conn.execute(ROWS.insert().values(id=9))
        raise ValueError("changed my mind")

    try:
        with pytest.raises(ValueError, match="changed my mind"):
            await writer.run(half_done)
        assert stored(engine) == []  # its transaction was rolled back
    finally:
        writer.close()


async def test_writes_go_in_the_order_they_were_sent(engine: sa.Engine) -> None:
    writer = GroupCommitWriter(engine)

    def note(text: str) -> Callable[[sa.Connection], None]:
        return lambda conn: conn.execute(ROWS.update().where(ROWS.c.id == 1).values(note=text))

    try:
        await writer.run(insert(1))
        first, rest = await queued_behind_a_gate(writer, [note("a"), note("b"), note("c")])
        await first
        await asyncio.gather(*rest)
        with engine.connect() as conn:
            assert conn.execute(sa.select(ROWS.c.note)).scalar_one() == "c"
    finally:
        writer.close()
