"""The operator's dashboard (outcomes, success rate, latency, credits, top models and accounts,
channel health, charts) and the usage page (by day, model, account or user, with CSV export).

Interim: the figures come from ``store.console_stats``, plain queries over the task rows in the
window. The ``stats`` work brings ``core/stats.py`` (StatsService over usage rollups); these pages
move to it once it lands.
"""

from __future__ import annotations

import time
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


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


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
        since = time.time() - span
        outcomes = await store.call(store.console_stats.outcomes, since)
        task_durations = await store.call(store.console_stats.durations, since, "task")
        call_durations = await store.call(store.console_stats.durations, since, "call")
        totals: dict[str, dict[str, int]] = {"task": {}, "call": {}}
        credits = 0
        for row in outcomes:
            totals[row["kind"]][row["status"]] = int(row["count"])
            credits += int(row["credits"] or 0)
        summary = {}
        for kind, counts in totals.items():
            finished = sum(n for s, n in counts.items() if s in ("succeeded", "failed", "timeout"))
            summary[kind] = {"by_status": counts, "total": sum(counts.values()),
                             "success_rate": round(counts.get("succeeded", 0) / finished, 4) if finished else None}
        found = {r["start"]: r for r in await store.call(store.console_stats.series, since, bucket)}
        # Every bucket of the window, the empty ones too, so the chart's time axis is even.
        starts = range(int(since // bucket) * bucket, int(time.time()) + 1, bucket)
        series = [found.get(start, {"start": start, "count": 0, "succeeded": 0, "failed": 0, "credits": 0})
                  for start in starts]
        label = "%H:00" if bucket < 86400 else "%m-%d"
        chart = {"labels": [datetime.fromtimestamp(r["start"], tz=timezone.utc).strftime(label) for r in series],
                 "succeeded": [int(r["succeeded"] or 0) for r in series],
                 "failed": [int(r["failed"] or 0) for r in series],
                 "other": [int(r["count"]) - int(r["succeeded"] or 0) - int(r["failed"] or 0) for r in series],
                 "credits": [int(r["credits"] or 0) for r in series]}
        health = await store.call(store.channels.health)
        channels = [{"id": ch.id, "name": ch.name, "enabled": ch.enabled,
                     **{k: (gw.router.health[ch.id].snapshot() if gw.engine else health.get(ch.id, {})).get(k)
                        for k in ("state", "requests", "errors", "latency_ms")},
                     "in_flight": gw.engine.running.get(ch.id, 0) if gw.engine else health.get(ch.id, {}).get("in_flight")}
                    for ch in gw.router.channels.values()]
        data = {
            "window": window, "since": since, "summary": summary, "credits_captured": credits,
            "latency_s": {kind: {"p50": percentile(values, 0.5), "p95": percentile(values, 0.95), "sample": len(values)}
                          for kind, values in (("task", task_durations), ("call", call_durations))},
            "top_models": await store.call(store.console_stats.top, since, "model"),
            "top_accounts": await store.call(store.console_stats.top, since, "account"),
            "series": chart, "channels": channels,
        }
        return c.render.page(request, "dashboard.html", data, extra={"windows": list(WINDOWS)})

    async def usage(request: Request) -> Response:
        window = window_of(request)
        group_by = request.query_params.get("group_by", "day")
        if group_by not in GROUPINGS:
            group_by = "day"
        account = request.query_params.get("account", "").strip()[:40] or None
        since = time.time() - WINDOWS[window][0]
        rows = await store.call(store.console_stats.usage, since, group_by, account_id=account)
        data = [{group_by: _group_label(group_by, r["group"]), "tasks": int(r["count"]),
                 "succeeded": int(r["succeeded"] or 0), "credits": int(r["credits"] or 0)} for r in rows]
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
