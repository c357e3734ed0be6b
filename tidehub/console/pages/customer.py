"""A customer's own account at a glance: balance, the key they signed in with, recent tasks.
(More customer pages build on this one: keys, redeem, usage, webhooks, the playground.)"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

from tidehub.console.security import CUSTOMER, page
from tidehub.core.auth import Principal

if TYPE_CHECKING:
    from tidehub.console.app import Console


def routes(c: "Console") -> list[BaseRoute]:
    gw = c.gw
    store = gw.store

    async def overview(request: Request) -> Response:
        session = request.state.session
        principal = Principal(session.key_id, session.account_id)
        balance = await gw.accounts.balance(principal)
        key = await store.call(store.keys.get, session.key_id, session.account_id)
        recent = await store.call(store.task_list.page, account_id=session.account_id, limit=10)
        return c.render.page(request, "customer.html", {
            "account_id": session.account_id, "balance": balance.as_dict(),
            "key": {k: key[k] for k in ("id", "name", "prefix", "spend_cap", "spent", "expires_at")} if key else None,
            "recent": [{k: r[k] for k in ("id", "model", "status", "captured", "held", "created_at")}
                       for r in recent.rows]})

    return [page("/account", overview, roles=CUSTOMER)]
