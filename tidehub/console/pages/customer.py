"""A customer's own account: balance and a redemption form, usage with a chart, their keys (a new
one's secret shown once; revoke), their webhook secret (shown on request, rotated) and deliveries.
Every read and change goes through the core services the dialects use, with the session's account
as the principal, so a customer never reaches another account's key or delivery (404 as if it did
not exist)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute

from tidehub.console.forms import Form, client_address
from tidehub.console.rendering import csv_response
from tidehub.console.security import CUSTOMER, page
from tidehub.core.accounts import GROUPINGS
from tidehub.core.auth import Principal
from tidehub.errors import InvalidInput, TidehubError

if TYPE_CHECKING:
    from tidehub.console.app import Console

USAGE_WINDOWS = {"24h": 86400, "7d": 7 * 86400, "30d": 30 * 86400, "90d": 90 * 86400}
KEY_FIELDS = ("id", "name", "prefix", "created_at", "revoked_at", "expires_at", "spend_cap", "spent",
              "allowed_models", "allowed_ips")


def principal_of(request: Request) -> Principal:
    """The signed-in customer as core knows an API caller (the account and the key they signed in
    with). Reads need nothing more; a task submit checks the key's limits (``gw.auth``)."""
    session = request.state.session
    return Principal(session.key_id or "", session.account_id or "")


def routes(c: "Console") -> list[BaseRoute]:
    gw = c.gw
    store = gw.store

    async def overview_view(request: Request, *, errors: dict[str, str] | None = None,
                            values: dict[str, str] | None = None, redeemed: int | None = None,
                            status: int = 200) -> Response:
        session = request.state.session
        principal = principal_of(request)
        balance = await gw.accounts.balance(principal)
        key = await store.call(store.keys.get, session.key_id, session.account_id)
        recent = await store.call(store.task_list.page, account_id=session.account_id, limit=10)
        usage = await gw.accounts.usage(principal, {"group_by": "day", "from": str(time.time() - 30 * 86400)})
        data: dict[str, Any] = {
            "account_id": session.account_id, "balance": balance.as_dict(),
            "key": {k: key[k] for k in ("id", "name", "prefix", "spend_cap", "spent", "expires_at")} if key else None,
            "recent": [{k: r[k] for k in ("id", "model", "status", "captured", "held", "created_at")}
                       for r in recent.rows],
            "usage_30d": usage["totals"]}
        if redeemed is not None:
            data["redeemed"] = redeemed
        chart = {"labels": [d["day"] for d in usage["data"]], "credits": [d["credits"] for d in usage["data"]]}
        return c.render.page(request, "customer.html", data, status,
                             extra={"errors": errors or {}, "values": values or {}, "chart": chart})

    async def overview(request: Request) -> Response:
        return await overview_view(request)

    async def redeem(request: Request) -> Response:
        form = await Form.read(request)
        try:
            code = form.text("code", required=True, max_length=100, label="Code")
            added, _ = await gw.accounts.redeem(principal_of(request), code, client_address(request))
        except TidehubError as exc:
            if exc.status == 429:
                raise
            return await overview_view(request, errors={exc.field or "code": exc.message}, values=form.values(),
                                       status=exc.status if exc.status in (400, 422) else 422)
        return await overview_view(request, redeemed=added)

    async def usage(request: Request) -> Response:
        params = request.query_params
        window = params.get("window", "30d") if params.get("window", "30d") in USAGE_WINDOWS else "30d"
        group_by = params.get("group_by", "day") if params.get("group_by", "day") in GROUPINGS else "day"
        found = await gw.accounts.usage(principal_of(request), {
            "group_by": group_by, "from": str(time.time() - USAGE_WINDOWS[window]),
            **({"model": params["model"][:200]} if params.get("model") else {})})
        rows = found["data"]
        if params.get("format") == "csv":
            return csv_response(f"usage-by-{group_by}-{window}.csv", [group_by, "tasks", "succeeded", "credits", "held"],
                                ([r[group_by], r["tasks"], r["succeeded"], r["credits"], r["held"]] for r in rows))
        shown = sorted(rows, key=lambda r: -r["credits"])[:30] if group_by != "day" else rows
        chart = {"labels": [str(r[group_by] if r[group_by] is not None else "(none)") for r in shown],
                 "credits": [r["credits"] for r in shown]}
        return c.render.page(request, "customer_usage.html",
                             {"window": window, "group_by": group_by, "rows": rows, "totals": found["totals"]},
                             extra={"windows": list(USAGE_WINDOWS), "groupings": GROUPINGS, "chart": chart})

    async def keys_view(request: Request, *, created: dict[str, Any] | None = None,
                        errors: dict[str, str] | None = None, values: dict[str, Any] | None = None,
                        status: int = 200) -> Response:
        session = request.state.session
        found = await store.call(store.keys.page, account_id=session.account_id, after=request.query_params.get("after"))
        data: dict[str, Any] = {"keys": [{k: r[k] for k in KEY_FIELDS} for r in found.rows], "next": found.next,
                                "signed_in_with": session.key_id}
        if created is not None:
            data["created"] = created
        return c.render.page(request, "customer_keys.html", data, status,
                             extra={"errors": errors or {}, "values": values or {},
                                    "done": request.query_params.get("done")})

    async def keys(request: Request) -> Response:
        return await keys_view(request)

    async def create_key(request: Request) -> Response:
        session = request.state.session
        form = await Form.read(request)
        try:
            limits = {"spend_cap": form.integer("spend_cap", minimum=0, label="Spend cap"),
                      "expires_at": form.moment("expires_at", label="Expires"),
                      "allowed_models": form.listing("allowed_models"), "allowed_ips": form.listing("allowed_ips")}
            # A key of their own account, with no credits of its own: the account's balance pays.
            key = await run_in_threadpool(gw.keys.create, name=form.text("name", max_length=200, label="Label"),
                                          account_id=session.account_id, credits=0,
                                          actor=session.actor(client_address(request)), **limits)
        except InvalidInput as exc:
            return await keys_view(request, errors={exc.field or "name": exc.message}, values=form.values(), status=422)
        return await keys_view(request, created={"key_id": key.key_id, "secret": key.secret}, status=201)

    async def revoke_key(request: Request) -> Response:
        session = request.state.session
        key_id = request.path_params["key_id"]
        await run_in_threadpool(gw.keys.revoke, key_id, account_id=session.account_id,
                                actor=session.actor(client_address(request)))
        if key_id == session.key_id:
            # The session rested on this key: it has ended with it.
            return RedirectResponse("/console/login", status_code=303)
        return RedirectResponse(f"/console/account/keys?done={key_id}", status_code=303)

    async def webhooks_view(request: Request, *, secret: str | None = None, rotated: bool = False) -> Response:
        task_id = request.query_params.get("task", "").strip()[:64] or None
        rows = await gw.webhooks.deliveries(principal_of(request), task_id)
        data: dict[str, Any] = {"deliveries": rows, "task": task_id}
        if secret is not None:
            data.update(secret=secret, rotated=rotated)
        return c.render.page(request, "customer_webhooks.html", data,
                             extra={"done": request.query_params.get("done")})

    async def webhooks(request: Request) -> Response:
        return await webhooks_view(request)

    async def show_secret(request: Request) -> Response:
        # Shown only in the answer to this POST (a dialog), never on the page itself.
        return await webhooks_view(request, secret=await gw.webhooks.secret(principal_of(request)))

    async def rotate_secret(request: Request) -> Response:
        return await webhooks_view(request, secret=await gw.webhooks.secret(principal_of(request), rotate=True),
                                   rotated=True)

    async def redeliver(request: Request) -> Response:
        session = request.state.session
        delivery_id = request.path_params["delivery_id"]
        await gw.webhooks.redeliver(principal_of(request), delivery_id, actor=session.actor(client_address(request)))
        return RedirectResponse(f"/console/account/webhooks?done={delivery_id}", status_code=303)

    return [
        page("/account", overview, roles=CUSTOMER),
        page("/account/redeem", redeem, roles=CUSTOMER, methods=["POST"]),
        page("/account/usage", usage, roles=CUSTOMER),
        page("/account/keys", keys, roles=CUSTOMER),
        page("/account/keys", create_key, roles=CUSTOMER, methods=["POST"]),
        page("/account/keys/{key_id}/revoke", revoke_key, roles=CUSTOMER, methods=["POST"]),
        page("/account/webhooks", webhooks, roles=CUSTOMER),
        page("/account/webhooks/secret", show_secret, roles=CUSTOMER, methods=["POST"]),
        page("/account/webhooks/secret/rotate", rotate_secret, roles=CUSTOMER, methods=["POST"]),
        page("/account/webhooks/{delivery_id}/redeliver", redeliver, roles=CUSTOMER, methods=["POST"]),
    ]
