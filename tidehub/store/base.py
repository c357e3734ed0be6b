"""What every domain's queries share: the engine, and how a write joins a transaction.

The query methods are synchronous (SQLAlchemy Core); the async parts of the gateway call them
through ``Store.call``, which runs reads on a thread pool (or inline, where that is cheaper) and
writes through the group-commit writer, so the event loop never waits on the database.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, TypeVar

import sqlalchemy as sa

T = TypeVar("T")

# A unique key already taken (an idempotency key used by a concurrent request, say).
DuplicateKey = sa.exc.IntegrityError


class Queries:
    """One domain's queries over the shared engine."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name


def writes(fn: Callable[..., T]) -> Callable[..., T]:
    """A write is written as ``fn(self, conn, ...)`` inside a transaction. Called directly (CLI,
    tests) it gets a transaction of its own; through ``Store.call`` it joins the group commit."""

    @functools.wraps(fn)
    def alone(self: Queries, *args: Any, **kwargs: Any) -> T:
        with self.engine.connect().execution_options(immediate=True) as conn, conn.begin():
            return fn(self, conn, *args, **kwargs)

    alone._in_transaction = fn  # type: ignore[attr-defined]
    return alone


def heavy(fn: Callable[..., T]) -> Callable[..., T]:
    """A read that may scan many rows (usage, lists): always off the event loop, even on SQLite."""
    fn._heavy = True  # type: ignore[attr-defined]
    return fn
