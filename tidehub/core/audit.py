"""The audit log: who changed what, when, from which address.

Core services take an optional ``actor`` on every change an operator (or the CLI) can make, and
write one entry when they are given one. Reads of the log are the store's (``store.audit.page``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from tidehub.store import Store


@dataclass(frozen=True)
class Actor:
    """Who is acting: ``operator:NAME``, ``customer:ACCOUNT`` or ``cli``, and from where."""

    name: str
    address: str | None = None

    @classmethod
    def cli(cls) -> "Actor":
        return cls("cli")

    @classmethod
    def operator(cls, name: str, address: str | None) -> "Actor":
        return cls(f"operator:{name}", address)

    @classmethod
    def customer(cls, account_id: str, address: str | None) -> "Actor":
        return cls(f"customer:{account_id}", address)


class AuditLog:
    def __init__(self, store: Store) -> None:
        self.store = store

    def _row(self, actor: Actor, action: str, target: str | None, details: dict[str, Any] | None) -> dict[str, Any]:
        return {"at": time.time(), "actor": actor.name, "address": actor.address, "action": action,
                "target": target, "details": details or None}

    def record(self, actor: Actor | None, action: str, target: str | None = None,
               details: dict[str, Any] | None = None) -> None:
        """Write an entry (from synchronous code: the CLI, the channel service)."""
        if actor is not None:
            self.store.audit.write(self._row(actor, action, target, details))

    async def write(self, actor: Actor | None, action: str, target: str | None = None,
                    details: dict[str, Any] | None = None) -> None:
        if actor is not None:
            await self.store.call(self.store.audit.write, self._row(actor, action, target, details))
