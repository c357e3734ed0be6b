"""What the adapters share. Each adapter speaks one vendor protocol and implements core's ports
(core/ports.py): it turns a catalog input into an upstream job and reports that job's state in
Tidehub's words. It knows nothing of tasks, accounts or money.
"""

from __future__ import annotations

from typing import Mapping

import aiohttp
import orjson


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
