"""A task's live events as Server-Sent Events, and the ``?wait=`` of a task read: shared by the dialects."""

from __future__ import annotations

import asyncio
import math
from typing import Any, AsyncIterator, Callable

import orjson
from starlette.responses import StreamingResponse

from tidehub.api.responses import iso
from tidehub.core.events import TaskEvent
from tidehub.errors import BadRequest, quoted

#: The longest a ``GET /tasks/{id}?wait=`` holds the request, in seconds.
MAX_WAIT_S = 60
# A comment line this often while nothing happens, so proxies and clients know the stream lives.
HEARTBEAT_S = 15.0
# What a dropped client waits before reconnecting (with Last-Event-ID), in milliseconds.
RETRY_MS = 1000


def wait_seconds(raw: str | None) -> float:
    if raw is None or raw == "":
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or not 0 <= value <= MAX_WAIT_S:
        raise BadRequest(f"wait: must be a number of seconds from 0 to {MAX_WAIT_S}, got {quoted(raw)}",
                         code="invalid_wait", field="wait")
    return value


def last_event_id(raw: str | None) -> int:
    """The sequence number a resumed stream starts after (the ``Last-Event-ID`` header)."""
    if raw is None or raw.strip() == "":
        return 0
    if not raw.strip().isdigit() or len(raw.strip()) > 12:
        raise BadRequest(f"Last-Event-ID: must be an event id this stream sent, got {quoted(raw)}",
                         code="invalid_last_event_id", field="Last-Event-ID")
    return int(raw.strip())


class EventStreamResponse(StreamingResponse):
    def __init__(self, content: AsyncIterator[bytes]) -> None:
        # No caching, and no buffering in a proxy in between (nginx honours X-Accel-Buffering).
        super().__init__(content, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _frame(event: TaskEvent, render_task: Callable[[dict[str, Any]], Any], statuses: dict[str, str],
           task_id: str) -> bytes:
    if event.kind == "task":
        data: Any = render_task(event.data)
    else:
        data = {"task_id": task_id, **event.data, "at": iso(event.at)}
        if event.kind == "status":
            data["status"] = statuses[event.data["status"]]
    head = f"id: {event.seq}\n" if event.seq is not None else ""
    return f"{head}event: {event.kind}\ndata: ".encode() + orjson.dumps(data) + b"\n\n"


async def server_sent_events(events: AsyncIterator[TaskEvent], render_task: Callable[[dict[str, Any]], Any],
                             statuses: dict[str, str], task_id: str) -> AsyncIterator[bytes]:
    """The wire form of a task's events, with a heartbeat comment while nothing happens. The
    events are read by a task of their own, so a heartbeat never interrupts a read."""
    queue: asyncio.Queue[TaskEvent | BaseException | None] = asyncio.Queue(maxsize=256)

    async def pump() -> None:
        try:
            async for event in events:
                await queue.put(event)
            await queue.put(None)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # reported on the stream's side, where it is logged
            await queue.put(exc)
        finally:
            await events.aclose()  # type: ignore[attr-defined]

    reader = asyncio.create_task(pump())
    try:
        yield f"retry: {RETRY_MS}\n\n".encode()
        while True:
            try:
                item = await asyncio.wait_for(queue.get(), HEARTBEAT_S)
            except asyncio.TimeoutError:
                yield b": keep-alive\n\n"
                continue
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield _frame(item, render_task, statuses, task_id)
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
