"""The one small interface every upstream adapter implements.

An adapter speaks one vendor protocol: it turns a catalog input into an upstream job and reports
that job's state in Tidehub's words. It knows nothing of tasks, accounts or money.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Protocol

import aiohttp
import orjson


class UpstreamError(Exception):
    """An upstream refusal or failure. ``retryable`` says whether trying again may help."""

    def __init__(
        self,
        message: str,
        *,
        code: str = "upstream_error",
        retryable: bool = False,
        status: int | None = None,
        field: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.retryable = retryable
        self.status = status
        self.field = field
        self.retry_after = retry_after


@dataclass
class Job:
    """What an adapter needs to find an upstream job again; stored with the task."""

    ref: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class JobState:
    state: Literal["queued", "running", "completed", "failed"]
    queue_position: int | None = None
    logs: list[dict[str, Any]] = field(default_factory=list)
    error: UpstreamError | None = None


class Adapter(Protocol):
    name: str

    async def submit(self, model: str, payload: dict[str, Any], *, callback_url: str | None = None,
                     spec: Mapping[str, Any] | None = None) -> Job:
        """Start an upstream job. ``spec`` is the catalog entry's upstream spec for this adapter
        (``{model, api?, rename?}``): ``api`` picks the vendor surface where an adapter speaks several.
        An adapter for a synchronous surface does the whole call here and returns a Job that
        ``status`` reports completed (its answer kept in ``Job.data``)."""
        ...

    async def status(self, job: Job) -> JobState: ...

    async def result(self, job: Job) -> dict[str, Any]: ...

    async def cancel(self, job: Job) -> None: ...

    async def verify_callback(self, headers: Mapping[str, str], body: bytes) -> str:
        """Check an upstream callback is genuine; return the upstream job id it is about."""
        ...

    def auth_headers_for(self, url: str) -> dict[str, str]:
        """Headers a download of a result ``url`` needs (the vendor's own file URLs may want the key)."""
        ...

    async def close(self) -> None: ...


class LazyPool:
    """The HTTP client every adapter uses: one connection pool per channel (orjson for bodies),
    opened on first use and again if closed, so an adapter can be built outside an event loop."""

    def __init__(self, headers: Mapping[str, str], timeout_s: float, max_connections: int) -> None:
        self.headers = dict(headers)
        self.timeout = aiohttp.ClientTimeout(total=timeout_s, connect=min(10.0, timeout_s))
        self.max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    def __call__(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                headers=self.headers,
                timeout=self.timeout,
                connector=aiohttp.TCPConnector(limit=self.max_connections, ttl_dns_cache=300),
                json_serialize=lambda v: orjson.dumps(v).decode(),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def upstream_payload(input: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    """The catalog input in the upstream's field names (a catalog entry's optional ``rename``)."""
    rename = spec.get("rename") or {}
    if not rename:
        return input
    return {rename.get(k, k): v for k, v in input.items()}
