"""API keys: made here, shown once, stored as a SHA-256 hash, looked up through a short cache.

Keys carry 240 bits of randomness, so a fast hash is the right tool (a slow password hash buys
nothing against brute force here and would cost every request).
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass

from tidehub.core.errors import Unauthorized
from tidehub.store.queries import Store

KEY_PREFIX = "sk-th-"


@dataclass(frozen=True)
class Principal:
    key_id: str
    account_id: str


@dataclass(frozen=True)
class NewKey:
    key_id: str
    account_id: str
    secret: str


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


def create_key(store: Store, *, name: str = "", account_id: str | None = None) -> NewKey:
    """Create a key, and a new account for it unless ``account_id`` names an existing one."""
    now = time.time()
    if account_id is None:
        account_id = new_id("acct")
        store.create_account(account_id, name, now)
    elif not store.account_exists(account_id):
        raise ValueError(f"no account {account_id!r}")
    secret = KEY_PREFIX + secrets.token_urlsafe(30)
    key_id = new_id("key")
    store.insert_key(
        id=key_id,
        account_id=account_id,
        name=name,
        prefix=secret[: len(KEY_PREFIX) + 4],
        key_hash=hash_key(secret),
        created_at=now,
    )
    return NewKey(key_id, account_id, secret)


class Authenticator:
    """Resolves bearer secrets to principals. Hits and misses are cached for ``ttl`` seconds, so
    a revoked key stops working within that time in every process."""

    def __init__(self, store: Store, ttl: float = 5.0) -> None:
        self.store = store
        self.ttl = ttl
        self._cache: dict[str, tuple[float, Principal | None]] = {}

    async def authenticate(self, authorization: str | None) -> Principal:
        secret = _bearer(authorization)
        digest = hash_key(secret)
        now = time.monotonic()
        hit = self._cache.get(digest)
        if hit is not None and hit[0] > now:
            principal = hit[1]
        else:
            row = await self.store.call(self.store.key_by_hash, digest)
            principal = (
                Principal(row["id"], row["account_id"]) if row and row["revoked_at"] is None else None
            )
            if len(self._cache) > 100_000:
                self._cache.clear()
            self._cache[digest] = (now + self.ttl, principal)
        if principal is None:
            raise Unauthorized("invalid or revoked API key")
        return principal


def _bearer(authorization: str | None) -> str:
    if not authorization:
        raise Unauthorized("missing API key: send the header 'Authorization: Bearer <key>'")
    scheme, _, secret = authorization.partition(" ")
    secret = secret.strip()
    if scheme.lower() != "bearer" or not secret:
        raise Unauthorized("malformed Authorization header: expected 'Bearer <key>'")
    return secret
