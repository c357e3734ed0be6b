"""Channels: the upstream accounts tasks run on, as the operator configures them.

A channel names an adapter, a base URL, a credential (stored encrypted), the catalog endpoints it
serves (with the upstream's model id for each, or the catalog's own), and its routing settings:
priority (higher first), weight (share within a priority tier), maximum concurrent upstream tasks,
requests per minute, enabled. Channels come from a YAML file loaded at start
(``TIDEHUB_CHANNELS_FILE``), from the CLI, and, when ``TIDEHUB_FAL_KEY`` is set, one implicit
channel ``fal`` serving every fal model of the catalog.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tidehub.catalog import Catalog, Endpoint
from tidehub.core.audit import Actor, AuditLog
from tidehub.core.secrets_box import SecretBox
from tidehub.core.ports import AdapterRegistry
from tidehub.store import Store

ALL = "*"
FIELDS = ("adapter", "base_url", "models", "priority", "weight", "max_concurrency", "rpm", "enabled")


@dataclass
class Channel:
    id: str
    name: str
    adapter: str
    base_url: str
    secret: str  # plaintext, in memory only
    models: dict[str, str | None]
    priority: int = 0
    weight: int = 1
    max_concurrency: int | None = None
    rpm: int | None = None
    enabled: bool = True
    updated_at: float = field(default=0.0)

    def upstream_model(self, endpoint: Endpoint) -> str | None:
        """The upstream's id for ``endpoint`` on this channel, or None if it does not serve it."""
        spec = endpoint.upstream_for(self.adapter)
        if endpoint.slug in self.models:
            return self.models[endpoint.slug] or (spec or {}).get("model")
        if ALL in self.models and spec is not None:
            return spec["model"]
        return None


class ChannelError(ValueError):
    pass


def _shown(values: dict[str, Any]) -> dict[str, Any]:
    """What the audit log may record of a channel's settings: never the credential."""
    return {k: v for k, v in values.items() if k in FIELDS}


class ChannelService:
    def __init__(self, store: Store, catalog: Catalog, box: SecretBox, adapters: AdapterRegistry) -> None:
        self.adapters = adapters
        self.store = store
        self.catalog = catalog
        self.box = box

    def load(self) -> list[Channel]:
        return [self._from_row(row) for row in self.store.channels.list()]

    def _from_row(self, row: dict[str, Any]) -> Channel:
        return Channel(
            id=row["id"], name=row["name"], adapter=row["adapter"], base_url=row["base_url"],
            secret=self.box.open(row["secret"]) if row["secret"] else "", models=row["models"],
            priority=row["priority"], weight=row["weight"], max_concurrency=row["max_concurrency"],
            rpm=row["rpm"], enabled=row["enabled"], updated_at=row["updated_at"],
        )

    def find(self, name_or_id: str) -> dict[str, Any]:
        for row in self.store.channels.list():
            if name_or_id in (row["id"], row["name"]):
                return row
        raise ChannelError(f"no channel {name_or_id!r}")

    def add(self, name: str, *, adapter: str, base_url: str, secret: str = "", actor: Actor | None = None,
            **settings: Any) -> str:
        if any(row["name"] == name for row in self.store.channels.list()):
            raise ChannelError(f"a channel named {name!r} exists already")
        values = self._check({"adapter": adapter, "base_url": base_url, "models": {ALL: None}, **settings})
        now = time.time()
        channel_id = f"ch_{secrets.token_hex(6)}"
        self.store.channels.insert({
            "id": channel_id, "name": name, "secret": self.box.seal(secret) if secret else "",
            "created_at": now, "updated_at": now, **values,
        })
        AuditLog(self.store).record(actor, "channel.create", name, {"id": channel_id, **_shown(values)})
        return channel_id

    def update(self, name_or_id: str, *, secret: str | None = None, actor: Actor | None = None,
               **settings: Any) -> None:
        row = self.find(name_or_id)
        values = self._check({k: v for k, v in settings.items() if v is not None}, partial=True, adapter=row["adapter"])
        if secret is not None:
            values["secret"] = self.box.seal(secret) if secret else ""
        values["updated_at"] = max(time.time(), row["updated_at"] + 1e-6)
        self.store.channels.update(row["id"], values)
        changed = {k: v for k, v in _shown(values).items() if row.get(k) != v}
        if secret is not None:
            changed["credential"] = "replaced" if secret else "removed"
        if changed:
            action = "channel.update"
            if set(changed) == {"enabled"}:
                action = "channel.enable" if changed["enabled"] else "channel.disable"
            AuditLog(self.store).record(actor, action, row["name"], changed)

    def sync_file(self, path: Path) -> list[str]:
        """Create or update the channels a YAML file lists (``channels: [{name, adapter, ...}]``)."""
        doc = yaml.safe_load(path.read_text()) or {}
        names = []
        existing = {row["name"] for row in self.store.channels.list()}
        for raw in doc.get("channels") or []:
            raw = dict(raw)
            name = raw.pop("name")
            if name in existing:
                self.update(name, **raw)
            else:
                self.add(name, **raw)
            names.append(name)
        return names

    def _check(self, values: dict[str, Any], *, partial: bool = False, adapter: str | None = None) -> dict[str, Any]:
        unknown = set(values) - set(FIELDS)
        if unknown:
            raise ChannelError(f"unknown channel settings: {', '.join(sorted(unknown))}")
        adapter = values.get("adapter", adapter)
        if adapter not in self.adapters:
            raise ChannelError(f"unknown adapter {adapter!r}; known: {', '.join(sorted(self.adapters))}")
        if "models" in values:
            models = values["models"]
            if isinstance(models, list):
                models = {m: None for m in models}
            if not isinstance(models, dict) or not models:
                raise ChannelError("models must list endpoint slugs (or '*'), or map them to upstream model ids")
            for slug in models:
                if slug != ALL and slug not in self.catalog.endpoints:
                    raise ChannelError(f"models: no catalog endpoint {slug!r}")
            values["models"] = models
        for name in ("priority", "weight", "max_concurrency", "rpm"):
            if values.get(name) is not None and (not isinstance(values[name], int) or values[name] < 0):
                raise ChannelError(f"{name} must be a whole number >= 0")
        if values.get("weight") == 0:
            raise ChannelError("weight must be at least 1 (disable the channel instead)")
        return values
