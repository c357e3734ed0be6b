"""The MS dialect: an endpoint marketplace, ``run`` by slug, the standard Task object."""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route

from tidehub.api.dialect import account_routes, dialect_app, task_routes
from tidehub.api.requests import authenticate, idempotency_key, optional_label, optional_url, read_json_object
from tidehub.api.responses import JSONResponse, iso
from tidehub.catalog import Endpoint
from tidehub.errors import InvalidInput
from tidehub.gateway import Gateway

STATUS = {
    "queued": "queued",
    "running": "processing",
    "succeeded": "succeeded",
    "failed": "failed",
    "timeout": "timeout",
    "canceled": "canceled",
}


def render_error(status: int, code: str, message: str, field: str | None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "field": field}}


def render_task(task: dict[str, Any]) -> dict[str, Any]:
    error = None
    if task["error_code"]:
        error = {"code": task["error_code"], "message": task["error_message"]}
    return {
        "task_id": task["id"],
        "endpoint": task["endpoint"],
        "model": task["model"],
        "capability": task["capability"],
        "mode": task["mode"],
        "status": STATUS[task["status"]],
        "progress": task["progress"],
        "queue_position": task["queue_position"],
        "output": task["output"],
        "error": error,
        "logs": task.get("logs") or [],
        "created_at": iso(task["created_at"]),
        "updated_at": iso(task["updated_at"]),
        "completed_at": iso(task["finished_at"]),
    }


def render_endpoint(ep: Endpoint, *, detail: bool) -> dict[str, Any]:
    out = ep.summary()
    out["hub_models"] = list(ep.hub_ids)
    if detail:
        out["input_schema"] = ep.input_schema
        out["output_schema"] = ep.output_schema
        out["examples"] = [{"input": ex} for ex in ep.examples]
    return out


def create_ms_app(gw: Gateway) -> Starlette:
    limit = gw.settings.max_body_bytes

    async def list_endpoints(request: Request) -> JSONResponse:
        await authenticate(gw.auth, request)
        capability = request.query_params.get("capability")
        tag = request.query_params.get("tag")
        items = [
            render_endpoint(ep, detail=False)
            for ep in gw.catalog.endpoints.values()
            if (capability is None or ep.capability == capability) and (tag is None or tag in ep.tags)
        ]
        return JSONResponse({"data": items, "total": len(items)})

    async def get_endpoint(request: Request) -> JSONResponse:
        await authenticate(gw.auth, request)
        return JSONResponse(render_endpoint(gw.catalog.endpoint(request.path_params["slug"]), detail=True))

    async def run(request: Request) -> JSONResponse:
        principal = await authenticate(gw.auth, request)
        endpoint = gw.catalog.endpoint(request.path_params["slug"])
        body = await read_json_object(request, limit)
        if "input" not in body:
            raise InvalidInput("input: is required", field="input")
        task = await gw.tasks.submit(
            principal, endpoint, body["input"], id_prefix="ms", webhook_url=optional_url(body, "webhook_url"),
            user_identifier=optional_label(body, "user_identifier"), idempotency_key=idempotency_key(request),
        )
        return JSONResponse(render_task(task))

    return dialect_app(
        [
            Route("/endpoints", list_endpoints, methods=["GET"]),
            Route("/endpoints/{slug:path}", get_endpoint, methods=["GET"]),
            Route("/run/{slug:path}", run, methods=["POST"]),
            *task_routes(gw, render_task, STATUS),
            *account_routes(gw),
        ],
        render_error,
    )
