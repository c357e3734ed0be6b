"""The operator's dashboard (outcomes, success rate, latency, credits, top models and accounts,
channel health, charts) and the usage page (by day, model, account or user, with CSV export).

The figures come from ``core/stats.py`` (over the usage rollups), so they cost the same on a
database of a million tasks as on an empty one.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute

from tidehub.console.rendering import csv_response
from tidehub.console.security import OPERATORS, SIGNED_IN, page

if TYPE_CHECKING:
    from tidehub.console.app import Console

WINDOWS = {"24h": (86400, 3600), "7d": (7 * 86400, 86400), "30d": (30 * 86400, 86400)}  # span, chart bucket
GROUPINGS = ("day", "model", "account", "user_identifier")


def routes(c: "Console") -> list[BaseRoute]:
    gw = c.gw
    store = gw.store

    def window_of(request: Request) -> str:
        window = request.query_params.get("window", "24h")
        return window if window in WINDOWS else "24h"

    async def dashboard(request: Request) -> Response:
        if request.state.session.role == "customer":
            return RedirectResponse("/console/account", status_code=303)
        window = window_of(request)
        span, bucket = WINDOWS[window]
        figures = await gw.stats.dashboard(span, bucket)
        series = figures["series"]
        label = "%H:00" if bucket < 86400 else "%m-%d"
        chart = {"labels": [datetime.fromtimestamp(r["start"], tz=timezone.utc).strftime(label) for r in series],
                 "succeeded": [r["succeeded"] for r in series],
                 "failed": [r["failed"] for r in series],
                 "other": [r["count"] - r["succeeded"] - r["failed"] for r in series],
                 "credits": [r["credits"] for r in series]}
        health = await store.call(store.channels.health)
        channels = [{"id": ch.id, "name": ch.name, "enabled": ch.enabled,
                     **{k: (gw.router.health[ch.id].snapshot() if gw.engine else health.get(ch.id, {})).get(k)
                        for k in ("state", "requests", "errors", "latency_ms")},
                     "in_flight": gw.engine.running.get(ch.id, 0) if gw.engine else health.get(ch.id, {}).get("in_flight")}
                    for ch in gw.router.channels.values()]
        data = {
            "window": window, "since": figures["since"], "summary": figures["summary"],
            "credits_captured": figures["credits_captured"], "latency_s": figures["latency_s"],
            "top_models": figures["top_models"], "top_accounts": figures["top_accounts"],
            "series": chart, "channels": channels,
        }
        return c.render.page(request, "dashboard.html", data, extra={"windows": list(WINDOWS)})

    async def usage(request: Request) -> Response:
        window = window_of(request)
        group_by = request.query_params.get("group_by", "day")
        if group_by not in GROUPINGS:
            group_by = "day"
        account = request.query_params.get("account", "").strip()[:40] or None
        rows = await gw.stats.usage(WINDOWS[window][0], group_by, account_id=account)
        data = [{group_by: _group_label(group_by, r["group"]), "tasks": r["count"],
                 "succeeded": r["succeeded"], "credits": r["credits"]} for r in rows]
        if request.query_params.get("format") == "csv":
            return csv_response(f"usage-by-{group_by}-{window}.csv", [group_by, "tasks", "succeeded", "credits"],
                                ([d[group_by], d["tasks"], d["succeeded"], d["credits"]] for d in data))
        chart = {"labels": [str(d[group_by]) for d in data[:30]], "credits": [d["credits"] for d in data[:30]],
                 "tasks": [d["tasks"] for d in data[:30]]}
        return c.render.page(request, "usage.html", {"window": window, "group_by": group_by, "account": account,
                                                      "rows": data, "chart": chart},
                             extra={"windows": list(WINDOWS), "groupings": GROUPINGS})

    return [
        page("/", dashboard, roles=SIGNED_IN),
        page("/usage", usage, roles=OPERATORS),
    ]


def _group_label(group_by: str, value: Any) -> Any:
    if group_by == "day":
        return datetime.fromtimestamp(int(value) * 86400, tz=timezone.utc).date().isoformat()
    return value if value is not None else "(none)"
