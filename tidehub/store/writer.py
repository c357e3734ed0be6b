"""Group commit: the writes that arrive while one transaction is committing go together in the next.

Under load a single writer thread runs dozens of task inserts and engine updates in one
transaction, so the cost of a commit (and, on SQLite, of taking the write lock) is shared. When
the gateway is idle, a write goes alone and waits for nothing.

A write that fails makes its whole batch roll back; the batch is then replayed one write per
transaction, so only the failing write sees the error. With several processes on PostgreSQL, two
writers' transactions can lock the same rows (an account, a task) in opposite orders: the database
aborts one of them as a deadlock, and that write is simply run again.
"""

from __future__ import annotations

import asyncio
import random
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import sqlalchemy as sa

# A write: a function of an open connection inside a transaction.
Write = Callable[[sa.Connection], Any]
_Item = tuple[Write, "asyncio.Future[Any]"]

# PostgreSQL's deadlock_detected and serialization_failure: the transaction lost a race with another
# process's and rolled back whole; running it again is the remedy.
_RETRY_SQLSTATES = frozenset({"40P01", "40001"})
_RETRIES = 5


def _lost_race(exc: Exception) -> bool:
    return isinstance(exc, sa.exc.DBAPIError) and getattr(exc.orig, "sqlstate", None) in _RETRY_SQLSTATES


class GroupCommitWriter:
    def __init__(self, engine: sa.Engine, max_batch: int = 500) -> None:
        self.engine = engine
        self.max_batch = max_batch
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tidehub-db-write")
        self._pending: list[_Item] = []
        self._busy = False

    async def run(self, write: Write) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((write, future))
        if not self._busy:
            self._flush(loop)
        return await future

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
        self._busy = True
        done = loop.run_in_executor(self._thread, self._commit, [w for w, _ in batch])
        done.add_done_callback(lambda f: self._settle(loop, batch, f))

    def _settle(self, loop: asyncio.AbstractEventLoop, batch: list[_Item], done: "asyncio.Future[Any]") -> None:
        self._busy = False
        outcomes = done.result() if done.exception() is None else [(False, done.exception())] * len(batch)
        for (_, future), (ok, value) in zip(batch, outcomes):
            if future.done():
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)
        if self._pending:
            self._flush(loop)

    def _commit(self, writes: list[Write]) -> list[tuple[bool, Any]]:
        """Runs on the writer thread."""
        if len(writes) > 1:
            try:
                with self._connect() as conn, conn.begin():
                    results = [write(conn) for write in writes]
                return [(True, r) for r in results]
            except Exception:
                pass  # find out which write failed: replay them one by one below
        return [self._commit_one(write) for write in writes]

    def _commit_one(self, write: Write) -> tuple[bool, Any]:
        for attempt in range(_RETRIES):
            try:
                with self._connect() as conn, conn.begin():
                    return True, write(conn)
            except Exception as exc:
                if not _lost_race(exc) or attempt == _RETRIES - 1:
                    return False, exc
                time.sleep(random.uniform(0.002, 0.02) * (attempt + 1))  # the writer thread's own pause
        raise AssertionError("unreachable")

    def _connect(self) -> sa.Connection:
        return self.engine.connect().execution_options(immediate=True)

    def close(self) -> None:
        self._thread.shutdown(wait=True)
