"""Which upstream adapter serves a task.

For now: the first configured adapter the endpoint has an upstream model for. Channel routing
(priorities, weights, concurrency, health) replaces the choice here without touching the engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tidehub.catalog import Endpoint
from tidehub.providers.base import Adapter, UpstreamError


@dataclass(frozen=True)
class Route:
    adapter: Adapter
    spec: dict[str, Any]


class Router:
    def __init__(self, adapters: dict[str, Adapter]) -> None:
        self.adapters = adapters

    def route(self, endpoint: Endpoint) -> Route:
        for name, adapter in self.adapters.items():
            spec = endpoint.upstream_for(name)
            if spec is not None:
                return Route(adapter, spec)
        raise UpstreamError(f"no upstream is configured for {endpoint.slug}", code="no_channel")

    def adapter(self, name: str | None) -> Adapter | None:
        return self.adapters.get(name or "")

    async def close(self) -> None:
        for adapter in self.adapters.values():
            await adapter.close()
