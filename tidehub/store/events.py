"""Task events: what happened to a task, in order, each with a per-task sequence number.

Events are written inside the transaction of the change they describe (``append``, called by the
task writes in store/tasks.py), so a stream that reads them from any process sees exactly what was
committed, in order. The sequence is taken after the task row was updated in the same
transaction: the row lock (PostgreSQL) or the one writer (SQLite) keeps two writers of one task
from taking the same number.
"""

from __future__ import annotations

from typing import Any, Iterable

import sqlalchemy as sa

from tidehub.core.lifecycle import TERMINAL
from tidehub.store.base import Queries, cursor_of, prepared, writes
from tidehub.store.schema import task_events

#: Events kept per task; past it, only the terminal status is still written (progress and log
#: lines of a very long task stop there, the end of the story never does).
MAX_EVENTS_PER_TASK = 1000
#: Upstream log lines kept on a task, and the characters kept of each.
MAX_LOG_LINES = 200
MAX_LOG_CHARS = 1000

_LAST_SEQ = (sa.select(sa.func.coalesce(sa.func.max(task_events.c.seq), 0))
             .where(task_events.c.task_id == sa.bindparam("task_id")))
_AFTER = (sa.select(task_events.c.seq, task_events.c.at, task_events.c.kind, task_events.c.data)
          .where(task_events.c.task_id == sa.bindparam("task_id"), task_events.c.seq > sa.bindparam("after"))
          .order_by(task_events.c.seq).limit(sa.bindparam("limit")))


_NEW_EVENT = sa.insert(task_events)
_EVENT_COLUMNS = ("task_id", "seq", "at", "kind", "data")


def append(conn: sa.Connection, task_id: str, events: Iterable[tuple[str, dict[str, Any]]], now: float, *,
           first: bool = False) -> None:
    """Write ``events`` ((kind, data) pairs) after the task's last one, within the bound. ``first``:
    the task is new in this transaction, so it has none yet (one query saved on every submit)."""
    events = list(events)
    if not events:
        return
    # On the driver (store/base.py), as the insert below: every submit and most engine steps come here.
    cursor = cursor_of(conn)
    seq = 0 if first else prepared(_LAST_SEQ, conn.dialect).execute(cursor, {"task_id": task_id}).fetchone()[0]
    rows = []
    for kind, data in events:
        final = kind == "status" and data.get("status") in TERMINAL
        if seq >= MAX_EVENTS_PER_TASK and not final:
            continue
        seq += 1
        rows.append({"task_id": task_id, "seq": seq, "at": now, "kind": kind, "data": data})
    if rows:
        prepared(_NEW_EVENT, conn.dialect, _EVENT_COLUMNS).execute_many(cursor, rows)


def log_line(entry: Any) -> dict[str, Any]:
    """One upstream log entry, as kept: message (cut to MAX_LOG_CHARS), level, timestamp."""
    if not isinstance(entry, dict):
        entry = {"message": str(entry)}
    message = str(entry.get("message", ""))
    if len(message) > MAX_LOG_CHARS:
        message = message[:MAX_LOG_CHARS] + "…"
    line = {"message": message, "level": str(entry.get("level") or "INFO")[:20]}
    if entry.get("timestamp"):
        line["timestamp"] = str(entry["timestamp"])[:40]
    return line


class EventQueries(Queries):
    def after(self, task_id: str, after: int, limit: int = 200) -> list[dict[str, Any]]:
        """A task's events with a sequence above ``after``, oldest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(_AFTER, {"task_id": task_id, "after": after, "limit": limit}).all()
        return [dict(r._mapping) for r in rows]

    @writes
    def forget(self, conn: sa.Connection, before: float) -> int:
        """Drop events older than ``before``: they go with the task's files (the task ended long ago)."""
        return conn.execute(sa.delete(task_events).where(task_events.c.at < before)).rowcount
