"""State shared between processes and hosts through Redis, when ``TIDEHUB_REDIS_URL`` is set.

Redis is only ever an accelerator: shared rate limits, shared breaker state, cross-process
wake-ups, immediate key revocation. The database stays the one copy of everything, so flushing
Redis loses nothing, and a gateway whose Redis is unreachable starts and serves as if it had none
(limits in the database or per process, wake-ups by polling), reporting ``redis: error`` in its
health check until Redis answers again.

Users of the link ask ``shared.client()`` for a client each time and treat ``None`` as "no
Redis now"; a command that fails reports it with ``shared.failed(exc)`` and falls back. After a
failure the link stays down for a short back-off instead of making every request wait for a
connection timeout.
"""

from __future__ import annotations

import logging
import time
from typing import Literal

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger("tidehub.shared")

Status = Literal["ok", "disabled", "error"]

# Seconds a connection attempt or a command may take before Redis counts as unreachable.
TIMEOUT_S = 0.5
# After a failure, seconds before the link is tried again.
BACKOFF_S = 2.0


class SharedState:
    def __init__(self, url: str, *, prefix: str = "tidehub:") -> None:
        self.url = url
        # Every key and channel name Tidehub uses starts with this, so several gateways (or tests)
        # can share one Redis.
        self.prefix = prefix
        self._client: aioredis.Redis | None = None
        self._down_until = 0.0
        self._last_error: str | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.url)

    def client(self) -> aioredis.Redis | None:
        """A client, or None when Redis is off or in its back-off after a failure."""
        if not self.url or time.monotonic() < self._down_until:
            return None
        if self._client is None:
            self._client = aioredis.Redis.from_url(
                self.url, socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S,
                health_check_interval=30, decode_responses=False)
        return self._client

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    def failed(self, exc: BaseException) -> None:
        """A command failed: fall back for a while. Logged once per outage, not per request."""
        if self._last_error is None:
            log.warning("redis unreachable (%s: %s); falling back to the database and per-process state",
                        type(exc).__name__, exc)
        self._last_error = f"{type(exc).__name__}: {exc}"
        self._down_until = time.monotonic() + BACKOFF_S

    def recovered(self) -> None:
        if self._last_error is not None:
            log.info("redis reachable again")
        self._last_error = None

    async def status(self) -> Status:
        """For the health check: pings Redis now (ignoring the back-off)."""
        if not self.url:
            return "disabled"
        self._down_until = 0.0
        client = self.client()
        assert client is not None
        try:
            await client.ping()
        except (RedisError, OSError) as exc:
            self.failed(exc)
            return "error"
        self.recovered()
        return "ok"

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
