"""Redemption codes: make a batch (the codes shown, or downloaded as CSV, once: only their hashes
are kept), list them by state, export the list, disable a code or a batch."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute

from tidehub.console.forms import Form, client_address
from tidehub.console.rendering import csv_response, iso
from tidehub.console.security import ADMIN, OPERATORS, page
from tidehub.core.accounts import create_codes, disable_codes
from tidehub.errors import InvalidInput

if TYPE_CHECKING:
    from tidehub.console.app import Console

STATES = ("", "unused", "used", "expired", "disabled")
CSV_ROWS = 100_000  # an export pages through the list up to this many codes


def routes(c: "Console") -> list[BaseRoute]:
    store = c.gw.store

    def filters(request: Request) -> dict[str, Any]:
        params = request.query_params
        return {"state": params.get("state", "") if params.get("state", "") in STATES else "",
                "batch_id": params.get("batch", "").strip()[:40] or None}

    async def codes_view(request: Request, *, made: dict[str, Any] | None = None,
                         errors: dict[str, str] | None = None, values: dict[str, Any] | None = None,
                         status: int = 200) -> Response:
        chosen = filters(request)
        if request.query_params.get("format") == "csv":
            return await export(chosen)
        found = await store.call(store.codes.page, **chosen, now=time.time(), after=request.query_params.get("after"))
        data: dict[str, Any] = {"codes": found.rows, "next": found.next, "filters": chosen}
        if made is not None:
            data["made"] = made
        return c.render.page(request, "codes.html", data, status,
                             extra={"errors": errors or {}, "values": values or {}, "states": STATES})

    async def export(chosen: dict[str, Any]) -> Response:
        rows: list[dict[str, Any]] = []
        after = None
        while len(rows) < CSV_ROWS:
            found = await store.call(store.codes.page, **chosen, now=time.time(), after=after, limit=500)
            rows.extend(found.rows)
            if found.next is None:
                break
            after = found.next
        return csv_response("redemption-codes.csv",
                            ["id", "prefix", "credits", "batch", "created_at", "expires_at", "redeemed_at",
                             "redeemed_by", "disabled_at"],
                            ([r["id"], r["prefix"], r["credits"], r["batch_id"] or "", iso(r["created_at"]),
                              iso(r["expires_at"]) or "", iso(r["redeemed_at"]) or "", r["redeemed_by"] or "",
                              iso(r["disabled_at"]) or ""] for r in rows))

    async def codes(request: Request) -> Response:
        return await codes_view(request)

    async def create(request: Request) -> Response:
        form = await Form.read(request)
        try:
            credits = form.integer("credits", required=True, minimum=1)
            count = form.integer("count", required=True, minimum=1, maximum=10_000)
            expires_at = form.moment("expires_at")
            if expires_at is not None and expires_at <= time.time():
                raise InvalidInput("expires_at: must be in the future", field="expires_at")
            assert credits is not None and count is not None
            made = await run_in_threadpool(create_codes, store, credits, count, expires_at,
                                           actor=request.state.session.actor(client_address(request)))
        except InvalidInput as exc:
            return await codes_view(request, errors={exc.field or "credits": exc.message}, values=form.values(),
                                    status=422)
        if form.flag("download"):
            return csv_response("new-redemption-codes.csv", ["code", "credits", "expires_at"],
                                ([code, credits, iso(expires_at) or ""] for code in made))
        return await codes_view(request, made={"codes": made, "credits": credits, "expires_at": expires_at},
                                status=201)

    async def disable(request: Request) -> Response:
        done = await run_in_threadpool(disable_codes, store, request.path_params["code_id"],
                                       actor=request.state.session.actor(client_address(request)))
        return RedirectResponse(f"/console/codes?disabled={done}", status_code=303)

    return [
        page("/codes", codes, roles=OPERATORS),
        page("/codes", create, roles=ADMIN, methods=["POST"]),
        page("/codes/{code_id}/disable", disable, roles=ADMIN, methods=["POST"]),
    ]
