"""The Tidehub Python client: submit tasks, follow them live, download their results.

It speaks HTTP to a Tidehub gateway and nothing else (it imports no part of the gateway)::

    from tidehub.client import Tidehub

    with Tidehub("http://127.0.0.1:8000", key="th_...") as hub:
        task = hub.run("nano-banana", {"prompt": "a lighthouse at dusk"},
                       on_event=lambda e: print(e.type, e.data))
        print(hub.download(task, "out"))

``AsyncTidehub`` is the same for asyncio. ``tidehub.webhooks.verify`` checks a webhook delivery.
"""

from tidehub.client.aio import AsyncTidehub
from tidehub.client.errors import (
    APIError, ConnectionFailed, InvalidSignature, TaskCancelled, TaskError, TaskFailed, TaskTimedOut, TidehubError,
    WaitTimeout,
)
from tidehub.client.sync import Tidehub
from tidehub.client.types import Task, TaskEvent

__all__ = [
    "APIError", "AsyncTidehub", "ConnectionFailed", "InvalidSignature", "Task", "TaskCancelled", "TaskError",
    "TaskEvent", "TaskFailed", "TaskTimedOut", "Tidehub", "TidehubError", "WaitTimeout",
]
