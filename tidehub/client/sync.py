"""The synchronous client: ``Tidehub``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
from httpx_sse import connect_sse

from tidehub.client import http
from tidehub.client.errors import WaitTimeout
from tidehub.client.types import Task, TaskEvent


class Tidehub:
    """A Tidehub gateway, through its Hub API.

    >>> hub = Tidehub("http://127.0.0.1:8000", key="th_...")   # or TIDEHUB_URL, TIDEHUB_API_KEY
    >>> task = hub.run("nano-banana", {"prompt": "a lighthouse at dusk"})
    >>> hub.download(task, "out")
    [PosixPath('out/image-0.png')]

    Requests that fail in a way a retry may cure (the gateway unreachable, 429 with Retry-After,
    502, 503) are retried ``max_retries`` times; a submit carries an Idempotency-Key, the same
    for each retry, so it never makes two tasks.
    """

    def __init__(self, url: str | None = None, key: str | None = None, *, timeout: float = 30.0,
                 max_retries: int = 4, transport: httpx.BaseTransport | None = None) -> None:
        self.url = http.base_url(url)
        self._headers = {"Authorization": f"Bearer {http.api_key(key)}"}
        self.max_retries = max_retries
        self._http = httpx.Client(base_url=self.url, timeout=timeout, transport=transport)
        self._capabilities: dict[str, str] = {}

    def __enter__(self) -> "Tidehub":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- tasks --------------------------------------------------------------------------------

    def run(self, model: str, input: dict[str, Any], *, on_event: Callable[[TaskEvent], None] | None = None,
            timeout: float | None = None, **submit: Any) -> Task:
        """Submit a task, follow it until it ends and return it completed. ``on_event`` sees every
        live event (status, progress, queue position, log lines). Raises TaskFailed, TaskTimedOut
        or TaskCancelled when it ends otherwise, WaitTimeout after ``timeout`` seconds."""
        task = self.submit(model, input, **submit)
        for event in self.events(task.id, timeout=timeout):
            if on_event is not None:
                on_event(event)
            if event.task is not None:
                return http.finished_or_raise(event.task)
        raise WaitTimeout(task.id, timeout or 0.0)  # pragma: no cover - events end with the task

    def submit(self, model: str, input: dict[str, Any], *, webhook_url: str | None = None,
               user_identifier: str | None = None, idempotency_key: str | None = None) -> Task:
        """Start a task; returns it as just accepted (pending)."""
        capability = self._capability(model)
        request = http.submit_request(model, input, webhook_url, user_identifier, idempotency_key)
        accepted = http.json_of(self._request("POST", f"/hub/v1/{capability}", **request))
        return self.get(accepted["task_id"])

    def get(self, task_id: str) -> Task:
        return Task.from_json(http.json_of(self._request("GET", f"/hub/v1/tasks/{task_id}")))

    def wait(self, task_id: str, timeout: float | None = None) -> Task:
        """The task once it has ended (however it ended). Raises WaitTimeout after ``timeout`` s."""
        deadline = http.deadline_of(timeout)
        while True:
            task = Task.from_json(http.json_of(self._request(
                "GET", f"/hub/v1/tasks/{task_id}", **http.wait_request(deadline))))
            if task.finished:
                return task
            if http.past(deadline):
                raise WaitTimeout(task_id, timeout or 0.0)

    def events(self, task_id: str, *, last_event_id: str | None = None,
               timeout: float | None = None) -> Iterator[TaskEvent]:
        """The task's live events, ending with the ``task`` event (the whole finished task). A
        dropped stream (the gateway restarted, the network blinked) is resumed where it stopped,
        with Last-Event-ID, for up to a minute of trying. Raises WaitTimeout if the task has not
        ended after ``timeout`` seconds."""
        follow = http.EventFollow(task_id, last_event_id, timeout)
        while True:
            dropped: Exception | None = None  # None: the stream ended before the task did
            try:
                with connect_sse(self._http, "GET", follow.path,
                                 **follow.request(self._headers, self._http.timeout.connect)) as source:
                    response = source.response
                    if http.stream_refused(response):
                        response.read()
                        raise http.api_error(response)
                    for sse in source.iter_sse():
                        event = follow.received(sse)
                        if event is None:
                            continue
                        yield event
                        if event.type == "task":
                            return
            except (httpx.TransportError, http.RetryStatus) as exc:
                dropped = exc
            time.sleep(follow.dropped(dropped))

    def cancel(self, task_id: str) -> Task:
        return Task.from_json(http.json_of(self._request("POST", f"/hub/v1/tasks/{task_id}/cancel")))

    def download(self, task: Task | str, directory: str | Path) -> list[Path]:
        """Save every result file of a task into ``directory`` (made if missing); their paths."""
        if isinstance(task, str):
            task = self.get(task)
        saved = []
        for url, path in http.download_paths(task, directory):
            # A file link carries its own credential (the token in its path): no API key is sent.
            with self._http.stream("GET", url, headers={}) as response:
                if response.status_code >= 400:
                    response.read()
                    raise http.api_error(response)
                with path.open("wb") as out:
                    for chunk in response.iter_bytes():
                        out.write(chunk)
            saved.append(path)
        return saved

    # -- models and the account ---------------------------------------------------------------

    def models(self, capability: str | None = None) -> list[dict[str, Any]]:
        params = {"capability": capability} if capability else None
        return http.json_of(self._request("GET", "/hub/v1/models", params=params))["data"]

    def model(self, model_id: str) -> dict[str, Any]:
        """A model with its input schema, an example and the example's price."""
        return http.json_of(self._request("GET", f"/hub/v1/models/{model_id}"))

    def account(self) -> dict[str, Any]:
        """Credits available, held by running tasks, and spent."""
        return http.json_of(self._request("GET", "/hub/v1/account"))

    # -- plumbing -----------------------------------------------------------------------------

    def _capability(self, model: str) -> str:
        if model not in self._capabilities:
            self._capabilities[model] = self.model(model)["capability"]
        return self._capabilities[model]

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {**self._headers, **kwargs.pop("headers", {})}
        for attempt in range(self.max_retries + 1):
            response, error = None, None
            try:
                response = self._http.request(method, path, headers=headers, **kwargs)
            except httpx.TransportError as exc:
                error = exc
            delay = http.request_retry(attempt, self.max_retries, response, error, f"{method} {self.url}{path}")
            if delay is None:
                assert response is not None
                return response
            time.sleep(delay)
        raise AssertionError("unreachable")
