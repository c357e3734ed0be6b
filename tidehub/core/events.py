"""Live task events: follow one task's events as they are committed, and wait for its end.

The events are rows in the database (store/events.py), written with the change they describe by
whichever process made it, so a stream works whichever process runs the task, and a dropped
stream resumes after the last sequence number it saw. A stream looks at the database when woken
(``TaskChanges``, in-process here; another implementation can carry wake-ups between processes)
and otherwise every ``poll_s`` seconds.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator

from tidehub.core.auth import Principal
from tidehub.core.lifecycle import QUEUED, TERMINAL
from tidehub.core.ports import TaskChanges, Watch
from tidehub.core.tasks import Task, TaskService
from tidehub.store import Store

# Rows read per look at the database.
_PAGE = 200


@dataclass
class TaskEvent:
    """One event of a task: ``kind`` is status, progress, queue, log, or task (the last one,
    ``data`` the whole task). ``seq`` is None for what is worked out at read time rather than
    stored (the place in Tidehub's own queue)."""

    seq: int | None
    kind: str
    data: dict[str, Any]
    at: float


class LocalTaskChanges:
    """TaskChanges within one process: an asyncio event per waiter."""

    def __init__(self) -> None:
        self._waiters: dict[str, set[_LocalWatch]] = {}

    def watch(self, task_id: str) -> "_LocalWatch":
        watch = _LocalWatch(self, task_id)
        self._waiters.setdefault(task_id, set()).add(watch)
        return watch

    def changed(self, task_id: str) -> None:
        for watch in self._waiters.get(task_id, ()):
            watch.event.set()

    def _drop(self, watch: "_LocalWatch") -> None:
        waiters = self._waiters.get(watch.task_id)
        if waiters is not None:
            waiters.discard(watch)
            if not waiters:
                del self._waiters[watch.task_id]


class _LocalWatch:
    def __init__(self, owner: LocalTaskChanges, task_id: str) -> None:
        self.owner = owner
        self.task_id = task_id
        self.event = asyncio.Event()

    async def wait(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self.event.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False
        finally:
            self.event.clear()

    def close(self) -> None:
        self.owner._drop(self)


class TaskEvents:
    def __init__(self, store: Store, tasks: TaskService, changes: TaskChanges, poll_s: float = 0.5) -> None:
        self.store = store
        self.tasks = tasks
        self.changes = changes
        self.poll_s = poll_s

    async def follow(self, principal: Principal, task_id: str, after: int = 0) -> AsyncIterator[TaskEvent]:
        """The task's events after sequence ``after``, as they happen; the last one is ``task``
        (the whole task, terminal), and then the iteration ends. A task that is not the
        principal's raises NotFound here, before a stream starts."""
        watch = self.changes.watch(task_id)
        try:
            task = await self.tasks.get(principal, task_id)
        except BaseException:
            watch.close()
            raise
        return self._follow(principal, task, watch, after)

    async def _follow(self, principal: Principal, task: Task, watch: Watch, after: int) -> AsyncIterator[TaskEvent]:
        task_id = task["id"]
        try:
            place: int | None = None
            while True:
                async for event in self._stored(task_id, after):
                    after = event.seq or after
                    yield event
                if task["status"] in TERMINAL:
                    # The terminal move and its events were committed together: all are read.
                    yield TaskEvent(after, "task", task, task["finished_at"] or time.time())
                    return
                if task["status"] == QUEUED and task["queue_position"] != place:
                    place = task["queue_position"]
                    yield TaskEvent(None, "queue", {"queue_position": place}, time.time())
                await watch.wait(self.poll_s)
                task = await self.tasks.get(principal, task_id)
        finally:
            watch.close()

    async def _stored(self, task_id: str, after: int) -> AsyncIterator[TaskEvent]:
        while True:
            rows = await self.store.call(self.store.events.after, task_id, after, _PAGE)
            for row in rows:
                after = row["seq"]
                yield TaskEvent(row["seq"], row["kind"], row["data"], row["at"])
            if len(rows) < _PAGE:
                return

    async def wait(self, principal: Principal, task_id: str, timeout: float) -> Task:
        """The task once it is terminal, or as it stands after ``timeout`` seconds."""
        watch = self.changes.watch(task_id)
        try:
            deadline = time.monotonic() + timeout
            task = await self.tasks.get(principal, task_id)
            while task["status"] not in TERMINAL:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                await watch.wait(min(self.poll_s, left))
                task = await self.tasks.get(principal, task_id)
            return task
        finally:
            watch.close()
