"""What the sync and async clients share: where the gateway is, which failures are worth a retry,
and how the gateway's answers become the client's types and errors. No I/O here."""

from __future__ import annotations

import os
import random
import re
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx

from tidehub.client.errors import (
    APIError, ConnectionFailed, TaskCancelled, TaskError, TaskFailed, TaskTimedOut, TidehubError, WaitTimeout,
)
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


def submit_request(model: str, input: dict[str, Any], webhook_url: str | None, user_identifier: str | None,
                   idempotency_key: str | None) -> dict[str, Any]:
    """The body and headers of a submit; the Idempotency-Key is chosen once, so every retry of the
    request carries the same one."""
    body: dict[str, Any] = {"model": model, "input": input}
    if webhook_url is not None:
        body["webhook_url"] = webhook_url
    if user_identifier is not None:
        body["user_identifier"] = user_identifier
    return {"json": body, "headers": {"Idempotency-Key": idempotency_key or f"client-{uuid.uuid4()}"}}


def wait_request(deadline: float | None) -> dict[str, Any]:
    """The query and timeout of one long poll of a task: at most MAX_WAIT_S, never past the deadline."""
    left = MAX_WAIT_S if deadline is None else min(MAX_WAIT_S, deadline - time.monotonic())
    return {"params": {"wait": f"{max(0.0, left):.1f}"}, "timeout": left + 30}


def deadline_of(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


def request_retry(attempt: int, max_retries: int, response: httpx.Response | None,
                  error: httpx.TransportError | None, what: str) -> float | None:
    """Seconds to wait before trying a request again, or None to take ``response`` as it is.
    ``error`` is why no response came; past the last attempt it becomes ConnectionFailed."""
    if error is not None:
        if attempt == max_retries:
            raise ConnectionFailed(f"{what}: {error!r}") from error
        return retry_delay(attempt, None)
    assert response is not None
    if response.status_code not in RETRY_STATUSES or attempt == max_retries:
        return None
    return retry_delay(attempt, response)


def download_paths(task: Task, directory: str | Path) -> list[tuple[str, Path]]:
    """Each result file's URL and where it is saved in ``directory`` (made if missing)."""
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    taken: set[str] = {p.name for p in target.iterdir()}
    return [(item["url"], target / file_name(item["url"], index, taken)) for index, item in enumerate(task.files)]


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


def stream_refused(response: httpx.Response) -> bool:
    """Whether an event stream's opening answer is an error (its body is then read and given to
    api_error); raises RetryStatus when a retry may cure it."""
    if response.status_code in RETRY_STATUSES:
        raise RetryStatus(response)
    return response.status_code >= 400


class EventFollow:
    """Where following a task's live events has got to: the last event id (to resume a dropped
    stream with Last-Event-ID), the caller's deadline, and how long reconnecting has been tried."""

    def __init__(self, task_id: str, last_event_id: str | None, timeout: float | None) -> None:
        self.task_id = task_id
        self.timeout = timeout
        self.deadline = deadline_of(timeout)
        self.last = last_event_id
        self._dropped_at: float | None = None
        self._attempt = 0

    @property
    def path(self) -> str:
        return f"/hub/v1/tasks/{self.task_id}/events"

    def request(self, headers: dict[str, str], connect_timeout: float | None) -> dict[str, Any]:
        """The headers and timeout of (re)opening the stream."""
        return {"headers": {**headers, **({"Last-Event-ID": self.last} if self.last else {})},
                "timeout": httpx.Timeout(connect_timeout, read=read_timeout(self.deadline))}

    def received(self, sse: Any) -> TaskEvent | None:
        """A server-sent event as a TaskEvent (None for one with no data); the stream is live again."""
        self._dropped_at, self._attempt = None, 0
        event = event_of(sse, self.last)
        if event is not None and event.id:
            self.last = event.id
        return event

    def dropped(self, error: Exception | None) -> float:
        """Seconds to wait before reopening the stream, after ``error`` (None: it ended before the
        task did, the gateway went away). Raises WaitTimeout past the deadline, ConnectionFailed
        after RECONNECT_S of trying."""
        if past(self.deadline):
            raise WaitTimeout(self.task_id, self.timeout or 0.0)
        self._dropped_at = self._dropped_at or time.monotonic()
        if time.monotonic() - self._dropped_at > RECONNECT_S:
            raise ConnectionFailed(f"the event stream of task {self.task_id} could not be resumed")
        delay = retry_delay(min(self._attempt, 3), error.response if isinstance(error, RetryStatus) else None)
        self._attempt += 1
        return delay
