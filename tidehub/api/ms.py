"""The MS dialect: an endpoint marketplace, ``run`` by slug, the standard Task object."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.routing import Route

from tidehub.api.dialect import DialectApp, account_routes, dialect_app, task_routes
from tidehub.api.openapi import (
    INTEGER, STRING, TIME, Param, describe, example_name, json_content, nullable, obj, task_endpoints,
)
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


ERROR_SCHEMA = obj({"error": obj({"code": STRING, "message": STRING, "field": nullable(STRING)})})
TASK_SCHEMA = obj({
    "task_id": STRING, "endpoint": STRING, "model": STRING, "capability": STRING, "mode": STRING,
    "status": {"type": "string", "enum": list(STATUS.values())},
    "progress": {**INTEGER, "minimum": 0, "maximum": 100}, "queue_position": nullable(INTEGER),
    "output": {"description": "The result (the endpoint's output_schema) once succeeded; null before."},
    "error": nullable(obj({"code": STRING, "message": nullable(STRING)})),
    "created_at": TIME, "updated_at": TIME, "completed_at": nullable(TIME),
})
ENDPOINT_SCHEMA = obj({
    "endpoint": STRING, "model": STRING, "capability": STRING, "mode": STRING, "vendor": STRING, "title": STRING,
    "description": STRING, "tags": {"type": "array", "items": STRING},
    "price": {"type": "object", "description": "The price rule (credits per unit, factors)."},
    "example_price": nullable(INTEGER), "hub_models": {"type": "array", "items": STRING},
})
ENDPOINT_DETAIL_SCHEMA = {**ENDPOINT_SCHEMA, "properties": {
    **ENDPOINT_SCHEMA["properties"], "input_schema": {"type": "object"}, "output_schema": {"type": "object"},
    "examples": {"type": "array", "items": obj({"input": {"type": "object"}})},
}, "required": [*ENDPOINT_SCHEMA["required"], "input_schema", "output_schema", "examples"]}


def run_body(gw: Gateway, slug: str | None) -> dict[str, Any]:
    """``{input}`` with the endpoint's own input schema, and its catalog examples."""
    ep = gw.catalog.endpoints[slug] if slug else None
    if ep is None or ep.relay_only:
        return {}
    schema = obj({
        "input": ep.input_schema,
        "webhook_url": {"type": "string", "format": "uri",
                        "description": "POSTed the finished task (Standard Webhooks signature)."},
        "user_identifier": {"type": "string", "minLength": 1, "maxLength": 200,
                            "description": "Your end user's id, kept on the usage record."},
    }, required=["input"])
    examples = {example_name(f"{ep.slug}-{i + 1}"): {"summary": ep.title, "value": {"input": ex}}
                for i, ex in enumerate(ep.examples)}
    return json_content(schema, examples)


def render_endpoint(ep: Endpoint, *, detail: bool) -> dict[str, Any]:
    out = ep.summary()
    out["hub_models"] = list(ep.hub_ids)
    if detail:
        out["input_schema"] = ep.input_schema
        out["output_schema"] = ep.output_schema
        out["examples"] = [{"input": ex} for ex in ep.examples]
    return out


def create_ms_app(gw: Gateway) -> DialectApp:
    limit = gw.settings.max_body_bytes

    @describe("List the endpoints", tag="Endpoints", ok=obj({"data": {"type": "array", "items": ENDPOINT_SCHEMA},
                                                            "total": INTEGER}),
              query=(Param("capability", STRING), Param("tag", STRING)))
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

    @describe("An endpoint, with its input schema, examples and price", tag="Endpoints",
              ok=ENDPOINT_DETAIL_SCHEMA, errors=(404,),
              path={"slug": Param("slug", STRING, "An endpoint from `GET /endpoints`.", where="path",
                                  example=lambda gw: next(iter(gw.catalog.endpoints), None))})
    async def get_endpoint(request: Request) -> JSONResponse:
        await authenticate(gw.auth, request)
        return JSONResponse(render_endpoint(gw.catalog.endpoint(request.path_params["slug"]), detail=True))

    @describe("Run an endpoint: a new task", tag="Tasks", body=run_body,
              expand=lambda gw: [ep.slug for ep in task_endpoints(gw)],
              label=lambda gw, slug: f"Run {gw.catalog.endpoints[slug].title}", ok={"$ref": "#/components/schemas/Task"},
              headers=(Param("Idempotency-Key", {"type": "string", "minLength": 1, "maxLength": 200},
                             "The same key and body within 24 hours give the same task, charged once.",
                             where="header"),),
              errors=(403, 409),
              description="Holds the endpoint's price; the task is charged only if it succeeds.")
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
            # The router tries each in turn: the busiest first (runs, then task reads).
            Route("/run/{slug:path}", run, methods=["POST"]),
            *task_routes(gw, render_task, STATUS),
            Route("/endpoints", list_endpoints, methods=["GET"]),
            Route("/endpoints/{slug:path}", get_endpoint, methods=["GET"]),
            *account_routes(gw),
        ],
        render_error,
    )
