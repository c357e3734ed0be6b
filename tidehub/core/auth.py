"""API keys: made here, shown once, stored as a SHA-256 hash, looked up through a short cache.

Keys carry 240 bits of randomness, so a fast hash is the right tool (a slow password hash buys
nothing against brute force here and would cost every request).
"""

from __future__ import annotations

import hashlib
import ipaddress
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Iterable

from tidehub.core.limits import KeyLimits, Limits
from tidehub.core.throttle import FailureThrottle
from tidehub.errors import Forbidden, Unauthorized
from tidehub.store import Store

KEY_PREFIX = "sk-th-"


@dataclass(frozen=True)
class Principal:
    key_id: str
    account_id: str
    allowed_models: frozenset[str] | None = None
    limits: KeyLimits | None = None

    def allows_model(self, *names: str) -> bool:
        """A key limited to some models may use a model by any of its names (Hub id or slug)."""
        return self.allowed_models is None or not self.allowed_models.isdisjoint(names)

    def check_model(self, *names: str) -> None:
        if not self.allows_model(*names):
            raise Forbidden(f"this API key may not use {names[0]!r}; it is limited to "
                            f"{', '.join(sorted(self.allowed_models))}", code="model_not_allowed", field="model")


@dataclass(frozen=True)
class KeyRecord:
    """What a request needs to know about its key, cached."""

    principal: Principal
    revoked: bool
    expires_at: float | None
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] | None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "KeyRecord":
        models = row.get("allowed_models")
        ips = row.get("allowed_ips")
        return cls(
            Principal(row["id"], row["account_id"], frozenset(models) if models else None, KeyLimits.of(row)),
            row["revoked_at"] is not None,
            row.get("expires_at"),
            tuple(ipaddress.ip_network(n, strict=False) for n in ips) if ips else None,
        )

    def admit(self, client_ip: str | None) -> Principal:
        if self.revoked:
            raise Forbidden("this API key has been revoked", code="key_revoked")
        if self.expires_at is not None and self.expires_at <= time.time():
            raise Forbidden("this API key has expired", code="key_expired")
        if self.networks is not None and not _ip_in(client_ip, self.networks):
            raise Forbidden(f"this API key may not be used from {client_ip}", code="ip_not_allowed")
        return self.principal


def _ip_in(ip: str | None, networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    try:
        address = ipaddress.ip_address(ip or "")
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return any(address.version == n.version and address in n for n in networks)


def parse_networks(values: Iterable[str]) -> list[str]:
    """Validate an allow-list of IPs or CIDRs; returns them normalised."""
    return [str(ipaddress.ip_network(v.strip(), strict=False)) for v in values if v.strip()]


@dataclass(frozen=True)
class NewKey:
    key_id: str
    account_id: str
    secret: str


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


def create_key(
    store: Store,
    *,
    name: str = "",
    account_id: str | None = None,
    credits: int = 0,
    spend_cap: int | None = None,
    expires_at: float | None = None,
    allowed_models: list[str] | None = None,
    allowed_ips: list[str] | None = None,
    rpm: int | None = None,
    max_concurrency: int | None = None,
) -> NewKey:
    """Create a key, and a new account for it (with ``credits``) unless ``account_id`` names an
    existing one."""
    now = time.time()
    if account_id is None:
        account_id = new_id("acct")
        store.accounts.create(account_id, name, now, credits)
    elif not store.accounts.exists(account_id):
        raise ValueError(f"no account {account_id!r}")
    elif credits:
        store.accounts.add_credits(account_id, credits, now, "added with a new key")
    secret = KEY_PREFIX + secrets.token_urlsafe(30)
    key_id = new_id("key")
    store.keys.insert(
        id=key_id,
        account_id=account_id,
        name=name,
        prefix=secret[: len(KEY_PREFIX) + 4],
        key_hash=hash_key(secret),
        created_at=now,
        spend_cap=spend_cap,
        expires_at=expires_at,
        allowed_models=allowed_models or None,
        allowed_ips=parse_networks(allowed_ips) if allowed_ips else None,
        rpm=rpm,
        max_concurrency=max_concurrency,
    )
    return NewKey(key_id, account_id, secret)


class Authenticator:
    """Resolves bearer secrets to principals, through a cache of ``ttl`` seconds, so a revoked key
    stops working within that time in every process.

    Keys that exist are cached in a bounded LRU (``max_keys``); secrets that match no key go to a
    small LRU of their own (``max_misses``), so a stream of random secrets only churns that one and
    never pushes real keys out. A client address whose secrets keep matching nothing is throttled
    (``throttle``): while it is refused, only keys already in the cache still work from it, and
    nothing else reaches the database.

    Every request a key makes counts against its requests-per-minute limits (``limits``).
    """

    def __init__(self, store: Store, ttl: float = 5.0, *, throttle: FailureThrottle | None = None,
                 max_keys: int = 10_000, max_misses: int = 1_000, limits: Limits | None = None) -> None:
        self.store = store
        self.limits = limits
        self.ttl = ttl
        self.throttle = throttle or FailureThrottle(0)
        self.max_keys = max_keys
        self.max_misses = max_misses
        self._keys: OrderedDict[str, tuple[float, KeyRecord]] = OrderedDict()
        self._misses: OrderedDict[str, float] = OrderedDict()

    async def authenticate(self, authorization: str | None, client_ip: str | None = None) -> Principal:
        try:
            secret = _bearer(authorization)
        except Unauthorized:
            if authorization:  # a malformed credential counts as a failure; no credential at all does not
                self.throttle.failed(client_ip)
            raise
        digest = hash_key(secret)
        now = time.monotonic()
        hit = self._keys.get(digest)
        if hit is not None and hit[0] > now:
            self._keys.move_to_end(digest)
            return await self._rated(hit[1].admit(client_ip))
        self.throttle.check(client_ip)
        miss = self._misses.get(digest)
        if miss is not None and miss > now:
            row = None
        else:
            row = await self.store.call(self.store.keys.by_hash, digest)
        if row is None:
            _remember(self._misses, digest, now + self.ttl, self.max_misses)
            self.throttle.failed(client_ip)
            raise Unauthorized("invalid API key")
        self._misses.pop(digest, None)
        record = KeyRecord.from_row(row)
        _remember(self._keys, digest, (now + self.ttl, record), self.max_keys)
        return await self._rated(record.admit(client_ip))

    async def _rated(self, principal: Principal) -> Principal:
        if principal.limits is not None and self.limits is not None:
            await self.limits.admit(principal)
        return principal

    async def principal_of_key(self, key_id: str, client_ip: str | None = None) -> Principal:
        """The principal of a key known by its id (a console session keeps the id, never the
        secret), checked as a bearer secret is: revoked, expired, the IP allow-list."""
        row = await self.store.call(self.store.keys.get, key_id)
        if row is None:
            raise Unauthorized("this API key no longer exists")
        return KeyRecord.from_row(row).admit(client_ip)


    def forget(self, key_id: str) -> None:
        """A key was revoked or edited: its next request reads it afresh. (Rare: a scan is fine.)"""
        for digest in [d for d, (_, record) in self._keys.items() if record.principal.key_id == key_id]:
            del self._keys[digest]


def _remember(cache: OrderedDict[str, Any], key: str, value: Any, limit: int) -> None:
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > limit:
        cache.popitem(last=False)


def _bearer(authorization: str | None) -> str:
    if not authorization:
        raise Unauthorized("missing API key: send the header 'Authorization: Bearer <key>'")
    scheme, _, secret = authorization.partition(" ")
    secret = secret.strip()
    if scheme.lower() != "bearer" or not secret:
        raise Unauthorized("malformed Authorization header: expected 'Bearer <key>'")
    return secret
