"""Models and prices: every catalog endpoint, its input schema as a table, its price rule with an
example price, and the channels that serve it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

from tidehub.console.security import OPERATORS, page
from tidehub.errors import NotFound

if TYPE_CHECKING:
    from tidehub.catalog import Endpoint
    from tidehub.console.app import Console


def routes(c: "Console") -> list[BaseRoute]:
    gw = c.gw

    def serving(endpoint: "Endpoint") -> list[dict[str, Any]]:
        return [{"id": ch.id, "name": ch.name, "adapter": ch.adapter, "upstream_model": model}
                for ch, model in gw.router.serving(endpoint)]

    async def models(request: Request) -> Response:
        capability = request.query_params.get("capability", "")
        rows = []
        for endpoint in gw.catalog.endpoints.values():
            if capability and endpoint.capability != capability:
                continue
            rows.append({**endpoint.summary(), "hub_ids": list(endpoint.hub_ids), "channels": serving(endpoint)})
        rows.sort(key=lambda r: (r["capability"], r["endpoint"]))
        capabilities = sorted({e.capability for e in gw.catalog.endpoints.values()})
        return c.render.page(request, "models.html", {"models": rows, "capability": capability},
                             extra={"capabilities": capabilities})

    async def model(request: Request) -> Response:
        endpoint = gw.catalog.endpoints.get(request.path_params["slug"])
        if endpoint is None:
            raise NotFound(f"no catalog endpoint {request.path_params['slug']!r}", field="slug")
        data = {**endpoint.summary(), "hub_ids": list(endpoint.hub_ids), "channels": serving(endpoint),
                "input_schema": endpoint.input_schema, "examples": endpoint.examples}
        return c.render.page(request, "model.html", data, extra={"fields": schema_rows(endpoint.input_schema)})

    return [
        page("/models", models, roles=OPERATORS),
        page("/models/{slug:path}", model, roles=OPERATORS),
    ]


def schema_rows(schema: dict[str, Any]) -> list[dict[str, Any]]:
    """The input schema's properties as table rows: name, type, required, default, allowed values."""
    required = set(schema.get("required", ()))
    out = []
    for name, spec in (schema.get("properties") or {}).items():
        spec = spec if isinstance(spec, dict) else {}
        kind = spec.get("type")
        if isinstance(kind, list):
            kind = " | ".join(kind)
        if kind == "array" and isinstance(spec.get("items"), dict):
            kind = f"array of {spec['items'].get('type', 'items')}"
        limits = []
        for key, label in (("minimum", "≥"), ("maximum", "≤"), ("minLength", "length ≥"), ("maxLength", "length ≤"),
                           ("minItems", "items ≥"), ("maxItems", "items ≤")):
            if key in spec:
                limits.append(f"{label} {spec[key]}")
        if "enum" in spec:
            limits.append("one of " + ", ".join(str(v) for v in spec["enum"]))
        out.append({"name": name, "type": kind or ("one of several" if "anyOf" in spec or "oneOf" in spec else ""),
                    "required": name in required, "default": spec.get("default"), "limits": "; ".join(limits),
                    "description": spec.get("description", "")})
    return out
