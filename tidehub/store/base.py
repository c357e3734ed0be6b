"""What every domain's queries share: the engine, and how a write joins a transaction.

The query methods are synchronous (SQLAlchemy Core); the async parts of the gateway call them
through ``Store.call``, which runs reads on a thread pool (or inline, where that is cheaper) and
writes through the group-commit writer, so the event loop never waits on the database.
"""

from __future__ import annotations

import functools
import operator
import threading
import weakref
from typing import Any, Callable, Iterable, Mapping, Sequence, TypeVar

import sqlalchemy as sa

T = TypeVar("T")

# A unique key already taken (an idempotency key used by a concurrent request, say).
DuplicateKey = sa.exc.IntegrityError


class Prepared:
    """A Core statement compiled once for one dialect and run as plain DBAPI calls.

    On SQLite, SQLAlchemy's execution path (the connection wrapper, the execution context, the
    result object) costs several times what the database takes to find a row by key or insert
    one. The hot statements (a task read, a submit's writes, the relay's call records, the
    rollups) are compiled here once, with the same bind and result processing SQLAlchemy would
    apply (JSON, booleans), and run on the DBAPI cursor. A database error comes out as the same
    SQLAlchemy exception (``DuplicateKey``, ...) as through ``Connection.execute``.
    """

    def __init__(self, statement: sa.Executable, dialect: sa.Dialect, column_keys: Sequence[str] | None = None) -> None:
        compiled = statement.compile(dialect=dialect, column_keys=list(column_keys) if column_keys else None)
        self.sql = compiled.string
        self._error = dialect.loaded_dbapi.Error
        binds = compiled.binds
        # Literal values in the statement (``status == 'running'``) are binds with a value of their own.
        self._fixed = {name: b.effective_value for name, b in binds.items() if not b.required}
        self._process = [(name, proc) for name, b in binds.items()
                         if (proc := b.type.dialect_impl(dialect).bind_processor(dialect)) is not None]
        self._order = compiled.positiontup  # the names in placeholder order; None for named placeholders
        # The positional values picked out in one call (itemgetter of one name gives no tuple).
        order = self._order or ()
        self._pick = (operator.itemgetter(*order) if len(order) > 1
                      else (lambda merged: (merged[order[0]],)) if order else (lambda merged: ()))
        self._dialect = dialect
        # An INSERT with positional placeholders can take many rows in one statement: SQLite's
        # executemany runs (and lets go of the GIL around) one statement per row, which under load
        # hands the interpreter to the event loop and waits for it back once per row.
        self._rows_sql = _rows_sql(self.sql) if isinstance(statement, sa.Insert) and self._order else None
        self._rows_per_statement = max(1, _MAX_PLACEHOLDERS // max(1, len(self._order or ())))
        self._columns = list(statement.exported_columns) if isinstance(statement, sa.sql.expression.ReturnsRows) else []
        self.keys = [c.key for c in self._columns]
        self._results: list[tuple[int, Callable[[Any], Any]]] | None = None  # known at the first fetch

    def params(self, values: Mapping[str, Any]) -> Any:
        merged = {**self._fixed, **values} if self._fixed else dict(values)
        for name, proc in self._process:
            merged[name] = proc(merged[name])
        return merged if self._order is None else self._pick(merged)

    def execute(self, cursor: Any, values: Mapping[str, Any]) -> Any:
        """Run once on ``cursor``; the cursor (rowcount, rows) comes back."""
        params = self.params(values)
        try:
            cursor.execute(self.sql, params)
        except self._error as exc:
            raise sa.exc.DBAPIError.instance(self.sql, params, exc, self._error) from exc
        return cursor

    def execute_many(self, cursor: Any, rows: Iterable[Mapping[str, Any]]) -> Any:
        params = [self.params(row) for row in rows]
        if self._rows_sql is not None and len(params) > 1:
            step = self._rows_per_statement
            for start in range(0, len(params), step):
                part = params[start:start + step]
                sql = self._rows_sql(len(part))
                flat = [value for row in part for value in row]
                try:
                    cursor.execute(sql, flat)
                except self._error as exc:
                    raise sa.exc.DBAPIError.instance(sql, flat, exc, self._error) from exc
            return cursor
        try:
            cursor.executemany(self.sql, params)
        except self._error as exc:
            raise sa.exc.DBAPIError.instance(self.sql, params, exc, self._error) from exc
        return cursor

    def fetch_one(self, cursor: Any) -> dict[str, Any] | None:
        """The cursor's next row as a dict by column key, its values processed as SQLAlchemy would."""
        raw = cursor.fetchone()
        if raw is None:
            return None
        if self._results is None:
            # Some processors depend on the type the driver reports (PostgreSQL's numerics).
            self._results = [
                (i, proc) for i, (c, described) in enumerate(zip(self._columns, cursor.description))
                if (proc := c.type.dialect_impl(self._dialect).result_processor(self._dialect, described[1]))
                is not None]
        values = list(raw)
        for i, proc in self._results:
            values[i] = proc(values[i])
        return dict(zip(self.keys, values))


#: Placeholders in one multi-row INSERT: well under SQLite's limit (32,766 since 3.32; PostgreSQL's 65,535).
_MAX_PLACEHOLDERS = 8000


def _rows_sql(sql: str) -> Callable[[int], str] | None:
    """For ``INSERT ... VALUES (?, ...) [ON CONFLICT ...]``: the same statement for ``n`` rows."""
    head, found, rest = sql.partition(" VALUES (")
    group, closed, tail = rest.partition(")")
    if not found or not closed or "(" in group:
        return None
    row = f"({group})"

    @functools.lru_cache(maxsize=64)
    def for_rows(n: int) -> str:
        return f"{head} VALUES {', '.join([row] * n)}{tail}"

    return for_rows


class Queries:
    """One domain's queries over the shared engine."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self._local = threading.local()
        self._owned: list[Any] = []

    def prepared(self, statement: sa.Executable, column_keys: Sequence[str] | None = None) -> Prepared:
        return prepared(statement, self.engine.dialect, column_keys)

    def fetch_one(self, statement: sa.Executable, values: Mapping[str, Any]) -> dict[str, Any] | None:
        """One row of a read (a lookup by key), run on the driver."""
        prepared = self.prepared(statement)
        if self.dialect == "sqlite":
            # A SQLite read outside a transaction reads the last commit; a connection of the
            # thread's own (reads run on the event loop's thread) saves the pool's checkout.
            return prepared.fetch_one(prepared.execute(self._own_connection().cursor(), values))
        raw = self.engine.raw_connection()
        try:
            return prepared.fetch_one(prepared.execute(raw.cursor(), values))
        finally:
            raw.close()

    def _own_connection(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            # Taken out of the pool for good, set up by its "connect" hooks (store/database.py).
            fairy = self.engine.raw_connection()
            fairy.detach()
            conn = self._local.conn = fairy.dbapi_connection
            self._owned.append(conn)
        return conn

    def close(self) -> None:
        """Close the connections this domain's reads took out of the pool."""
        while self._owned:
            self._owned.pop().close()


# Per dialect (one per engine), gone with its engine: statement (and columns) -> Prepared.
_PREPARED: "weakref.WeakKeyDictionary[sa.Dialect, dict[Any, Prepared]]" = weakref.WeakKeyDictionary()


# The dialect asked for last and its statements, read and replaced as one tuple (threads share it):
# a process has one engine, so this saves the weak dictionary's lookup on every statement.
_LAST: tuple[Any, dict[Any, Prepared]] = (None, {})


def prepared(statement: sa.Executable, dialect: sa.Dialect, column_keys: Sequence[str] | None = None) -> Prepared:
    """``statement`` compiled for ``dialect``, once (statements are module constants; an insert is
    compiled for each set of columns it is given)."""
    global _LAST
    last = _LAST
    if last[0] is dialect:
        cache = last[1]
    else:
        cache = _PREPARED.setdefault(dialect, {})
        _LAST = (dialect, cache)
    key = (statement, tuple(column_keys) if column_keys else None)  # the statement kept: no id reuse
    found = cache.get(key)
    if found is None:
        found = cache[key] = Prepared(statement, dialect, column_keys)
    return found


def cursor_of(conn: sa.Connection) -> Any:
    """The DBAPI cursor of a connection inside a write's transaction, for ``Prepared`` statements."""
    return conn.connection.cursor()


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
