"""Console sign-in sessions, kept on the server.

The browser holds only a random token (in an HttpOnly cookie); the database holds its SHA-256
hash, so a copy of the table lets no one in. An operator signs in with a name and password; a
customer with one of their account's API keys, which is checked like any API request, exchanged
for a session bound to the account and that key, and then forgotten. Every request re-checks what
the session rests on: the operator not disabled, the key not revoked or expired. A session ends
when idle too long, at its absolute lifetime, or at sign-out (deleted on the server).
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from dataclasses import dataclass
from typing import Any

from tidehub.core.audit import Actor
from tidehub.core.auth import Authenticator
from tidehub.core.operators import OperatorService
from tidehub.core.throttle import FailureThrottle
from tidehub.errors import Forbidden, Unauthorized
from tidehub.store import Store

OPERATOR, CUSTOMER = "operator", "customer"
# A session's last-seen time is written at most this often: a request is a read, not a write.
TOUCH_EVERY_S = 60.0


@dataclass(frozen=True)
class Session:
    token_hash: str
    kind: str
    role: str  # admin, viewer or customer
    name: str  # the operator's name, or the key's label for a customer
    account_id: str | None
    key_id: str | None
    csrf_token: str
    address: str | None

    def actor(self, address: str | None = None) -> Actor:
        where = address or self.address
        if self.kind == CUSTOMER:
            return Actor.customer(self.account_id or "?", where)
        return Actor.operator(self.name, where)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class SessionService:
    def __init__(self, store: Store, auth: Authenticator, operators: OperatorService, *, idle_s: float,
                 lifetime_s: float, throttle: FailureThrottle | None = None) -> None:
        self.store = store
        self.auth = auth
        self.operators = operators
        self.idle_s = idle_s
        self.lifetime_s = lifetime_s
        self.throttle = throttle or FailureThrottle(10, 300.0, what="failed sign-ins", code="too_many_attempts")

    async def sign_in_operator(self, name: str, password: str, address: str | None) -> tuple[str, Session]:
        subjects = (address, f"operator:{name.strip().lower()}")
        self.throttle.check(*subjects)
        operator = await asyncio.to_thread(self.operators.verify, name.strip(), password)
        if operator is None:
            self.throttle.failed(*subjects)
            raise Unauthorized("wrong name or password (or the operator is disabled)", field="name",
                               code="sign_in_failed")
        self.throttle.forget(subjects[1])
        return await self._open({"kind": OPERATOR, "operator_id": operator.id}, address)

    async def sign_in_customer(self, secret: str, address: str | None) -> tuple[str, Session]:
        subjects = (address,)
        self.throttle.check(*subjects)
        try:
            principal = await self.auth.authenticate(f"Bearer {secret.strip()}", address)
        except (Unauthorized, Forbidden) as exc:
            self.throttle.failed(*subjects)
            raise Unauthorized(exc.message if exc.code != "unauthorized" else "this API key is not valid",
                               field="api_key", code="sign_in_failed") from None
        return await self._open({"kind": CUSTOMER, "account_id": principal.account_id, "key_id": principal.key_id},
                                address)

    async def _open(self, who: dict[str, Any], address: str | None) -> tuple[str, Session]:
        token = secrets.token_urlsafe(32)
        now = time.time()
        row = {"token_hash": hash_token(token), "csrf_token": secrets.token_urlsafe(32), "address": address,
               "created_at": now, "last_seen_at": now, "expires_at": now + self.lifetime_s, **who}
        await self.store.call(self.store.sessions.sweep, now, now - self.idle_s)
        await self.store.call(self.store.sessions.insert, row)
        session = await self.resolve(token)
        if session is None:
            # What it rests on went away meanwhile (a key revoked within the key cache time).
            raise Unauthorized("this API key is no longer valid", field="api_key", code="sign_in_failed")
        return token, session

    async def resolve(self, token: str | None) -> Session | None:
        """The live session of ``token``, or None (unknown, expired, or what it rests on is gone)."""
        if not token or len(token) > 200:
            return None
        digest = hash_token(token)
        row = await self.store.call(self.store.sessions.resolve, digest)
        if row is None:
            return None
        now = time.time()
        if row["expires_at"] <= now or row["last_seen_at"] < now - self.idle_s or not _still_valid(row, now):
            await self.store.call(self.store.sessions.delete, digest)
            return None
        if now - row["last_seen_at"] >= TOUCH_EVERY_S:
            await self.store.call(self.store.sessions.touch, digest, now)
        if row["kind"] == OPERATOR:
            role, name = row["role"], row["operator_name"]
        else:
            role, name = CUSTOMER, row["key_name"] or row["key_prefix"]
        return Session(digest, row["kind"], role, name, row["account_id"], row["key_id"], row["csrf_token"],
                       row["address"])

    async def end(self, session: Session) -> None:
        await self.store.call(self.store.sessions.delete, session.token_hash)


def _still_valid(row: dict[str, Any], now: float) -> bool:
    if row["kind"] == OPERATOR:
        return row["operator_name"] is not None and row["operator_disabled_at"] is None
    if row["kind"] == CUSTOMER:
        expires = row["key_expires_at"]
        return row["key_prefix"] is not None and row["key_revoked_at"] is None and (expires is None or expires > now)
    return False
