"""Health check, the one endpoint without a key."""

from __future__ import annotations

from starlette.requests import Request
from starlette.routing import Route

from tidehub.api.openapi import STRING, describe, obj
from tidehub.api.responses import JSONResponse
from tidehub.gateway import Gateway


def health_routes(gw: Gateway) -> list[Route]:
    answer = obj({"status": {"type": "string", "enum": ["ok", "error"]},
                  "checks": obj({"db": STRING, "redis": STRING})})

    @describe("Whether the gateway and its database answer", public=True, ok=answer, answers={503: answer})
    async def health(request: Request) -> JSONResponse:
        checks = {"db": "ok", "redis": await gw.shared.status()}
        try:
            await gw.store.call(gw.store.ping)
        except Exception as exc:  # any failure of the database is what this reports
            checks["db"] = f"error: {type(exc).__name__}"
        ok = all(v in ("ok", "disabled") for v in checks.values())
        return JSONResponse({"status": "ok" if ok else "error", "checks": checks}, status_code=200 if ok else 503)

    return [Route("/api/health", health, methods=["GET"])]
