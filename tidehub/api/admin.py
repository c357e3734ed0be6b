"""Operator endpoints, behind ``TIDEHUB_ADMIN_TOKEN`` (absent: the admin API is off)."""

from __future__ import annotations

import hmac
from typing import Any

from starlette.requests import Request
from starlette.routing import Route

from tidehub.api.dialect import DialectApp, dialect_app
from tidehub.api.responses import JSONResponse, iso
from tidehub.errors import Forbidden, NotFound, Unauthorized
from tidehub.gateway import Gateway


def render_error(status: int, code: str, message: str, field: str | None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "field": field}}


def create_admin_app(gw: Gateway) -> DialectApp:
    token = gw.settings.admin_token

    def check(request: Request) -> None:
        if not token:
            raise NotFound("the admin API is off: set TIDEHUB_ADMIN_TOKEN to turn it on")
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise Unauthorized("missing admin token: send 'Authorization: Bearer <TIDEHUB_ADMIN_TOKEN>'")
        if not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise Forbidden("wrong admin token", code="forbidden")

    async def channels(request: Request) -> JSONResponse:
        check(request)
        health = await gw.store.call(gw.store.channels.health)
        live = {cid: h.snapshot() for cid, h in gw.router.health.items()}
        rows = []
        for channel in gw.router.channels.values():
            seen = (live.get(channel.id) if gw.engine else health.get(channel.id)) or {}
            rows.append({
                "id": channel.id, "name": channel.name, "adapter": channel.adapter, "base_url": channel.base_url,
                "models": channel.models, "priority": channel.priority, "weight": channel.weight,
                "max_concurrency": channel.max_concurrency, "rpm": channel.rpm, "enabled": channel.enabled,
                "health": {**{k: seen.get(k) for k in ("state", "requests", "errors", "consecutive_failures",
                                                        "latency_ms")},
                           "in_flight": (gw.engine.running.get(channel.id, 0) if gw.engine else None),
                           "updated_at": iso(health.get(channel.id, {}).get("updated_at"))},
            })
        return JSONResponse({"data": rows})

    return dialect_app([Route("/channels", channels, methods=["GET"])], render_error)
