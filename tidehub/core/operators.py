"""Console operators: people who run the gateway from a browser, as admins (who may change things)
or viewers (who see everything and change nothing).

Passwords are hashed with argon2id (memory-hard: a stolen table is slow to guess at). A hash made
with older parameters is redone at the next successful sign-in.
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from tidehub.core.audit import Actor, AuditLog
from tidehub.errors import Conflict, InvalidInput, NotFound
from tidehub.store import Store

ROLES = ("admin", "viewer")
MIN_PASSWORD = 12
MAX_PASSWORD = 1024  # argon2 takes any length; a cap keeps a sign-in request cheap
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,99}$")


@dataclass(frozen=True)
class Operator:
    id: str
    name: str
    role: str

    @property
    def can_change(self) -> bool:
        return self.role == "admin"


def new_password() -> str:
    """A generated password: 20 URL-safe characters, about 120 bits."""
    return secrets.token_urlsafe(15)


class OperatorService:
    def __init__(self, store: Store, hasher: PasswordHasher | None = None) -> None:
        self.store = store
        self.hasher = hasher or PasswordHasher()
        self.audit = AuditLog(store)
        self._dummy_hash: str | None = None

    @property
    def _dummy(self) -> str:
        """Verifying against this when the name is unknown costs the same time as a real check, so
        the answer's timing does not tell which names exist. Made on first need, not at start."""
        if self._dummy_hash is None:
            self._dummy_hash = self.hasher.hash(secrets.token_urlsafe(16))
        return self._dummy_hash

    def create(self, name: str, role: str = "admin", password: str | None = None, *,
               actor: Actor | None = None) -> tuple[Operator, str]:
        """A new operator; returns it and its password (the one given, or a generated one)."""
        name = check_name(name)
        check_role(role)
        password = new_password() if password is None else check_password(password)
        if self.store.operators.by_name(name) is not None:
            raise Conflict(f"an operator named {name!r} exists already", field="name", code="operator_exists")
        now = time.time()
        operator = Operator(f"op_{secrets.token_hex(8)}", name, role)
        self.store.operators.insert({"id": operator.id, "name": name, "role": role,
                                     "password_hash": self.hasher.hash(password), "created_at": now,
                                     "updated_at": now})
        self.audit.record(actor, "operator.create", name, {"role": role})
        return operator, password

    def list(self) -> list[dict[str, Any]]:
        return self.store.operators.list()

    def get(self, name: str) -> dict[str, Any]:
        row = self.store.operators.by_name(name)
        if row is None:
            raise NotFound(f"no operator {name!r}", field="name")
        return row

    def reset_password(self, name: str, password: str | None = None, *, actor: Actor | None = None) -> str:
        row = self.get(name)
        password = new_password() if password is None else check_password(password)
        self.store.operators.update(row["id"], {"password_hash": self.hasher.hash(password), "updated_at": time.time()})
        # A new password ends the sessions signed in with the old one.
        self.store.sessions.delete_of_operator(row["id"])
        self.audit.record(actor, "operator.reset_password", name)
        return password

    def disable(self, name: str, *, actor: Actor | None = None) -> bool:
        """Disable an operator and end its sessions; False if it was disabled already."""
        row = self.get(name)
        done = self.store.operators.disable(row["id"], time.time())
        if done:
            self.audit.record(actor, "operator.disable", name)
        return done

    def verify(self, name: str, password: str) -> Operator | None:
        """The operator if ``password`` is theirs and they are not disabled; else None. Synchronous
        and slow on purpose (argon2): call it off the event loop."""
        row = self.store.operators.by_name(name, with_hash=True) if _NAME.match(name or "") else None
        if row is None or len(password) > MAX_PASSWORD:
            _verify(self.hasher, self._dummy, password[:MAX_PASSWORD])
            return None
        if not _verify(self.hasher, row["password_hash"], password) or row["disabled_at"] is not None:
            return None
        now = time.time()
        values: dict[str, Any] = {"last_login_at": now}
        if self.hasher.check_needs_rehash(row["password_hash"]):
            values["password_hash"] = self.hasher.hash(password)
        self.store.operators.update(row["id"], values)
        return Operator(row["id"], row["name"], row["role"])


def _verify(hasher: PasswordHasher, hashed: str, password: str) -> bool:
    try:
        return hasher.verify(hashed, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def check_name(name: str) -> str:
    name = (name or "").strip()
    if not _NAME.match(name):
        raise InvalidInput("name: 1 to 100 letters, digits or . _ @ -, starting with a letter or digit",
                           field="name")
    return name


def check_role(role: str) -> str:
    if role not in ROLES:
        raise InvalidInput(f"role: must be one of {', '.join(ROLES)}", field="role")
    return role


def check_password(password: str) -> str:
    if not isinstance(password, str) or not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise InvalidInput(f"password: must be {MIN_PASSWORD} to {MAX_PASSWORD} characters", field="password")
    return password
