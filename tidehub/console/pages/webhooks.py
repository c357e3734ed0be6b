"""Webhook deliveries of every account: status, attempts with their response codes, redeliver."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute

from tidehub.console.forms import client_address
from tidehub.console.security import ADMIN, OPERATORS, page

if TYPE_CHECKING:
    from tidehub.console.app import Console

STATUSES = ("", "pending", "delivered", "failed", "disabled")


def routes(c: "Console") -> list[BaseRoute]:
    store = c.gw.store

    async def deliveries(request: Request) -> Response:
        params = request.query_params
        filters = {"account": params.get("account", "").strip()[:40], "task": params.get("task", "").strip()[:64],
                   "status": params.get("status", "") if params.get("status", "") in STATUSES else ""}
        found = await store.call(store.webhooks.page, account_id=filters["account"] or None,
                                 task_id=filters["task"] or None, status=filters["status"] or None,
                                 after=params.get("after"))
        return c.render.page(request, "webhooks.html", {"deliveries": found.rows, "next": found.next,
                                                         "filters": filters},
                             extra={"statuses": STATUSES, "done": params.get("done")})

    async def redeliver(request: Request) -> Response:
        delivery_id = request.path_params["delivery_id"]
        await c.gw.webhooks.redeliver(None, delivery_id, actor=request.state.session.actor(client_address(request)))
        return RedirectResponse(f"/console/webhooks?done={delivery_id}", status_code=303)

    return [
        page("/webhooks", deliveries, roles=OPERATORS),
        page("/webhooks/{delivery_id}/redeliver", redeliver, roles=ADMIN, methods=["POST"]),
    ]
