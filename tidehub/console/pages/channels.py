"""Channels: health (breaker, in flight, latency), add, edit, enable, disable, and a Test button
that runs one real request through the channel and shows the result in place. Credentials are
write-only: never shown, and an empty field keeps the one stored."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute

from tidehub.console.forms import Form, client_address
from tidehub.console.security import ADMIN, OPERATORS, page
from tidehub.core.channel_check import check_channel
from tidehub.core.channels import FIELDS, ChannelError
from tidehub.core.secrets_box import SecretKeyMissing
from tidehub.errors import InvalidInput, NotFound

if TYPE_CHECKING:
    from tidehub.console.app import Console

TEST_TIMEOUT_S = 60.0
# What the console shows of a channel row: never the (encrypted) credential.
SHOWN = ("id", "name", "adapter", "base_url", "models", "priority", "weight", "max_concurrency", "rpm", "enabled",
         "created_at", "updated_at")


def routes(c: "Console") -> list[BaseRoute]:
    gw = c.gw
    store = gw.store

    async def rows() -> list[dict[str, Any]]:
        """Every stored channel with its health: this process's live view where it runs the engine,
        else what the engines last published."""
        stored = await store.call(store.channels.list)
        published = await store.call(store.channels.health)
        out = []
        for row in stored:
            shown = {k: row[k] for k in SHOWN}
            health = dict(published.get(row["id"], {}))
            live = gw.router.health.get(row["id"]) if gw.engine is not None else None
            if live is not None:
                health.update(live.snapshot())
                health["in_flight"] = gw.engine.running.get(row["id"], 0) if gw.engine else None
            shown["has_credential"] = bool(row["secret"])
            shown["health"] = {k: health.get(k) for k in ("state", "requests", "errors", "consecutive_failures",
                                                         "latency_ms", "in_flight", "updated_at")}
            shown["serves"] = _serves(gw, row)
            out.append(shown)
        return out

    async def channels_view(request: Request, *, errors: dict[str, str] | None = None,
                            values: dict[str, Any] | None = None, status: int = 200) -> Response:
        return c.render.page(request, "channels.html", {"channels": await rows()}, status,
                             extra={"errors": errors or {}, "values": values or {"adapter": "fal", "weight": "1"},
                                    "adapter_options": [(a, a) for a in sorted(gw.channels.adapters)], "done": request.query_params.get("done"),
                                    "endpoints": sorted(gw.catalog.endpoints)})

    async def channels(request: Request) -> Response:
        return await channels_view(request)

    def settings_from(form: Form, *, adding: bool) -> dict[str, Any]:
        values: dict[str, Any] = {
            "base_url": form.text("base_url", required=adding, max_length=500, label="base URL"),
            "models": form.listing("models", max_items=1000),
            "priority": form.integer("priority", minimum=0, maximum=1_000_000),
            "weight": form.integer("weight", minimum=1, maximum=1_000_000),
            "max_concurrency": form.integer("max_concurrency", minimum=1, maximum=1_000_000),
            "rpm": form.integer("rpm", minimum=1, maximum=10_000_000),
        }
        if values["base_url"] and not values["base_url"].startswith(("http://", "https://")):
            raise InvalidInput("base URL: must start with http:// or https://", field="base_url")
        return {k: v for k, v in values.items() if v not in (None, "")}

    async def add(request: Request) -> Response:
        form = await Form.read(request)
        try:
            name = form.text("name", required=True, max_length=100)
            adapter = form.choice("adapter", tuple(sorted(gw.channels.adapters)))
            settings = settings_from(form, adding=True)
            secret = str(form.data.get("secret") or "")
            await run_in_threadpool(lambda: gw.channels.add(
                name, adapter=adapter, secret=secret, actor=request.state.session.actor(client_address(request)),
                **{"models": ["*"], **settings}))
        except (InvalidInput, ChannelError, SecretKeyMissing) as exc:
            return await channels_view(request, errors=_field_error(exc), values=form.values(), status=422)
        await gw.router.refresh(force=True)
        return RedirectResponse("/console/channels?done=added", status_code=303)

    async def find(channel_id: str) -> dict[str, Any]:
        for row in await rows():
            if row["id"] == channel_id:
                return row
        raise NotFound(f"no channel {channel_id!r}", field="channel_id")

    async def channel_view(request: Request, *, errors: dict[str, str] | None = None,
                           values: dict[str, Any] | None = None, status: int = 200) -> Response:
        channel = await find(request.path_params["channel_id"])
        if values is None:
            values = {"base_url": channel["base_url"], "models": ", ".join(channel["models"]),
                      **{k: "" if channel[k] is None else str(channel[k])
                         for k in ("priority", "weight", "max_concurrency", "rpm")}}
        return c.render.page(request, "channel.html", {"channel": channel}, status,
                             extra={"errors": errors or {}, "values": values, "done": request.query_params.get("done"),
                                    "endpoints": channel["serves"]})

    async def channel(request: Request) -> Response:
        return await channel_view(request)

    async def update(request: Request) -> Response:
        form = await Form.read(request)
        channel_id = request.path_params["channel_id"]
        await find(channel_id)
        try:
            settings = settings_from(form, adding=False)
            secret = str(form.data.get("secret") or "") or None  # empty: keep the stored credential
            if form.flag("remove_secret"):
                secret = ""
            await run_in_threadpool(lambda: gw.channels.update(
                channel_id, secret=secret, actor=request.state.session.actor(client_address(request)), **settings))
        except (InvalidInput, ChannelError, SecretKeyMissing) as exc:
            return await channel_view(request, errors=_field_error(exc), values=form.values(), status=422)
        await gw.router.refresh(force=True)
        return RedirectResponse(f"/console/channels/{channel_id}?done=saved", status_code=303)

    async def switch(request: Request, enabled: bool) -> Response:
        channel_id = request.path_params["channel_id"]
        await find(channel_id)
        await run_in_threadpool(lambda: gw.channels.update(
            channel_id, enabled=enabled, actor=request.state.session.actor(client_address(request))))
        await gw.router.refresh(force=True)
        return RedirectResponse(f"/console/channels?done={'enabled' if enabled else 'disabled'}", status_code=303)

    async def enable(request: Request) -> Response:
        return await switch(request, True)

    async def disable(request: Request) -> Response:
        return await switch(request, False)

    async def test(request: Request) -> Response:
        channel = await find(request.path_params["channel_id"])
        form = await Form.read(request)
        slug = form.text("endpoint") or (channel["serves"][0] if channel["serves"] else "")
        started = time.monotonic()
        try:
            if slug not in channel["serves"]:
                raise ChannelError(f"this channel does not serve {slug or 'any catalog endpoint'}")
            outcome, message = "ok", await check_channel(gw.channels, channel["id"], slug, TEST_TIMEOUT_S)
        except Exception as exc:  # the report is the point: say what went wrong, plainly
            outcome, message = "failed", str(exc) or type(exc).__name__
        result = {"channel": channel["name"], "endpoint": slug, "outcome": outcome, "message": message,
                  "seconds": round(time.monotonic() - started, 2)}
        if request.headers.get("hx-request"):
            return c.render.html(request, "_channel_test.html", {"result": result})
        return c.render.page(request, "channel.html", {"channel": channel, "test": result},
                             extra={"errors": {}, "values": {"base_url": channel["base_url"],
                                                             "models": ", ".join(channel["models"])},
                                    "endpoints": channel["serves"]})

    return [
        page("/channels", channels, roles=OPERATORS),
        page("/channels", add, roles=ADMIN, methods=["POST"]),
        page("/channels/{channel_id}", channel, roles=OPERATORS),
        page("/channels/{channel_id}", update, roles=ADMIN, methods=["POST"]),
        page("/channels/{channel_id}/enable", enable, roles=ADMIN, methods=["POST"]),
        page("/channels/{channel_id}/disable", disable, roles=ADMIN, methods=["POST"]),
        page("/channels/{channel_id}/test", test, roles=ADMIN, methods=["POST"]),
    ]


def _serves(gw: Any, row: dict[str, Any]) -> list[str]:
    """The catalog endpoints a channel serves (by its model map and its adapter)."""
    channel = gw.router.channels.get(row["id"])
    if channel is None:
        return []
    return sorted(slug for slug, endpoint in gw.catalog.endpoints.items() if channel.upstream_model(endpoint))


def _field_error(exc: Exception) -> dict[str, str]:
    if isinstance(exc, InvalidInput):
        return {exc.field or "name": exc.message}
    if isinstance(exc, SecretKeyMissing):
        return {"secret": str(exc)}
    message = str(exc)
    for name in (*FIELDS, "name"):
        if message.startswith(name) or f" {name} " in message[:40]:
            return {name: message}
    return {"name": message}
