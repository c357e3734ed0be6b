"""Tasks and relayed calls: the list (time window, filters, keyset pages) and one page per task
with its input, output, charge, attempts, previews of its files, and cancel. Customers see their
own account's only; an operator sees every account's and what happened upstream."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute

from tidehub.console.forms import client_address
from tidehub.console.rendering import json_response, wants_json
from tidehub.console.security import SIGNED_IN, page
from tidehub.core.auth import Principal
from tidehub.core.lifecycle import STATUSES, TERMINAL
from tidehub.errors import NotFound

if TYPE_CHECKING:
    from tidehub.console.app import Console

WINDOWS = {"1h": 3600, "24h": 86400, "7d": 7 * 86400, "30d": 30 * 86400, "all": None}
DEFAULT_WINDOW = "24h"
# What only operators see of a task: where it ran and what the upstream said.
OPERATOR_ONLY = ("channel_id", "adapter", "upstream_ref", "upstream", "failed_channels", "lease_owner", "lease_until",
                 "next_check_at", "cancel_upstream")


def routes(c: "Console") -> list[BaseRoute]:
    gw = c.gw
    store = gw.store

    async def tasks(request: Request) -> Response:
        session = request.state.session
        params = request.query_params
        window = params.get("window", DEFAULT_WINDOW)
        if window not in WINDOWS:
            window = DEFAULT_WINDOW
        span = WINDOWS[window]
        filters = {k: params.get(k, "").strip()[:200] for k in ("status", "model", "channel", "account", "key",
                                                                "user", "id")}
        if filters["status"] not in ("", *STATUSES):
            filters["status"] = ""
        customer = session.role == "customer"
        if customer:
            filters["account"], filters["channel"] = session.account_id, ""
        found = await store.call(
            store.task_list.page, since=None if span is None or filters["id"] else time.time() - span,
            status=filters["status"] or None, model=filters["model"] or None, channel_id=filters["channel"] or None,
            account_id=filters["account"] or None, key_id=filters["key"] or None,
            user_identifier=filters["user"] or None, task_id=filters["id"] or None, after=params.get("after"))
        rows = found.rows
        if customer:
            rows = [{k: v for k, v in r.items() if k not in OPERATOR_ONLY} for r in rows]
        return c.render.page(request, "tasks.html", {"tasks": rows, "next": found.next, "window": window,
                                                      "filters": filters},
                             extra={"windows": list(WINDOWS), "statuses": STATUSES,
                                    "channel_names": _channel_names(gw)})

    async def load(request: Request) -> dict[str, Any]:
        session = request.state.session
        task_id = request.path_params["task_id"]
        account = session.account_id if session.role == "customer" else None
        task = await store.call(store.tasks.get, task_id, account)
        if task is None:
            # The same answer whether the task is missing or another account's.
            raise NotFound(f"no task {task_id!r}", field="task_id")
        return task

    async def shown(request: Request) -> tuple[dict[str, Any], dict[str, Any]]:
        data, extra = await describe(gw, request.state.session, await load(request))
        return data, {**extra, "done": request.query_params.get("done")}

    async def task(request: Request) -> Response:
        data, extra = await shown(request)
        return c.render.page(request, "task.html", data, extra=extra)

    async def live(request: Request) -> Response:
        """The part of a task's page that changes while it runs (htmx polls it until it is final)."""
        data, extra = await shown(request)
        if wants_json(request):
            return json_response(data, headers={"Cache-Control": "no-store"})
        return c.render.html(request, "_task_live.html", {**data, **extra})

    async def cancel(request: Request) -> Response:
        session = request.state.session
        found = await load(request)
        if session.role == "customer":
            await gw.tasks.cancel(Principal(session.key_id or "", session.account_id or ""), found["id"])
        else:
            await gw.tasks.cancel_as_operator(found["id"], actor=session.actor(client_address(request)))
        return RedirectResponse(f"/console/tasks/{found['id']}?done=cancelled", status_code=303)

    return [
        page("/tasks", tasks, roles=SIGNED_IN),
        page("/tasks/{task_id}", task, roles=SIGNED_IN),
        page("/tasks/{task_id}/live", live, roles=SIGNED_IN),
        page("/tasks/{task_id}/cancel", cancel, roles={"admin", "customer"}, methods=["POST"]),
    ]


async def describe(gw: Any, session: Any, found: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A task as its page (and the playground) shows it: previews of its files, its transcript, and
    for operators where it ran; and what only the HTML needs (cancel, whether it is final)."""
    store = gw.store
    files = await store.call(store.assets.of_task, found["id"])
    previews = [{"url": f"{gw.settings.base_url}/files/{a['token']}/{a['name']}", "name": a["name"],
                 "content_type": a["content_type"], "size": a["size"], "kind": a["content_type"].split("/")[0]}
                for a in files]
    shown = dict(found)
    if session.role == "customer":
        for name in OPERATOR_ONLY:
            shown.pop(name, None)
    else:
        names = _channel_names(gw)
        shown["channel_name"] = names.get(found["channel_id"] or "", found["channel_id"])
        shown["failed_channel_names"] = [names.get(cid, cid) for cid in found["failed_channels"] or []]
    return ({"task": shown, "files": previews, "transcript": _transcript(found)},
            {"can_cancel": found["status"] not in TERMINAL and session.role in ("admin", "customer"),
             "final": found["status"] in TERMINAL})


def _channel_names(gw: Any) -> dict[str, str]:
    return {cid: channel.name for cid, channel in gw.router.channels.items()}


def _transcript(task: dict[str, Any]) -> str | None:
    output = task.get("output")
    if task["capability"] == "transcribe" and isinstance(output, dict) and isinstance(output.get("text"), str):
        return output["text"]
    return None
