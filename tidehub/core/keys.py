"""API keys as operators (and customers, for their own account) manage them: create, revoke,
change limits. Every change can carry an actor for the audit log. Making and checking keys is
core/auth.py's."""

from __future__ import annotations

import time
from typing import Any, Callable

from tidehub.catalog import Catalog
from tidehub.core.audit import Actor, AuditLog
from tidehub.core.auth import NewKey, create_key, parse_networks
from tidehub.errors import InvalidInput, NotFound
from tidehub.store import Store

MAX_CREDITS = 10**15
#: The most a requests-per-minute or concurrency limit may say.
MAX_RATE = 10**7


def check_rates(rpm: int | None, max_concurrency: int | None) -> dict[str, int | None]:
    """Requests-per-minute and concurrency limits (core/limits.py), validated; None: no limit."""
    for name, value in (("rpm", rpm), ("max_concurrency", max_concurrency)):
        if value is not None and (isinstance(value, bool) or not 1 <= value <= MAX_RATE):
            raise InvalidInput(f"{name}: must be between 1 and {MAX_RATE} (or empty for no limit)", field=name)
    return {"rpm": rpm, "max_concurrency": max_concurrency}


class KeyService:
    def __init__(self, store: Store, catalog: Catalog, changed: Callable[[str], None] = lambda key_id: None) -> None:
        self.store = store
        self.catalog = catalog
        self.audit = AuditLog(store)
        # Told the id of a key revoked or edited, so that every process's key cache drops it at once.
        self.changed = changed

    def model_names(self) -> set[str]:
        """Every name a key's model allow-list may hold (Hub ids, endpoint slugs, model names)."""
        names: set[str] = set(self.catalog.hub_models)
        for endpoint in self.catalog.endpoints.values():
            names.update((endpoint.slug, endpoint.model))
        return names

    def check_limits(self, *, spend_cap: int | None = None, expires_at: float | None = None,
                     allowed_models: list[str] | None = None, allowed_ips: list[str] | None = None,
                     rpm: int | None = None, max_concurrency: int | None = None) -> dict[str, Any]:
        """The limits, validated and normalised, or InvalidInput naming the field."""
        if spend_cap is not None and not 0 <= spend_cap <= MAX_CREDITS:
            raise InvalidInput(f"spend_cap: must be between 0 and {MAX_CREDITS}", field="spend_cap")
        if expires_at is not None and expires_at <= time.time():
            raise InvalidInput("expires_at: must be in the future", field="expires_at")
        models = [m.strip() for m in allowed_models or [] if m.strip()] or None
        if models:
            unknown = sorted(set(models) - self.model_names())
            if unknown:
                raise InvalidInput(f"allowed_models: unknown model {unknown[0]!r}", field="allowed_models")
        try:
            ips = parse_networks(allowed_ips) if allowed_ips else None
        except ValueError as exc:
            raise InvalidInput(f"allowed_ips: {exc}", field="allowed_ips") from None
        return {"spend_cap": spend_cap, "expires_at": expires_at, "allowed_models": models,
                "allowed_ips": ips or None, **check_rates(rpm, max_concurrency)}

    def create(self, *, name: str = "", account_id: str | None = None, credits: int = 0,
               actor: Actor | None = None, **limits: Any) -> NewKey:
        """A new key (and a new account for it unless ``account_id`` names one)."""
        if len(name) > 200:
            raise InvalidInput("name: at most 200 characters", field="name")
        if not 0 <= credits <= MAX_CREDITS:
            raise InvalidInput(f"credits: must be between 0 and {MAX_CREDITS}", field="credits")
        checked = self.check_limits(**limits)
        if account_id is not None and not self.store.accounts.exists(account_id):
            raise InvalidInput(f"account_id: no account {account_id!r}", field="account_id")
        key = create_key(self.store, name=name, account_id=account_id, credits=credits, **checked)
        self.audit.record(actor, "key.create", key.key_id,
                          {"account_id": key.account_id, "name": name, "credits": credits,
                           "new_account": account_id is None, **{k: v for k, v in checked.items() if v is not None}})
        return key

    def limit_account(self, account_id: str, *, actor: Actor | None = None, **rates: Any) -> dict[str, Any]:
        """Set the limits of all an account's keys together (``rpm``, ``max_concurrency``; each one
        given, None clears it). Running servers apply them within their key cache time."""
        before = self.store.accounts.get(account_id)
        if before is None:
            raise NotFound(f"no account {account_id!r}", field="account_id")
        checked = {k: v for k, v in check_rates(rates.get("rpm"), rates.get("max_concurrency")).items() if k in rates}
        self.store.accounts.set_limits(account_id, checked)
        changed = {k: v for k, v in checked.items() if before.get(k) != v}
        if changed:
            self.audit.record(actor, "account.limits", account_id, changed)
        return {**before, **checked}

    def get(self, key_id: str, account_id: str | None = None) -> dict[str, Any]:
        row = self.store.keys.get(key_id, account_id)
        if row is None:
            raise NotFound(f"no key {key_id!r}", field="key_id")
        return row

    def revoke(self, key_id: str, *, account_id: str | None = None, actor: Actor | None = None) -> bool:
        """Revoke a key (``account_id``: only if it is that account's); False if it was revoked already.
        Its console sessions end with it."""
        self.get(key_id, account_id)
        done = self.store.keys.revoke(key_id, time.time())
        if done:
            self.changed(key_id)
            self.audit.record(actor, "key.revoke", key_id)
        return done

    def update(self, key_id: str, *, account_id: str | None = None, actor: Actor | None = None,
               **limits: Any) -> dict[str, Any]:
        """Set a key's limits (each one given; None clears it). Running servers apply the change
        within their key cache time."""
        before = self.get(key_id, account_id)
        if before["revoked_at"] is not None:
            raise InvalidInput("this key is revoked; its limits can no longer change", field="key_id")
        checked = {k: v for k, v in self.check_limits(**limits).items() if k in limits}
        self.store.keys.update(key_id, checked)
        self.changed(key_id)
        changed = {k: v for k, v in checked.items() if before.get(k) != v}
        if changed:
            self.audit.record(actor, "key.update", key_id, changed)
        return self.get(key_id)
