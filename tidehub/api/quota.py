"""The video hub's user API: quota and redemption codes, in its ``success`` envelope."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.routing import Route

from tidehub.api.dialect import DialectApp, dialect_app
from tidehub.api.openapi import INTEGER, STRING, describe, json_content, obj
from tidehub.api.requests import authenticate, client_address, read_json_object
from tidehub.api.responses import JSONResponse
from tidehub.gateway import Gateway


def render_error(status: int, code: str, message: str, field: str | None) -> dict[str, Any]:
    return {"success": False, "message": message, "code": code}


ERROR_SCHEMA = obj({"success": {"const": False}, "message": STRING, "code": STRING})


def create_quota_app(gw: Gateway) -> DialectApp:
    @describe("The account's quota", errors=(404,), ok=obj({"success": {"const": True}, "data": obj({
        "totalQuota": INTEGER, "usedQuota": INTEGER, "remainingQuota": INTEGER})}))
    async def quota(request: Request) -> JSONResponse:
        principal = await authenticate(gw.auth, request)
        b = await gw.accounts.balance(principal)
        # used = captured + held by live tasks, so total = used + remaining.
        return JSONResponse({"success": True, "data": {
            "totalQuota": b.added, "usedQuota": b.spent + b.held, "remainingQuota": b.credits}})

    @describe("Redeem a code for credits",
              body=json_content(obj({"code": {"type": "string", "minLength": 1}})),
              ok=obj({"success": {"const": True}, "data": obj({"addedQuota": INTEGER, "totalQuota": INTEGER})}))
    async def redemption(request: Request) -> JSONResponse:
        principal = await authenticate(gw.auth, request)
        body = await read_json_object(request, gw.settings.max_body_bytes)
        added, b = await gw.accounts.redeem(principal, body.get("code"), client_address(request))
        return JSONResponse({"success": True, "data": {"addedQuota": added, "totalQuota": b.added}})

    return dialect_app(
        [Route("/quota", quota, methods=["GET"]), Route("/redemption", redemption, methods=["POST"])],
        render_error,
    )
