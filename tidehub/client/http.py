"""What the sync and async clients share: where the gateway is, which failures are worth a retry,
and how the gateway's answers become the client's types and errors. No I/O here."""

from __future__ import annotations

import os
import random
import re
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx

from tidehub.client.errors import APIError, TaskCancelled, TaskError, TaskFailed, TaskTimedOut, TidehubError
from tidehub.client.types import Task, TaskEvent

DEFAULT_URL = "http://127.0.0.1:8000"
#: Statuses a retry may cure: the gateway is overloaded (429), or every upstream or the gateway
#: itself is momentarily unavailable (502, 503).
RETRY_STATUSES = (429, 502, 503)
#: The longest ``GET /tasks/{id}?wait=`` the gateway holds a request.
MAX_WAIT_S = 60
#: How long a live event stream keeps trying to reconnect after it was dropped.
RECONNECT_S = 60.0


def base_url(url: str | None) -> str:
    return (url or os.environ.get("TIDEHUB_URL") or DEFAULT_URL).rstrip("/")


def api_key(key: str | None) -> str:
    key = key or os.environ.get("TIDEHUB_API_KEY")
    if not key:
        raise TidehubError("no API key: pass key=... or set TIDEHUB_API_KEY")
    return key


def retry_delay(attempt: int, response: httpx.Response | None) -> float:
    """Seconds before retry number ``attempt`` (0 first): exponential with jitter, or the
    gateway's Retry-After when it gave one (capped at a minute)."""
    if response is not None:
        after = response.headers.get("retry-after", "")
        try:
            return min(60.0, max(0.0, float(after)))
        except ValueError:
            pass
    return min(8.0, 0.5 * 2**attempt) * random.uniform(0.8, 1.2)


def api_error(response: httpx.Response) -> APIError:
    """The gateway's error envelope (Hub's, or MS's) as an APIError."""
    code, message, field = "http_error", response.reason_phrase or "error", None
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        inner = body.get("error") if isinstance(body.get("error"), dict) else body
        code = str(inner.get("error_code") or inner.get("code") or code)
        message = str(inner.get("error_message") or inner.get("message") or message)
        field = inner.get("field")
    retry_after = response.headers.get("retry-after")
    return APIError(response.status_code, code, message, field,
                    float(retry_after) if retry_after and retry_after.isdigit() else None)


def json_of(response: httpx.Response) -> Any:
    if response.status_code >= 400:
        raise api_error(response)
    return response.json()


def finished_or_raise(task: Task) -> Task:
    """``task`` if it completed; else the error that says how it ended."""
    errors: dict[str, type[TaskError]] = {"failed": TaskFailed, "timeout": TaskTimedOut, "cancelled": TaskCancelled}
    if task.status in errors:
        raise errors[task.status](task)
    return task


def event_of(sse: Any, last_id: str | None) -> TaskEvent | None:
    """A server-sent event (httpx_sse) as a TaskEvent; None for a block with no data (the
    stream's opening ``retry:``). An SSE parser carries the last id over to events that have none
    of their own; the gateway's ids only ever grow, so a repeated one means "no id"."""
    if not sse.data:
        return None
    own_id = sse.id if sse.id and sse.id != last_id else None
    return TaskEvent(type=sse.event, data=sse.json(), id=own_id)


_UNSAFE = re.compile(r"[^\w.-]+")


def file_name(url: str, index: int, taken: set[str]) -> str:
    """A local name for a result file: the last part of its URL, made safe and unique."""
    name = _UNSAFE.sub("_", Path(unquote(urlsplit(url).path)).name).strip("._") or f"output-{index}"
    stem, dot, extension = name.rpartition(".")
    if not dot:
        stem, extension = name, ""
    candidate, n = name, 1
    while candidate in taken:
        n += 1
        candidate = f"{stem}-{n}.{extension}" if extension else f"{stem}-{n}"
    taken.add(candidate)
    return candidate


def submit_body(model: str, input: dict[str, Any], webhook_url: str | None,
                user_identifier: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "input": input}
    if webhook_url is not None:
        body["webhook_url"] = webhook_url
    if user_identifier is not None:
        body["user_identifier"] = user_identifier
    return body


class RetryStatus(Exception):
    """An answer a retry may cure (RETRY_STATUSES), met while opening an event stream."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response


def past(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() >= deadline


def read_timeout(deadline: float | None) -> float:
    """How long an event stream may be silent: the gateway sends a heartbeat every 15 s, so a
    minute of silence is a dead connection; never past the caller's deadline."""
    if deadline is None:
        return 60.0
    return max(0.1, min(60.0, deadline - time.monotonic()))
