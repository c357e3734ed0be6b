"""Which channel runs a task.

Among the enabled channels serving the endpoint: skip those whose breaker is open, that are at
their concurrency limit or out of their per-minute budget, and (while another exists) those that
already failed this task; then the highest priority tier, and a weighted choice within it. When
every channel is busy the task waits in Tidehub's own queue instead of pushing the upstream into
429s.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Protocol

from tidehub.catalog import Endpoint
from tidehub.core import metrics
from tidehub.core.channels import Channel, ChannelService
from tidehub.core.health import BreakerPolicy, ChannelHealth
from tidehub.core.ports import AdapterRegistry, TaskAdapter, UpstreamError


@dataclass(frozen=True)
class Route:
    channel: Channel
    adapter: TaskAdapter
    model: str
    spec: dict[str, Any]
    # The breaker probe this request is (0: not a probe); whoever picked the route ends it.
    probe: int = 0


class RateBudget:
    """Requests per minute as a token bucket: bursts up to the minute's budget, refilled evenly."""

    def __init__(self, rpm: int) -> None:
        self.rpm = rpm
        self.tokens = float(rpm)
        self.stamp = time.monotonic()

    def available(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.rpm, self.tokens + (now - self.stamp) * self.rpm / 60)
        self.stamp = now
        return self.tokens >= 1

    def take(self) -> None:
        self.tokens -= 1


class SharedChannelState(Protocol):
    """Breakers and per-minute budgets shared with other processes (core/channel_state.py)."""

    def online(self) -> bool: ...
    def opened(self, channel_id: str, cool_down_s: float) -> None: ...
    def closed(self, channel_id: str) -> None: ...
    def probe_ended(self, channel_id: str) -> None: ...
    async def admit(self, channel: Channel) -> bool | None: ...


class Router:
    def __init__(self, service: ChannelService, implicit: Iterable[Channel] = (),
                 policy: BreakerPolicy | None = None, options: dict[str, dict[str, Any]] | None = None) -> None:
        self.service = service
        self.factories: AdapterRegistry = service.adapters
        # Per adapter kind, settings every channel of that kind shares (fal's JWKS URL, say).
        self.options = options or {}
        self.implicit = list(implicit)
        self.policy = policy or BreakerPolicy()
        self.channels: dict[str, Channel] = {}
        self.adapters: dict[str, TaskAdapter] = {}
        self.health: dict[str, ChannelHealth] = {}
        self.budgets: dict[str, RateBudget] = {}
        self._retired: list[TaskAdapter] = []
        self._version: object = None
        self._reloading = asyncio.Lock()
        self.shared: SharedChannelState | None = None
        self.reload()

    # -- configuration -------------------------------------------------------------------------

    def reload(self) -> None:
        """(Re)build the channel set now (at start-up, and from synchronous callers)."""
        self._apply(self.service.load())

    async def refresh(self, *, force: bool = False) -> None:
        """Pick up channel edits made by the CLI, the console or another process (cheap when
        nothing changed). Reading and decrypting the channels runs in a worker thread; the
        rebuild, quick, on the loop, so routing never sees half of it."""
        store = self.service.store
        version = await store.call(store.channels.version)
        if version == self._version and not force:
            return
        async with self._reloading:  # one load at a time: an older read never lands after a newer one
            self._version = version
            self._apply(await asyncio.to_thread(self.service.load))

    def _apply(self, stored: list[Channel]) -> None:
        """Adopt the stored channels; adapters of unchanged channels are kept."""
        loaded = self.implicit + stored
        fresh: dict[str, Channel] = {c.id: c for c in loaded}
        for cid, old in self.channels.items():
            new = fresh.get(cid)
            if new is None or (new.adapter, new.base_url, new.secret) != (old.adapter, old.base_url, old.secret):
                adapter = self.adapters.pop(cid, None)
                if adapter is not None:
                    self._retired.append(adapter)
        for cid, channel in fresh.items():
            if cid not in self.adapters:
                self.adapters[cid] = self.factories[channel.adapter](channel.base_url, channel.secret,
                                                               **self.options.get(channel.adapter, {}))
            self.health.setdefault(cid, ChannelHealth(self.policy, gated=self.shared is not None))
            if channel.rpm:
                budget = self.budgets.get(cid)
                if budget is None or budget.rpm != channel.rpm:
                    self.budgets[cid] = RateBudget(channel.rpm)
            else:
                self.budgets.pop(cid, None)
        self.channels = fresh

    # -- choosing ------------------------------------------------------------------------------

    def serving(self, endpoint: Endpoint) -> list[tuple[Channel, str]]:
        return [(c, m) for c in self.channels.values() if c.enabled and (m := c.upstream_model(endpoint))]

    async def choose(self, endpoint: Endpoint, *, exclude: Iterable[str] = (),
                     in_flight: dict[str, int] | None = None,
                     able: Callable[[TaskAdapter], bool] | None = None) -> Route | None:
        """``pick``, with per-minute budgets shared between processes when they are (Redis): a
        channel whose shared budget is spent is skipped for another."""
        spent: set[str] = set()
        while True:
            route = self.pick(endpoint, exclude=exclude, in_flight=in_flight, able=able, skip=spent)
            if route is None or self.shared is None or not route.channel.rpm or self._local_budgets:
                return route
            admitted = await self.shared.admit(route.channel)
            if admitted is None:  # Redis failed just now: this process's own budget
                budget = self.budgets.get(route.channel.id)
                admitted = budget is None or budget.available()
                if admitted and budget is not None:
                    budget.take()
            if admitted:
                return route
            self.release(route)
            spent.add(route.channel.id)

    @property
    def _local_budgets(self) -> bool:
        return self.shared is None or not self.shared.online()

    def pick(self, endpoint: Endpoint, *, exclude: Iterable[str] = (), in_flight: dict[str, int] | None = None,
             able: Callable[[TaskAdapter], bool] | None = None, skip: Iterable[str] = ()) -> Route | None:
        """A route, or None when every channel serving the endpoint is busy right now. ``able``
        keeps only channels whose adapter can do what the caller needs (the relay's ``call``);
        ``skip`` leaves channels out altogether. With budgets shared between processes, callers
        use ``choose``."""
        candidates = self.serving(endpoint)
        if able is not None:
            candidates = [(c, m) for c, m in candidates if able(self.adapters[c.id])]
        if not candidates:
            raise UpstreamError(f"no enabled channel serves {endpoint.slug}", code="no_channel")
        excluded = set(exclude)
        fresh = [(c, m) for c, m in candidates if c.id not in excluded] or candidates
        in_flight = in_flight or {}
        local = self._local_budgets
        skipped = set(skip)
        usable = [
            (c, m) for c, m in fresh
            if c.id not in skipped
            and self.health[c.id].allows()
            and (c.max_concurrency is None or in_flight.get(c.id, 0) < c.max_concurrency)
            and (not local or c.id not in self.budgets or self.budgets[c.id].available())
        ]
        if not usable:
            return None
        best = max(c.priority for c, _ in usable)
        tier = [(c, m) for c, m in usable if c.priority == best]
        channel, model = tier[0] if len(tier) == 1 else random.choices(tier, weights=[c.weight for c, _ in tier])[0]
        if local and channel.id in self.budgets:
            self.budgets[channel.id].take()
        probe = self.health[channel.id].started()
        return Route(channel, self.adapters[channel.id], model, endpoint.upstream_for(channel.adapter) or {}, probe)

    def available(self, endpoint: Endpoint) -> bool:
        """Could a task of ``endpoint`` go out now (an enabled channel serves it, its breaker closed)?"""
        return any(self.health[c.id].allows() for c, _ in self.serving(endpoint))

    def adapter(self, channel_id: str | None) -> TaskAdapter | None:
        return self.adapters.get(channel_id or "")

    def name_of(self, channel_id: str | None) -> str:
        """A channel's name, for metrics and logs ("" for none)."""
        channel = self.channels.get(channel_id or "")
        return channel.name if channel is not None else (channel_id or "")

    def record(self, channel_id: str | None, ok: bool, latency_s: float = 0.0) -> None:
        if latency_s:
            metrics.child(metrics.upstream_latency, self.name_of(channel_id), "ok" if ok else "error").observe(latency_s)
        health = self.health.get(channel_id or "")
        if health is not None:
            before = health.state
            health.record(ok, latency_s)
            if self.shared is not None and health.state != before:
                if health.state == "open":
                    self.shared.opened(channel_id or "", self.policy.cool_down_s)
                elif health.state == "closed":
                    self.shared.closed(channel_id or "")

    def release(self, route: Route) -> None:
        """The request on ``route`` is over. If it was a probe and recorded no outcome (a 429, a
        permanent error, a refused reservation, a cancellation), the next request may probe."""
        if route.probe:
            health = self.health.get(route.channel.id)
            if health is not None:
                ended = health.probe == route.probe
                health.release(route.probe)
                if ended and self.shared is not None:
                    self.shared.probe_ended(route.channel.id)

    def is_broken(self, channel_id: str | None) -> bool:
        """Disabled, gone, or its breaker open: its tasks should move elsewhere."""
        channel = self.channels.get(channel_id or "")
        return channel is None or not channel.enabled or self.health[channel.id].state == "open"

    async def close(self) -> None:
        for adapter in [*self.adapters.values(), *self._retired]:
            await adapter.close()
