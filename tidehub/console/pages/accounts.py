"""Accounts: search, balances, the ledger, and topping up (with a note)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute

from tidehub.console.forms import Form, client_address
from tidehub.console.security import ADMIN, OPERATORS, page
from tidehub.errors import InvalidInput, NotFound

if TYPE_CHECKING:
    from tidehub.console.app import Console


def routes(c: "Console") -> list[BaseRoute]:
    store = c.gw.store

    async def accounts(request: Request) -> Response:
        q = request.query_params.get("q", "").strip()[:100]
        found = await store.call(store.accounts.search, q, after=request.query_params.get("after"))
        return c.render.page(request, "accounts.html", {"q": q, "accounts": found.rows, "next": found.next})

    async def account_view(request: Request, *, errors: dict[str, str] | None = None,
                           values: dict[str, Any] | None = None, status: int = 200) -> Response:
        account_id = request.path_params["account_id"]
        account = await store.call(store.accounts.get, account_id)
        if account is None:
            raise NotFound(f"no account {account_id!r}", field="account_id")
        account.pop("webhook_secret", None)
        ledger = await store.call(store.accounts.ledger_page, account_id, after=request.query_params.get("after"))
        keys = await store.call(store.keys.page, account_id=account_id, limit=100)
        return c.render.page(request, "account.html",
                             {"account": account, "ledger": ledger.rows, "next": ledger.next, "keys": keys.rows},
                             status, extra={"errors": errors or {}, "values": values or {},
                                            "done": request.query_params.get("done")})

    async def account(request: Request) -> Response:
        return await account_view(request)

    async def top_up(request: Request) -> Response:
        form = await Form.read(request)
        account_id = request.path_params["account_id"]
        try:
            amount = form.integer("amount", required=True, minimum=1)
            note = form.text("note", max_length=200)
            assert amount is not None
            await c.gw.accounts.top_up(account_id, amount, note,
                                       actor=request.state.session.actor(client_address(request)))
        except InvalidInput as exc:
            return await account_view(request, errors={exc.field or "amount": exc.message}, values=form.values(),
                                      status=422)
        return RedirectResponse(f"/console/accounts/{account_id}?done=topup", status_code=303)

    return [
        page("/accounts", accounts, roles=OPERATORS),
        page("/accounts/{account_id}", account, roles=OPERATORS),
        page("/accounts/{account_id}/top-up", top_up, roles=ADMIN, methods=["POST"]),
    ]
