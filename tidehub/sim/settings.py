"""How one simulator instance is configured: where it listens, which keys it accepts, how fast time runs."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from tidehub.sim.behaviour import SimBehaviour
from tidehub.sim.webhooks import DEFAULT_RETRY_DELAYS_S

#: The catalog shipped with the package; the sim serves every fal model named there.
BUILTIN_CATALOG_DIR = Path(__file__).resolve().parent.parent / "catalog" / "data"

_WILDCARD_HOSTS = {"0.0.0.0", "::", ""}


@dataclass
class SimSettings:
    """Everything needed to build a simulator app.

    ``public_url`` is what goes into response, status, cancel and file URLs; it defaults to
    ``http://{host}:{port}`` so a sim bound to a wildcard address still hands out loopback URLs.

    Each accepted API key is a *channel* (a simulated upstream account) with its own knobs:
    ``api_key`` is always one, shaped by ``behaviour``; ``channels`` adds more (an entry for
    ``api_key`` itself replaces ``behaviour``). A behaviour whose ``time_scale`` is None runs at
    this ``time_scale``. More channels can be added at run time with ``PUT /_sim/channels/{key}``.
    """

    host: str = "127.0.0.1"
    port: int = 8790
    public_url: str | None = None
    api_key: str = "sim-key"
    time_scale: float = 1.0
    file_ttl_s: float = 3600.0
    #: Completed requests are forgotten this long after they end (bounds memory on long runs).
    request_ttl_s: float = 3600.0
    #: Catalog directories read after the built-in one; a later entry for a fal id wins.
    catalog_dirs: list[Path] = field(default_factory=list)
    include_builtin_catalog: bool = True
    #: Where generated files live; None means a fresh temp directory removed at shutdown.
    work_dir: Path | None = None
    #: Threads that render artifacts; 0 picks a default from the CPU count.
    render_workers: int = 0
    #: Seed for timing jitter, so a test run can be replayed.
    seed: int | None = None
    #: Fault and latency knobs of the ``api_key`` channel; built from ``time_scale`` when not given.
    behaviour: SimBehaviour | None = None
    #: More channels: API key -> its knobs.
    channels: dict[str, SimBehaviour] = field(default_factory=dict)
    #: Simulated seconds between webhook delivery attempts (scaled by the channel's time scale).
    webhook_retry_delays_s: tuple[float, ...] = DEFAULT_RETRY_DELAYS_S
    #: Wall-clock seconds one webhook attempt may take.
    webhook_timeout_s: float = 10.0

    @property
    def base_url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        host = "127.0.0.1" if self.host in _WILDCARD_HOSTS else self.host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    def catalog_paths(self) -> list[Path]:
        paths = [BUILTIN_CATALOG_DIR] if self.include_builtin_catalog else []
        return paths + [Path(p) for p in self.catalog_dirs]

    def make_behaviour(self) -> SimBehaviour:
        return self.behaviour if self.behaviour is not None else SimBehaviour(time_scale=self.time_scale)

    def channel_behaviours(self) -> dict[str, SimBehaviour]:
        """Every channel's knobs by API key, ``api_key`` first."""
        first = self.channels.get(self.api_key) or self.make_behaviour()
        return {self.api_key: first, **{k: b for k, b in self.channels.items() if k != self.api_key}}

    def worker_count(self) -> int:
        return self.render_workers or max(2, min(8, os.cpu_count() or 2))
