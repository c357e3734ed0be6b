"""What the work being done now carries with it: the request it serves (its id, its rate-limit
state) and, in the engine, the task and channel a step is about.

One context variable, set by the HTTP edge for each request (api/edge.py) and by the engine for
each step, and read where a request's id must travel (upstream calls, webhook deliveries, log
lines) without threading it through every signature. Outside a request it is None.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any


@dataclass
class RateState:
    """Where a key stands against its requests-per-minute limit, for the X-RateLimit headers."""

    limit: int
    remaining: int
    reset_s: int  # seconds until the whole limit is available again


@dataclass
class WorkContext:
    request_id: str | None = None
    rate: RateState | None = None
    # Extra fields every log line written in this context carries (task_id, channel, ...).
    fields: dict[str, Any] = field(default_factory=dict)


current: ContextVar[WorkContext | None] = ContextVar("tidehub_work", default=None)


def request_id() -> str | None:
    ctx = current.get()
    return ctx.request_id if ctx is not None else None
