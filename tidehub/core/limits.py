"""Per-key and per-account limits: requests per minute, and tasks (with relayed calls) at once.

**Requests per minute** follow GCRA (the generic cell rate algorithm): each limited key or
account has a "theoretical arrival time", moved on by 60/rpm seconds per request; a request is
refused while that time would lie more than a minute ahead. That allows a burst of ``rpm``
requests, then one every 60/rpm seconds (the way OpenAI's limits replenish), and needs one number
per limited key. With Redis, that number lives in Redis and one Lua script checks and moves the
key's and the account's together, on Redis's clock, so the limit holds across processes and
hosts. Without Redis (or while it is unreachable) each process keeps its own numbers: N processes
let through up to N times the limit.

**Tasks at once** count the key's (and the account's) active tasks in the database, in the
transaction that writes the new task (store/tasks.py), so the limit holds across processes
without Redis; relayed calls in flight count too, as this process sees them (a call is short:
another process's calls are not counted).

A request over a limit is refused with 429 (``rate_limit_exceeded``, ``concurrency_limit_exceeded``)
and a ``retry_after``; the request's rate state goes into the work context (core/context.py),
which the HTTP edge turns into ``X-RateLimit-*`` headers on every answer.
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from tidehub.core import context
from tidehub.core.context import RateState
from tidehub.core.shared import SharedState
from tidehub.errors import TooManyRequests

if TYPE_CHECKING:
    from tidehub.core.auth import Principal
    from tidehub.store import Store

log = logging.getLogger("tidehub.limits")

PERIOD_S = 60.0

# KEYS: the limited names; ARGV[1]: the period in ms, ARGV[1 + i]: the rpm of KEYS[i].
# Returns {allowed (0/1), then per key: how far its arrival time lies ahead of now, in ms, after
# this request if allowed, before it if refused}. Either every key takes the request or none does.
_GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local period = tonumber(ARGV[1])
local tats, ahead, allowed = {}, {}, 1
for i, key in ipairs(KEYS) do
  local interval = period / tonumber(ARGV[i + 1])
  local tat = tonumber(redis.call('GET', key) or '0')
  if tat < now then tat = now end
  tats[i] = tat + interval
  if tats[i] - now > period then allowed = 0 end
  ahead[i] = tat - now
end
local out = {allowed}
for i, key in ipairs(KEYS) do
  if allowed == 1 then
    redis.call('SET', key, string.format('%.3f', tats[i]), 'PX', math.ceil(tats[i] - now) + 1)
    ahead[i] = tats[i] - now
  end
  out[#out + 1] = math.floor(ahead[i])
end
return out
"""


@dataclass(frozen=True)
class KeyLimits:
    """The limits a request is held to (None: no limit)."""

    key_rpm: int | None = None
    key_concurrency: int | None = None
    account_rpm: int | None = None
    account_concurrency: int | None = None

    @classmethod
    def of(cls, row: dict[str, Any]) -> "KeyLimits | None":
        """From a key row joined with its account's limits; None when there are none (the fast path)."""
        found = cls(row.get("rpm") or None, row.get("max_concurrency") or None,
                    row.get("account_rpm") or None, row.get("account_max_concurrency") or None)
        return found if found != _NONE else None

    @property
    def rated(self) -> bool:
        return self.key_rpm is not None or self.account_rpm is not None

    @property
    def bounded(self) -> bool:
        return self.key_concurrency is not None or self.account_concurrency is not None


_NONE = KeyLimits()


class Limits:
    def __init__(self, store: "Store", shared: SharedState, *, max_local: int = 100_000) -> None:
        self.store = store
        self.shared = shared
        self._script: Any = None
        # Per-process arrival times (name -> epoch seconds), used without Redis.
        self._tats: dict[str, float] = {}
        self.max_local = max_local
        # Relayed calls in flight in this process, by key id and by account id.
        self.calls: defaultdict[str, int] = defaultdict(int)

    # -- requests per minute -----------------------------------------------------------------------

    async def admit(self, principal: "Principal") -> None:
        """Count one request against the key's and the account's rpm; 429 past either."""
        limits = principal.limits
        if limits is None or not limits.rated:
            return
        scopes = [(n, rpm) for n, rpm in ((f"key:{principal.key_id}", limits.key_rpm),
                                          (f"account:{principal.account_id}", limits.account_rpm)) if rpm]
        allowed, ahead = await self._take(scopes)
        # The headers show the scope with the least to spare.
        states = [_state(rpm, a, allowed) for (_, rpm), a in zip(scopes, ahead)]
        state = min(states, key=lambda s: (s.remaining, -s.reset_s))
        ctx = context.current.get()
        if ctx is not None:
            ctx.rate = state
        if not allowed:
            # The first moment every scope has room again.
            wait = max(a - PERIOD_S + PERIOD_S / rpm for (_, rpm), a in zip(scopes, ahead))
            retry = max(1, math.ceil(wait))
            raise TooManyRequests(f"request rate exceeded: this key may make {state.limit} requests per minute; "
                                  f"retry in {retry} s", code="rate_limit_exceeded",
                                  details={"retry_after": retry})

    async def _take(self, scopes: list[tuple[str, int]]) -> tuple[bool, list[float]]:
        client = self.shared.client()
        if client is not None:
            try:
                if self._script is None:
                    self._script = client.register_script(_GCRA)
                reply = await self._script(keys=[self.shared.key("rpm", n) for n, _ in scopes],
                                           args=[int(PERIOD_S * 1000), *(rpm for _, rpm in scopes)])
            except (RedisError, OSError) as exc:
                self.shared.failed(exc)
            else:
                self.shared.recovered()
                return bool(reply[0]), [int(a) / 1000 for a in reply[1:]]
        return self._take_here(scopes)

    def _take_here(self, scopes: list[tuple[str, int]]) -> tuple[bool, list[float]]:
        now = time.time()
        tats = [max(self._tats.get(n, 0.0), now) for n, _ in scopes]
        moved = [tat + PERIOD_S / rpm for tat, (_, rpm) in zip(tats, scopes)]
        allowed = all(m - now <= PERIOD_S + 1e-9 for m in moved)
        if not allowed:
            return False, [tat - now for tat in tats]
        for (n, _), m in zip(scopes, moved):
            self._tats[n] = m
        if len(self._tats) > self.max_local:
            self._tats = {n: t for n, t in self._tats.items() if t > now}  # forget the ones at rest
        return True, [m - now for m in moved]

    # -- tasks and calls at once -------------------------------------------------------------------

    def task_bounds(self, principal: "Principal") -> list[tuple[str, str, int]]:
        """For the transaction that writes a task: (column, id, how many active tasks may exist
        already) per bounded scope, this process's relayed calls taken off."""
        limits = principal.limits
        if limits is None or not limits.bounded:
            return []
        bounds = []
        if limits.key_concurrency is not None:
            bounds.append(("key_id", principal.key_id, limits.key_concurrency - self.calls[principal.key_id]))
        if limits.account_concurrency is not None:
            bounds.append(("account_id", principal.account_id,
                           limits.account_concurrency - self.calls[principal.account_id]))
        return bounds

    async def enter_call(self, principal: "Principal") -> bool:
        """A relayed call starts: counted, or 429 when the key or the account has as many tasks and
        calls at once as it may. Returns whether it was counted (then ``leave_call`` after)."""
        limits = principal.limits
        if limits is None or not limits.bounded:
            return False
        key, account = principal.key_id, principal.account_id
        # Counted first, checked after: concurrent calls of this process cannot all slip through.
        self.calls[key] += 1
        self.calls[account] += 1
        try:
            tasks_of_key, tasks_of_account = await self.store.call(self.store.tasks.active_count, key, account)
        except BaseException:
            self.leave_call(principal)
            raise
        key_over = limits.key_concurrency is not None and tasks_of_key + self.calls[key] > limits.key_concurrency
        account_over = (limits.account_concurrency is not None
                        and tasks_of_account + self.calls[account] > limits.account_concurrency)
        if key_over or account_over:
            self.leave_call(principal)
            raise concurrency_refusal(limits, "key" if key_over else "account")
        return True

    def leave_call(self, principal: "Principal") -> None:
        for name in (principal.key_id, principal.account_id):
            self.calls[name] -= 1
            if self.calls[name] <= 0:
                del self.calls[name]


def concurrency_refusal(limits: KeyLimits, scope: str) -> TooManyRequests:
    most = limits.key_concurrency if scope == "key" else limits.account_concurrency
    whose = "this API key" if scope == "key" else "this account"
    return TooManyRequests(f"too many tasks at once: {whose} may run {most} tasks and calls at a time; "
                           f"retry when one has finished", code="concurrency_limit_exceeded",
                           details={"retry_after": 1})


def _state(rpm: int, ahead_s: float, allowed: bool) -> RateState:
    """The headers' view: how many more requests fit now, and when all of them fit again."""
    interval = PERIOD_S / rpm
    remaining = max(0, math.floor((PERIOD_S - ahead_s) / interval + 1e-9))
    return RateState(limit=rpm, remaining=remaining, reset_s=max(0, math.ceil(ahead_s - 1e-9)))
