"""The asynchronous client: ``AsyncTidehub``, the twin of ``Tidehub`` for asyncio programs."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

import httpx
from httpx_sse import aconnect_sse

from tidehub.client import http
from tidehub.client.errors import ConnectionFailed, WaitTimeout
from tidehub.client.types import Task, TaskEvent


class AsyncTidehub:
    """A Tidehub gateway, through its Hub API, for asyncio.

    >>> async with AsyncTidehub("http://127.0.0.1:8000", key="th_...") as hub:
    ...     task = await hub.run("nano-banana", {"prompt": "a lighthouse at dusk"})
    ...     await hub.download(task, "out")

    Requests that fail in a way a retry may cure (the gateway unreachable, 429 with Retry-After,
    502, 503) are retried ``max_retries`` times; a submit carries an Idempotency-Key, the same
    for each retry, so it never makes two tasks.
    """

    def __init__(self, url: str | None = None, key: str | None = None, *, timeout: float = 30.0,
                 max_retries: int = 4, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.url = http.base_url(url)
        self._headers = {"Authorization": f"Bearer {http.api_key(key)}"}
        self.max_retries = max_retries
        self._http = httpx.AsyncClient(base_url=self.url, timeout=timeout, transport=transport)
        self._capabilities: dict[str, str] = {}

    async def __aenter__(self) -> "AsyncTidehub":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    # -- tasks --------------------------------------------------------------------------------

    async def run(self, model: str, input: dict[str, Any], *,
                  on_event: Callable[[TaskEvent], Awaitable[None] | None] | None = None,
            timeout: float | None = None, **submit: Any) -> Task:
        """Submit a task, follow it until it ends and return it completed. ``on_event`` sees every
        live event (status, progress, queue position, log lines); it may be a coroutine function. Raises TaskFailed, TaskTimedOut
        or TaskCancelled when it ends otherwise, WaitTimeout after ``timeout`` seconds."""
        task = await self.submit(model, input, **submit)
        async for event in self.events(task.id, timeout=timeout):
            if on_event is not None:
                outcome = on_event(event)
                if outcome is not None:
                    await outcome
            if event.task is not None:
                return http.finished_or_raise(event.task)
        raise WaitTimeout(task.id, timeout or 0.0)  # pragma: no cover - events end with the task

    async def submit(self, model: str, input: dict[str, Any], *, webhook_url: str | None = None,
               user_identifier: str | None = None, idempotency_key: str | None = None) -> Task:
        """Start a task; returns it as just accepted (pending)."""
        capability = await self._capability(model)
        headers = {"Idempotency-Key": idempotency_key or f"client-{uuid.uuid4()}"}
        body = http.submit_body(model, input, webhook_url, user_identifier)
        accepted = http.json_of(await self._request("POST", f"/hub/v1/{capability}", json=body, headers=headers))
        return await self.get(accepted["task_id"])

    async def get(self, task_id: str) -> Task:
        return Task.from_json(http.json_of(await self._request("GET", f"/hub/v1/tasks/{task_id}")))

    async def wait(self, task_id: str, timeout: float | None = None) -> Task:
        """The task once it has ended (however it ended). Raises WaitTimeout after ``timeout`` s."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = http.MAX_WAIT_S if deadline is None else min(http.MAX_WAIT_S, deadline - time.monotonic())
            task = Task.from_json(http.json_of(await self._request(
                "GET", f"/hub/v1/tasks/{task_id}", params={"wait": f"{max(0.0, left):.1f}"},
                timeout=left + 30)))
            if task.finished:
                return task
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(task_id, timeout or 0.0)

    async def events(self, task_id: str, *, last_event_id: str | None = None,
               timeout: float | None = None) -> AsyncIterator[TaskEvent]:
        """The task's live events, ending with the ``task`` event (the whole finished task). A
        dropped stream (the gateway restarted, the network blinked) is resumed where it stopped,
        with Last-Event-ID, for up to a minute of trying. Raises WaitTimeout if the task has not
        ended after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        last = last_event_id
        dropped_at: float | None = None
        attempt = 0
        while True:
            headers = {**self._headers, **({"Last-Event-ID": last} if last else {})}
            read = httpx.Timeout(self._http.timeout.connect, read=http.read_timeout(deadline))
            try:
                async with aconnect_sse(self._http, "GET", f"/hub/v1/tasks/{task_id}/events", headers=headers,
                                 timeout=read) as source:
                    response = source.response
                    if response.status_code in http.RETRY_STATUSES:
                        raise http.RetryStatus(response)
                    if response.status_code >= 400:
                        await response.aread()
                        raise http.api_error(response)
                    async for sse in source.aiter_sse():
                        dropped_at, attempt = None, 0
                        event = http.event_of(sse, last)
                        if event is None:
                            continue
                        if event.id:
                            last = event.id
                        yield event
                        if event.type == "task":
                            return
            except (httpx.TransportError, http.RetryStatus) as exc:
                if isinstance(exc, httpx.ReadTimeout) and http.past(deadline):
                    raise WaitTimeout(task_id, timeout or 0.0) from None
                response = exc.response if isinstance(exc, http.RetryStatus) else None
            else:
                response = None  # the stream ended before the task did: the gateway went away
            if http.past(deadline):
                raise WaitTimeout(task_id, timeout or 0.0)
            dropped_at = dropped_at or time.monotonic()
            if time.monotonic() - dropped_at > http.RECONNECT_S:
                raise ConnectionFailed(f"the event stream of task {task_id} could not be resumed")
            await asyncio.sleep(http.retry_delay(min(attempt, 3), response))
            attempt += 1

    async def cancel(self, task_id: str) -> Task:
        return Task.from_json(http.json_of(await self._request("POST", f"/hub/v1/tasks/{task_id}/cancel")))

    async def download(self, task: Task | str, directory: str | Path) -> list[Path]:
        """Save every result file of a task into ``directory`` (made if missing); their paths."""
        if isinstance(task, str):
            task = await self.get(task)
        target = Path(directory)
        target.mkdir(parents=True, exist_ok=True)
        taken: set[str] = {p.name for p in target.iterdir()}
        saved = []
        for index, item in enumerate(task.files):
            path = target / http.file_name(item["url"], index, taken)
            # A file link carries its own credential (the token in its path): no API key is sent.
            async with self._http.stream("GET", item["url"], headers={}) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise http.api_error(response)
                with path.open("wb") as out:
                    async for chunk in response.aiter_bytes():
                        out.write(chunk)  # local disk: a short block, as with any file write
            saved.append(path)
        return saved

    # -- models and the account ---------------------------------------------------------------

    async def models(self, capability: str | None = None) -> list[dict[str, Any]]:
        params = {"capability": capability} if capability else None
        return http.json_of(await self._request("GET", "/hub/v1/models", params=params))["data"]

    async def model(self, model_id: str) -> dict[str, Any]:
        """A model with its input schema, an example and the example's price."""
        return http.json_of(await self._request("GET", f"/hub/v1/models/{model_id}"))

    async def account(self) -> dict[str, Any]:
        """Credits available, held by running tasks, and spent."""
        return http.json_of(await self._request("GET", "/hub/v1/account"))

    # -- plumbing -----------------------------------------------------------------------------

    async def _capability(self, model: str) -> str:
        if model not in self._capabilities:
            self._capabilities[model] = (await self.model(model))["capability"]
        return self._capabilities[model]

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {**self._headers, **kwargs.pop("headers", {})}
        for attempt in range(self.max_retries + 1):
            try:
                response = await self._http.request(method, path, headers=headers, **kwargs)
            except httpx.TransportError as exc:
                if attempt == self.max_retries:
                    raise ConnectionFailed(f"{method} {self.url}{path}: {exc!r}") from exc
                await asyncio.sleep(http.retry_delay(attempt, None))
                continue
            if response.status_code not in http.RETRY_STATUSES or attempt == self.max_retries:
                return response
            await asyncio.sleep(http.retry_delay(attempt, response))
        raise AssertionError("unreachable")
