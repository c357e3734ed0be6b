"""Routing state shared between processes through Redis: circuit breakers and per-minute budgets.

Each process keeps its own breakers (core/health.py) and reports its own outcomes; this module
makes them agree. A breaker that opens in one process is opened in all (a ``breaker``
notification, and an entry in the ``<prefix>breakers`` hash for processes that start or reconnect
later), with the same end of cool-down; a probe that succeeds closes it in all. When the
cool-down ends, one probe goes out across every process: a breaker may probe only while it holds
the channel's probe grant (``<prefix>probe:<channel>``, taken with SET NX and expiring after the
probe timeout). A channel's requests-per-minute budget is one token bucket in Redis
(``<prefix>rpm:<channel>``, refilled on Redis's own clock), so the limit holds across processes.

Redis is never the only copy: flushing it forgets which breakers are open (each process learns
again from its own failures) and refills the buckets. While Redis is unreachable, each process
falls back to what it does alone: its own breakers, its own probe, its own budget of the channel's
whole rate (documented: per process while Redis is down).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import Any

import orjson
from redis.exceptions import RedisError

from tidehub.core.channels import Channel
from tidehub.core.health import OPEN
from tidehub.core.notify import RESYNC, Notifier
from tidehub.core.routing import Router
from tidehub.core.shared import SharedState

log = logging.getLogger("tidehub.channels")

BREAKER = "breaker"  # notification: {"channel", "state": "open" | "closed", "until": epoch seconds}

# One token from the channel's bucket, if it has one; the bucket holds a minute's budget and
# refills evenly. Redis's clock, so hosts with skewed clocks share one bucket correctly.
_TAKE = """
local rpm = tonumber(ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'stamp')
local tokens = tonumber(state[1]) or rpm
local stamp = tonumber(state[2]) or now
tokens = math.min(rpm, tokens + math.max(0, now - stamp) * rpm / 60)
local ok = 0
if tokens >= 1 then
  tokens = tokens - 1
  ok = 1
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'stamp', tostring(now))
redis.call('PEXPIRE', KEYS[1], 120000)
return ok
"""

# Give the probe grant back only if it is still ours: at once (ARGV[2] = 0), or when the new
# cool-down ends (ARGV[2] milliseconds), so that no other process probes before then.
_RELEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if tonumber(ARGV[2]) > 0 then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return redis.call('DEL', KEYS[1])
"""

# How often half-open breakers ask for the probe grant.
GRANT_INTERVAL_S = 0.1


class SharedChannels:
    def __init__(self, shared: SharedState, notifier: Notifier, router: Router) -> None:
        self.shared = shared
        self.notifier = notifier
        self.router = router
        self.token = secrets.token_hex(8)  # names this process's probe grants
        self._grants: set[str] = set()  # channels whose probe grant this process holds
        self._background: set[asyncio.Task[Any]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._take = None
        self._release = None
        router.shared = self
        for health in router.health.values():
            health.gated = True
        notifier.subscribe(BREAKER, self._heard)
        notifier.subscribe(RESYNC, lambda _: self._spawn(self._resync()))

    # -- life cycle ------------------------------------------------------------------------------

    def start(self) -> None:
        self._loop_task = asyncio.create_task(self._grant_loop(), name="tidehub-probe-grants")

    async def close(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
        for channel_id in list(self._grants):
            await self._give_back(channel_id)
        await asyncio.gather(*self._background, return_exceptions=True)

    def online(self) -> bool:
        return self.shared.client() is not None

    # -- what this process's breakers report -------------------------------------------------------

    def opened(self, channel_id: str, cool_down_s: float) -> None:
        until = time.time() + cool_down_s
        log.warning("channel %s: breaker open for %.1f s (in every process)", channel_id, cool_down_s)
        self.notifier.publish(BREAKER, orjson.dumps({"channel": channel_id, "state": "open", "until": until}).decode())
        self._spawn(self._record(channel_id, until))

    def closed(self, channel_id: str) -> None:
        self.notifier.publish(BREAKER, orjson.dumps({"channel": channel_id, "state": "closed"}).decode())
        self._spawn(self._record(channel_id, None))

    def probe_ended(self, channel_id: str) -> None:
        """The probe ended with no outcome: another process (or this one) may probe now."""
        self._spawn(self._give_back(channel_id))

    # -- what the others report ------------------------------------------------------------------

    def _heard(self, data: str) -> None:
        try:
            news = orjson.loads(data)
            channel_id, state = news["channel"], news["state"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return
        health = self.router.health.get(channel_id)
        if health is None:
            return
        if state == "open":
            health.force_open(float(news.get("until", 0)) - time.time())
            self._spawn(self._give_back(channel_id))  # a probe of ours, if any, is over
        elif state == "closed" and health.state != "closed":
            health.force_close()

    async def _resync(self) -> None:
        """On (re)connecting: the breakers opened meanwhile, from the hash."""
        client = self.shared.client()
        if client is None:
            return
        try:
            entries = await client.hgetall(self.shared.key("breakers"))
        except (RedisError, OSError) as exc:
            self.shared.failed(exc)
            return
        now = time.time()
        for raw_id, raw_until in entries.items():
            health = self.router.health.get(raw_id.decode())
            if health is not None and health.state != OPEN:
                health.force_open(float(raw_until) - now)

    # -- Redis ----------------------------------------------------------------------------------

    async def admit(self, channel: Channel) -> bool | None:
        """Take one request from the channel's shared per-minute budget: True, False (spent), or
        None when Redis cannot say (the caller falls back to this process's budget)."""
        client = self.shared.client()
        if client is None or not channel.rpm:
            return None
        if self._take is None:
            self._take = client.register_script(_TAKE)
        try:
            return bool(await self._take(keys=[self.shared.key("rpm", channel.id)], args=[channel.rpm]))
        except (RedisError, OSError) as exc:
            self.shared.failed(exc)
            return None

    async def _record(self, channel_id: str, until: float | None) -> None:
        client = self.shared.client()
        if client is None:
            return
        key = self.shared.key("breakers")
        try:
            if until is None:
                await client.hdel(key, channel_id)
            else:
                await client.hset(key, channel_id, repr(until))
        except (RedisError, OSError) as exc:
            self.shared.failed(exc)
        # A failed probe keeps the grant until the new cool-down ends: no other process probes sooner.
        await self._give_back(channel_id, hold_s=0.0 if until is None else until - time.time())

    async def _give_back(self, channel_id: str, hold_s: float = 0.0) -> None:
        if channel_id not in self._grants:
            return
        self._grants.discard(channel_id)
        client = self.shared.client()
        if client is None:
            return
        if self._release is None:
            self._release = client.register_script(_RELEASE)
        try:
            await self._release(keys=[self.shared.key("probe", channel_id)],
                                args=[self.token, max(0, int(hold_s * 1000))])
        except (RedisError, OSError) as exc:
            self.shared.failed(exc)

    async def _grant_loop(self) -> None:
        while True:
            await asyncio.sleep(GRANT_INTERVAL_S)
            waiting = [(cid, h) for cid, h in self.router.health.items() if h.wants_grant()]
            if not waiting:
                continue
            client = self.shared.client()
            for channel_id, health in waiting:
                if client is None:
                    health.granted = True  # Redis is down: each process probes for itself
                    continue
                timeout_ms = max(1, int(health.policy.probe_timeout_s * 1000))
                try:
                    won = await client.set(self.shared.key("probe", channel_id), self.token, nx=True, px=timeout_ms)
                except (RedisError, OSError) as exc:
                    self.shared.failed(exc)
                    health.granted = True
                    continue
                if won:
                    self._grants.add(channel_id)
                    health.granted = True

    def _spawn(self, work: Any) -> None:
        try:
            task = asyncio.get_running_loop().create_task(work)
        except RuntimeError:  # no event loop (a command-line tool): nothing to share with
            work.close()
            return
        self._background.add(task)
        task.add_done_callback(self._background.discard)
