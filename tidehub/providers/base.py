"""What the adapters share. Each adapter speaks one vendor protocol and implements core's ports
(core/ports.py): it turns a catalog input into an upstream job and reports that job's state in
Tidehub's words. It knows nothing of tasks, accounts or money.
"""

from __future__ import annotations

from typing import Mapping

import aiohttp
import orjson
from yarl import URL

from tidehub.core import context


async def pass_request_id(request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType) -> aiohttp.ClientResponse:
    """Every upstream call carries the id of the request it serves (or of the task's submit, in an
    engine step), so the vendor's logs and ours can be matched."""
    request_id = context.request_id()
    if request_id is not None:
        request.headers["X-Request-Id"] = request_id
    return await handler(request)


def same_origin(url: str | URL, base: URL) -> bool:
    """Whether ``url`` lies on ``base``'s origin (scheme, host, port): the only place a channel's
    key may be sent. A URL that does not parse lies nowhere."""
    try:
        target = url if isinstance(url, URL) else URL(url)
    except (ValueError, TypeError):
        return False
    return (target.scheme.lower(), (target.host or "").lower(), target.port) == (
        base.scheme.lower(), (base.host or "").lower(), base.port)


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
                middlewares=(pass_request_id,),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
