"""Account money as the customer sees it: balance, redemption codes, usage."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from tidehub.core.audit import Actor, AuditLog
from tidehub.core.auth import Principal, hash_key
from tidehub.core.throttle import FailureThrottle
from tidehub.errors import BadRequest, InvalidInput, NotFound
from tidehub.store import Store

_CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O or 1/I to misread
GROUPINGS = ("day", "model", "user_identifier")


@dataclass(frozen=True)
class Balance:
    credits: int  # available
    held: int  # reserved by live tasks
    spent: int  # captured
    added: int  # top-ups and redemptions, in all

    def as_dict(self) -> dict[str, int]:
        return {"balance": self.credits, "held": self.held, "spent": self.spent, "total_added": self.added}


def new_code() -> str:
    groups = ("".join(secrets.choice(_CODE_ALPHABET) for _ in range(4)) for _ in range(4))
    return "REDEEM-" + "-".join(groups)


def normalise_code(code: str) -> str:
    return code.strip().upper()


MAX_CODES = 100_000
MAX_TOP_UP = 10**15


def create_codes(store: Store, credits: int, count: int, expires_at: float | None = None, *,
                 actor: Actor | None = None) -> list[str]:
    """Make a batch of ``count`` single-use codes worth ``credits`` each; only their hashes are stored."""
    if not 0 < credits <= MAX_TOP_UP:
        raise InvalidInput(f"credits: must be between 1 and {MAX_TOP_UP}", field="credits")
    if not 0 < count <= MAX_CODES:
        raise InvalidInput(f"count: must be between 1 and {MAX_CODES}", field="count")
    now = time.time()
    batch_id = f"batch_{secrets.token_hex(6)}"
    codes = [new_code() for _ in range(count)]
    store.codes.insert([
        {"code_hash": hash_key(c), "prefix": c[:11], "credits": credits, "created_at": now, "expires_at": expires_at,
         "batch_id": batch_id}
        for c in codes
    ])
    AuditLog(store).record(actor, "codes.create", batch_id,
                           {"count": count, "credits": credits, "expires_at": expires_at})
    return codes


def disable_codes(store: Store, code_id: str, *, actor: Actor | None = None) -> int:
    """Disable one unused code (by its id, the first 16 hex digits of its hash) or a whole batch
    (``batch_...``); returns how many were disabled."""
    code_id = code_id.strip().lower()
    if not (code_id.startswith("batch_") or (len(code_id) == 16 and all(c in "0123456789abcdef" for c in code_id))):
        raise InvalidInput("code_id: a code id (16 hex digits) or a batch id (batch_...)", field="code_id")
    done = store.codes.disable(code_id, time.time())
    if done:
        AuditLog(store).record(actor, "codes.disable", code_id, {"count": done})
    return done


class AccountService:
    def __init__(self, store: Store, redeem_throttle: FailureThrottle | None = None) -> None:
        self.store = store
        # Codes are guessable in principle (80 bits): failed attempts are throttled per address.
        self.redeem_throttle = redeem_throttle or FailureThrottle(0)
        self.audit = AuditLog(store)

    async def top_up(self, account_id: str, amount: int, note: str = "", *, actor: Actor | None = None) -> Balance:
        """An operator adds credits (with a note for the ledger)."""
        if not 0 < amount <= MAX_TOP_UP:
            raise InvalidInput(f"amount: must be between 1 and {MAX_TOP_UP}", field="amount")
        if len(note) > 200:
            raise InvalidInput("note: at most 200 characters", field="note")
        if not await self.store.call(self.store.accounts.add_credits, account_id, amount, time.time(), note):
            raise NotFound(f"no account {account_id!r}", field="account_id")
        await self.audit.write(actor, "credits.add", account_id, {"amount": amount, "note": note})
        row = await self.store.call(self.store.accounts.get, account_id)
        return Balance(row["credits"], row["held"], row["spent"], row["added"])

    async def balance(self, principal: Principal) -> Balance:
        row = await self.store.call(self.store.accounts.get, principal.account_id)
        if row is None:
            raise NotFound("the account of this key no longer exists")
        return Balance(row["credits"], row["held"], row["spent"], row["added"])

    async def redeem(self, principal: Principal, code: Any, client_ip: str | None = None) -> tuple[int, Balance]:
        if not isinstance(code, str) or not code.strip():
            raise InvalidInput("code: is required and must be a string", field="code")
        self.redeem_throttle.check(client_ip)
        outcome, credits = await self.store.call(
            self.store.codes.redeem, hash_key(normalise_code(code)), principal.account_id, time.time()
        )
        if outcome != "ok":
            self.redeem_throttle.failed(client_ip)
            reason = {"unknown": "this redemption code does not exist",
                      "used": "this redemption code has already been used",
                      "disabled": "this redemption code has been disabled",
                      "expired": "this redemption code has expired"}[outcome]
            raise BadRequest(reason, code=f"code_{outcome}", field="code")
        return credits, await self.balance(principal)

    async def usage(self, principal: Principal, params: dict[str, str]) -> dict[str, Any]:
        """Usage by day, model or user_identifier: settled tasks and calls from the rollups (whole
        hours, or whole days when both bounds fall on midnight UTC), plus the tasks still live."""
        group_by = params.get("group_by", "day")
        if group_by not in GROUPINGS:
            raise InvalidInput(f"group_by: must be one of {', '.join(GROUPINGS)}", field="group_by")
        since, until = _when(params.get("from"), "from"), _when(params.get("to"), "to")
        filters = {"model": params.get("model"), "user_identifier": params.get("user_identifier"),
                   "key_id": params.get("key_id")}
        period = "day" if all(t is None or t % 86400 == 0 for t in (since, until)) else "hour"
        settled = await self.store.call(
            self.store.rollups.summary, period, ["bucket" if group_by == "day" else group_by],
            since=since, until=until, account_id=principal.account_id, **filters)
        live = await self.store.call(self.store.tasks.live_usage, principal.account_id, group_by,
                                     since=since, until=until, **filters)
        groups: dict[Any, dict[str, int]] = {}

        def group_of(value: Any) -> dict[str, int]:
            return groups.setdefault(value, {"tasks": 0, "succeeded": 0, "credits": 0, "held": 0,
                                             "input_tokens": 0, "output_tokens": 0})

        for row in settled:
            value = row["bucket"] // 86400 if group_by == "day" else row[group_by]
            sums = group_of(value or None)  # the rollups write "" for no user_identifier
            sums["tasks"] += row["count"]
            for name in ("succeeded", "credits", "input_tokens", "output_tokens"):
                sums[name] += row[name]
        for row in live:
            sums = group_of(int(row["group"]) if group_by == "day" else row["group"])
            sums["tasks"] += int(row["tasks"])
            sums["held"] += int(row["held"] or 0)
        data = []
        for value in sorted(groups, key=lambda v: (v is not None, v if v is not None else ""), reverse=True):
            group = value
            if group_by == "day":
                group = datetime.fromtimestamp(int(value) * 86400, tz=timezone.utc).date().isoformat()
            data.append({group_by: group, **groups[value]})
        totals = {k: sum(d[k] for d in data) for k in ("tasks", "succeeded", "credits", "held", "input_tokens",
                                                        "output_tokens")}
        return {"group_by": group_by, "data": data, "totals": totals}

    async def records(self, principal: Principal, limit: int = 100) -> list[dict[str, Any]]:
        return await self.store.call(self.store.tasks.usage_records, principal.account_id, limit)


def _when(value: str | None, name: str) -> float | None:
    """A filter bound: epoch seconds, or an ISO date or date-time (UTC unless it says otherwise)."""
    if value is None or value == "":
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInput(f"{name}: must be an ISO date (2026-11-21), date-time or epoch seconds",
                           field=name) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()
