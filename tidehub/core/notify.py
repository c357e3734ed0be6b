"""Notifications between the processes of one deployment: wake-ups, cancels, key changes.

A notification is only ever a hint to look at the database (or at the state shared in Redis)
sooner than polling would: a lost one costs latency, never correctness. So Redis down, flushed or
absent loses nothing; other processes then find out the way they always could (the engine's tick,
the key cache's time to live).

``Notifier`` is the port, with two implementations: ``LocalNotifier`` delivers within this process
only (one process, or several on one machine without Redis); ``RedisNotifier`` also publishes on
one Redis pub/sub channel (``<prefix>events``) and delivers what the other processes publish there.
Handlers run on the event loop and must be quick; ``publish`` may be called from any thread.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
from collections import defaultdict
from typing import Callable

import orjson
import redis
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from tidehub.core.shared import BACKOFF_S, TIMEOUT_S, SharedState

log = logging.getLogger("tidehub.notify")

Handler = Callable[[str], None]

# The topics, and what their data is.
WAKE = "wake"            # "": tasks are due now (a submit, a callback); engines claim at once
CANCEL = "cancel"        # a task id: it was cancelled; the engine running a step of it stops the step
KEY_CHANGED = "key"      # a key id: revoked or edited; key caches drop it
# Delivered locally (never published) when the link to the other processes is (re)established:
# what was missed meanwhile is unknown, so holders of shared state read it afresh.
RESYNC = "resync"

CHANNEL = "events"


class Notifier:
    """Delivers to this process's handlers; see the implementations for the other processes."""

    def __init__(self) -> None:
        self._handlers: dict[str, list[Handler]] = defaultdict(list)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: int | None = None

    def subscribe(self, topic: str, handler: Handler) -> None:
        self._handlers[topic].append(handler)

    def publish(self, topic: str, data: str = "") -> None:
        """Tell this process now and the others as soon as possible. Never raises, never waits."""
        if self._loop is not None and threading.get_ident() != self._thread:
            self._loop.call_soon_threadsafe(self._publish, topic, data)
        else:
            self._publish(topic, data)

    def _publish(self, topic: str, data: str) -> None:
        self._deliver(topic, data)

    def _deliver(self, topic: str, data: str) -> None:
        for handler in self._handlers.get(topic, ()):
            try:
                handler(data)
            except Exception:
                log.exception("handling the %s notification failed", topic)

    def start(self) -> None:
        """On the event loop that handlers are to run on."""
        self._loop, self._thread = asyncio.get_running_loop(), threading.get_ident()

    async def close(self) -> None:
        self._loop = None


class LocalNotifier(Notifier):
    """This process only."""


class RedisNotifier(Notifier):
    """Also through Redis pub/sub, to every process sharing the prefix."""

    def __init__(self, shared: SharedState) -> None:
        super().__init__()
        self.shared = shared
        self.channel = shared.key(CHANNEL)
        # Our own messages come back from Redis: they were delivered here already.
        self.origin = secrets.token_hex(8)
        self._outbox: list[bytes] = []
        self._pending: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self.listening = False  # subscribed now (for tests and health)

    def _publish(self, topic: str, data: str) -> None:
        self._deliver(topic, data)
        if self._pending is not None and not self._closing:
            self._outbox.append(encode(self.origin, topic, data))
            self._pending.set()

    def start(self) -> None:
        super().start()
        self._pending = asyncio.Event()
        self._tasks = [asyncio.create_task(self._send_loop(), name="tidehub-notify-send"),
                       asyncio.create_task(self._listen_loop(), name="tidehub-notify-listen")]

    async def close(self) -> None:
        self._closing = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await super().close()

    async def _send_loop(self) -> None:
        """Whatever was published since the last round goes out in one pipeline."""
        assert self._pending is not None
        while True:
            await self._pending.wait()
            self._pending.clear()
            batch, self._outbox = self._outbox, []
            client = self.shared.client()
            if client is None:
                continue  # Redis is down: these hints are dropped, polling covers for them
            try:
                async with client.pipeline(transaction=False) as pipe:
                    for message in batch:
                        pipe.publish(self.channel, message)
                    await pipe.execute()
            except (RedisError, OSError) as exc:
                self.shared.failed(exc)

    async def _listen_loop(self) -> None:
        # Its own connection: a subscriber waits on its socket, which the shared client's short
        # command timeout would cut; the health check pings notice a dead link instead.
        client = aioredis.Redis.from_url(self.shared.url, socket_connect_timeout=TIMEOUT_S,
                                         health_check_interval=5)
        try:
            while True:
                try:
                    async with client.pubsub(ignore_subscribe_messages=True) as pubsub:
                        await pubsub.subscribe(self.channel)
                        self.listening = True
                        self.shared.recovered()
                        self._deliver(RESYNC, "")
                        while True:
                            message = await pubsub.get_message(timeout=1.0)
                            if message is not None:
                                self._received(message["data"])
                except (RedisError, OSError) as exc:
                    self.listening = False
                    self.shared.failed(exc)
                    await asyncio.sleep(BACKOFF_S)
        finally:
            self.listening = False
            await client.aclose()

    def _received(self, raw: bytes) -> None:
        try:
            message = orjson.loads(raw)
            origin, topic, data = message["o"], message["t"], message["d"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            log.warning("ignored a malformed notification on %s", self.channel)
            return
        if origin != self.origin:
            self._deliver(topic, data)


def encode(origin: str, topic: str, data: str) -> bytes:
    return orjson.dumps({"o": origin, "t": topic, "d": data})


def for_shared(shared: SharedState) -> Notifier:
    return RedisNotifier(shared) if shared.enabled else LocalNotifier()


def announce(url: str, prefix: str, topic: str, data: str = "") -> bool:
    """Publish once from a process that runs no event loop (the CLI); False if Redis is off or
    unreachable (the gateways then notice within their polling or cache times)."""
    if not url:
        return False
    client = redis.Redis.from_url(url, socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S)
    try:
        client.publish(SharedState(url, prefix=prefix).key(CHANNEL), encode("cli-" + secrets.token_hex(4), topic, data))
        return True
    except (RedisError, OSError):
        return False
    finally:
        client.close()
