"""API keys: the list with filters, creating one (its secret shown once, in the response that made
it), revoking, and editing a key's limits."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute

from tidehub.console.forms import Form, client_address
from tidehub.console.security import ADMIN, OPERATORS, page
from tidehub.errors import InvalidInput

if TYPE_CHECKING:
    from tidehub.console.app import Console

STATES = ("", "active", "revoked", "expired")


def routes(c: "Console") -> list[BaseRoute]:
    store = c.gw.store

    async def keys_view(request: Request, *, created: dict[str, Any] | None = None,
                        errors: dict[str, str] | None = None, values: dict[str, Any] | None = None,
                        status: int = 200) -> Response:
        params = request.query_params
        state = params.get("state", "") if params.get("state", "") in STATES else ""
        found = await store.call(store.keys.page, account_id=params.get("account", "").strip() or None, state=state,
                                 text=params.get("q", "").strip()[:100], now=time.time(), after=params.get("after"))
        data: dict[str, Any] = {"keys": found.rows, "next": found.next,
                                "filters": {"account": params.get("account", ""), "state": state, "q": params.get("q", "")}}
        if created is not None:
            data["created"] = created
        return c.render.page(request, "keys.html", data, status,
                             extra={"errors": errors or {}, "values": values or {}, "states": STATES})

    async def keys(request: Request) -> Response:
        return await keys_view(request)

    def limits(form: Form) -> dict[str, Any]:
        return {"spend_cap": form.integer("spend_cap", minimum=0), "expires_at": form.moment("expires_at"),
                "allowed_models": form.listing("allowed_models"), "allowed_ips": form.listing("allowed_ips"),
                "rpm": form.integer("rpm", minimum=1), "max_concurrency": form.integer("max_concurrency", minimum=1)}

    async def create(request: Request) -> Response:
        form = await Form.read(request)
        try:
            values = {"name": form.text("name", max_length=200), "account_id": form.text("account_id", max_length=40)
                      or None, "credits": form.integer("credits", minimum=0) or 0, **limits(form)}
            key = await run_in_threadpool(c.gw.keys.create, actor=request.state.session.actor(client_address(request)),
                                          **values)
        except InvalidInput as exc:
            return await keys_view(request, errors={exc.field or "name": exc.message}, values=form.values(), status=422)
        created = {"key_id": key.key_id, "account_id": key.account_id, "secret": key.secret}
        return await keys_view(request, created=created, status=201)

    async def key_view(request: Request, *, errors: dict[str, str] | None = None,
                       values: dict[str, Any] | None = None, status: int = 200) -> Response:
        key = await run_in_threadpool(c.gw.keys.get, request.path_params["key_id"])
        if values is None:
            values = {"spend_cap": "" if key["spend_cap"] is None else str(key["spend_cap"]),
                      "expires_at": _iso_input(key["expires_at"]),
                      "allowed_models": ", ".join(key["allowed_models"] or []),
                      "allowed_ips": ", ".join(key["allowed_ips"] or []),
                      "rpm": "" if key["rpm"] is None else str(key["rpm"]),
                      "max_concurrency": "" if key["max_concurrency"] is None else str(key["max_concurrency"])}
        return c.render.page(request, "key.html", {"key": key}, status,
                             extra={"errors": errors or {}, "values": values, "done": request.query_params.get("done")})

    async def key(request: Request) -> Response:
        return await key_view(request)

    async def update(request: Request) -> Response:
        form = await Form.read(request)
        key_id = request.path_params["key_id"]
        try:
            await run_in_threadpool(c.gw.keys.update, key_id,
                                    actor=request.state.session.actor(client_address(request)), **limits(form))
        except InvalidInput as exc:
            return await key_view(request, errors={exc.field or "spend_cap": exc.message}, values=form.values(),
                                  status=422)
        return RedirectResponse(f"/console/keys/{key_id}?done=saved", status_code=303)

    async def revoke(request: Request) -> Response:
        key_id = request.path_params["key_id"]
        await run_in_threadpool(c.gw.keys.revoke, key_id, actor=request.state.session.actor(client_address(request)))
        return RedirectResponse(f"/console/keys/{key_id}?done=revoked", status_code=303)

    return [
        page("/keys", keys, roles=OPERATORS),
        page("/keys", create, roles=ADMIN, methods=["POST"]),
        page("/keys/{key_id}", key, roles=OPERATORS),
        page("/keys/{key_id}", update, roles=ADMIN, methods=["POST"]),
        page("/keys/{key_id}/revoke", revoke, roles=ADMIN, methods=["POST"]),
    ]


def _iso_input(ts: float | None) -> str:
    if ts is None:
        return ""
    return time.strftime("%Y-%m-%dT%H:%M", time.gmtime(ts))
