"""The Hub dialect: one submit endpoint per capability, tasks polled until ``ready``."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.routing import Route

from tidehub.api.dialect import DialectApp, account_routes, dialect_app, task_routes
from tidehub.api.openapi import (
    BOOLEAN, INTEGER, STRING, TIME, Param, describe, grouped_by_schema, json_content, nullable, obj, one_of,
    task_endpoints,
)
from tidehub.api.requests import authenticate, idempotency_key, optional_label, optional_url, read_json_object, required
from tidehub.api.responses import JSONResponse, iso
from tidehub.catalog import CAPABILITIES, HubModel
from tidehub.errors import BadRequest, InvalidInput, NotFound
from tidehub.gateway import Gateway

STATUS = {
    "queued": "pending",
    "running": "processing",
    "succeeded": "completed",
    "failed": "failed",
    "timeout": "timeout",
    "canceled": "cancelled",
}


def render_error(status: int, code: str, message: str, field: str | None) -> dict[str, Any]:
    return {"error_code": code, "error_message": message, "field": field}


def render_task(task: dict[str, Any]) -> dict[str, Any]:
    status = STATUS[task["status"]]
    return {
        "task_id": task["id"],
        "model": task["model"],
        "capability": task["capability"],
        "mode": task["mode"],
        "status": status,
        "ready": status in ("completed", "failed", "timeout", "cancelled"),
        "progress": task["progress"],
        "queue_position": task["queue_position"],
        "data": task["output"],
        "error_code": task["error_code"],
        "error_message": task["error_message"],
        "logs": task.get("logs") or [],
        "created_at": iso(task["created_at"]),
        "updated_at": iso(task["updated_at"]),
        "completed_at": iso(task["finished_at"]),
    }


#: The shapes a Hub document shows (``render_error``, ``render_task`` and the submit answer).
ERROR_SCHEMA = obj({"error_code": STRING, "error_message": STRING, "field": nullable(STRING)})
TASK_SCHEMA = obj({
    "task_id": STRING, "model": STRING, "capability": STRING, "mode": STRING,
    "status": {"type": "string", "enum": list(STATUS.values())},
    "ready": {**BOOLEAN, "description": "Whether the task is finished (completed, failed, timeout or cancelled)."},
    "progress": {**INTEGER, "minimum": 0, "maximum": 100},
    "queue_position": nullable(INTEGER),
    "data": {"description": "The result (the model's output_schema) once completed; null before."},
    "error_code": nullable(STRING), "error_message": nullable(STRING),
    "created_at": TIME, "updated_at": TIME, "completed_at": nullable(TIME),
})
MODEL_SCHEMA = obj({
    "id": STRING, "capability": STRING, "vendor": STRING, "description": STRING,
    "tags": {"type": "array", "items": STRING}, "modes": {"type": "array", "items": STRING},
    "price": {"type": "object", "description": "The price rule (credits per unit, factors)."},
})
MODEL_DETAIL_SCHEMA = {**MODEL_SCHEMA, "properties": {
    **MODEL_SCHEMA["properties"],
    "input_schema": {"type": "object"}, "output_schema": {"type": "object"},
    "example": obj({"model": STRING, "input": {"type": "object"}}),
    "example_price": nullable(INTEGER),
    "mode_schemas": {"type": "array", "items": {"type": "object"}},
}, "required": [*MODEL_SCHEMA["required"], "input_schema", "output_schema", "example", "example_price"]}


def submit_body(gw: Gateway, capability: str | None) -> dict[str, Any]:
    """``{model, input}`` for every Hub model of ``capability``: one variant per distinct input
    schema (several modes of one id: any of theirs), with the catalog's first example of each."""
    runnable = set(task_endpoints(gw))
    models = [(m, [e for e in m.endpoints if e in runnable]) for m in gw.catalog.hub_models.values()]
    models = [(m, eps) for m, eps in models if eps and eps[0].capability == capability]
    variants = []
    for names, schema in grouped_by_schema((m.id, one_of([e.input_schema for e in eps])) for m, eps in models):
        variants.append(obj({
            "model": {"type": "string", "enum": names},
            "input": schema,
            "webhook_url": {"type": "string", "format": "uri",
                            "description": "POSTed the finished task (Standard Webhooks signature)."},
            "user_identifier": {"type": "string", "minLength": 1, "maxLength": 200,
                                "description": "Your end user's id, kept on the usage record."},
        }, required=["model", "input"]))
    if not variants:
        return {}
    examples = {m.id: {"summary": eps[0].title, "value": {"model": m.id, "input": eps[0].examples[0]}}
                for m, eps in models if eps[0].examples}
    return json_content(one_of(variants), examples)


def render_model(model: HubModel, *, detail: bool) -> dict[str, Any]:
    ep = model.primary
    out: dict[str, Any] = {
        "id": model.id,
        "capability": ep.capability,
        "vendor": ep.vendor,
        "description": ep.description,
        "tags": list(ep.tags),
        "modes": [e.mode for e in model.endpoints],
        "price": ep.price.raw,
    }
    if detail:
        out["input_schema"] = ep.input_schema
        out["output_schema"] = ep.output_schema
        out["example"] = {"model": model.id, "input": ep.examples[0] if ep.examples else {}}
        out["example_price"] = ep.price.quote(ep.examples[0]).credits if ep.examples else None
        if len(model.endpoints) > 1:
            # A multi-mode id picks its mode from the input; show each mode's schema.
            out["mode_schemas"] = [
                {
                    "mode": e.mode,
                    "endpoint": e.slug,
                    "input_schema": e.input_schema,
                    "price": e.price.raw,
                    "example": {"model": model.id, "input": e.examples[0] if e.examples else {}},
                }
                for e in model.endpoints
            ]
    return out


def create_hub_app(gw: Gateway) -> DialectApp:
    limit = gw.settings.max_body_bytes

    @describe("Submit a task", tag="Tasks", body=submit_body, expand=lambda gw: CAPABILITIES,
              label=lambda gw, capability: f"Submit a{'n' if capability[0] in 'aeiou' else ''} {capability} task",
              ok=obj({"task_id": STRING, "taskId": {**STRING, "description": "The same as task_id."},
                      "status": {"type": "string", "enum": list(STATUS.values())}}),
              headers=(Param("Idempotency-Key", {"type": "string", "minLength": 1, "maxLength": 200},
                             "The same key and body within 24 hours give the same task, charged once.",
                             where="header"),),
              errors=(403, 404, 409),
              description="Holds the model's price; the task is charged only if it completes. "
                          "Poll `GET /tasks/{task_id}` until `ready`.")
    async def submit(request: Request) -> JSONResponse:
        capability = request.path_params["capability"]
        if capability not in CAPABILITIES:
            raise NotFound(f"no such route: POST /hub/v1/{capability}; capabilities are {', '.join(CAPABILITIES)}")
        principal = await authenticate(gw.auth, request)
        body = await read_json_object(request, limit)
        name = required(body, "model", str, "a model id string")
        model = gw.catalog.hub_model(name)
        if "input" not in body:
            raise InvalidInput("input: is required", field="input")
        endpoint = model.select(body["input"])
        if endpoint.capability != capability:
            raise BadRequest(
                f"model {name!r} is a {endpoint.capability} model; submit it to POST /hub/v1/{endpoint.capability}",
                code="wrong_capability",
                field="model",
            )
        task = await gw.tasks.submit(
            principal, endpoint, body["input"], id_prefix="hub", model_name=name,
            webhook_url=optional_url(body, "webhook_url"), user_identifier=optional_label(body, "user_identifier"), idempotency_key=idempotency_key(request),
        )
        return JSONResponse({"task_id": task["id"], "taskId": task["id"], "status": STATUS[task["status"]]})

    @describe("List the models", tag="Models",
              query=(Param("capability", {"type": "string", "enum": list(CAPABILITIES)}),), errors=(422,),
              ok=obj({"data": {"type": "array", "items": MODEL_SCHEMA}, "total": INTEGER}))
    async def list_models(request: Request) -> JSONResponse:
        await authenticate(gw.auth, request)
        capability = request.query_params.get("capability")
        if capability is not None and capability not in CAPABILITIES:
            raise InvalidInput(f"capability: must be one of {', '.join(CAPABILITIES)}", field="capability")
        models = [
            render_model(m, detail=False)
            for m in gw.catalog.hub_models.values()
            if capability is None or m.primary.capability == capability
        ]
        return JSONResponse({"data": models, "total": len(models)})

    @describe("A model, with its input schema, an example and its price", tag="Models", ok=MODEL_DETAIL_SCHEMA,
              errors=(404,), path={"model": Param("model", STRING, "A model id from `GET /models`.", where="path",
                                                  example=lambda gw: next(iter(gw.catalog.hub_models), None))})
    async def get_model(request: Request) -> JSONResponse:
        await authenticate(gw.auth, request)
        return JSONResponse(render_model(gw.catalog.hub_model(request.path_params["model"]), detail=True))

    return dialect_app(
        [
            # The router tries each in turn: the busiest first (submits, then task reads).
            Route("/{capability:str}", submit, methods=["POST"]),
            *task_routes(gw, render_task, STATUS),
            *account_routes(gw),
            Route("/models", list_models, methods=["GET"]),
            Route("/models/{model}", get_model, methods=["GET"]),
        ],
        render_error,
    )
