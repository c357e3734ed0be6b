"""The audit log: who changed what, when, from where; filtered by actor, action and target."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

from tidehub.console.security import OPERATORS, page

if TYPE_CHECKING:
    from tidehub.console.app import Console

WINDOWS = {"24h": 86400, "7d": 7 * 86400, "30d": 30 * 86400, "all": None}


def routes(c: "Console") -> list[BaseRoute]:
    store = c.gw.store

    async def audit(request: Request) -> Response:
        params = request.query_params
        window = params.get("window", "30d") if params.get("window", "30d") in WINDOWS else "30d"
        span = WINDOWS[window]
        filters = {k: params.get(k, "").strip()[:120] for k in ("actor", "action", "target")}
        found = await store.call(store.audit.page, since=time.time() - span if span else None,
                                 actor=filters["actor"] or None, action=filters["action"] or None,
                                 target=filters["target"] or None, after=params.get("after"))
        return c.render.page(request, "audit.html", {"entries": found.rows, "next": found.next, "window": window,
                                                      "filters": filters}, extra={"windows": list(WINDOWS)})

    return [page("/audit", audit, roles=OPERATORS)]
