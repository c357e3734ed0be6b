"""OpenAPI 3.1 documents of the dialects, made from their routes and the catalog.

Each route's handler carries a small :class:`Operation` (set with :func:`describe`, beside the
route): its summary, query parameters, request body, answer and error statuses. A document walks a
dialect's routes, turns each into an operation, and fills in what the catalog knows: a model's
``input_schema`` becomes its request body, its examples the body's examples. One document per
dialect is built on first request and kept until the catalog object changes.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

if TYPE_CHECKING:
    from tidehub.catalog import Endpoint
    from tidehub.gateway import Gateway

Schema = dict[str, Any]
#: A request body's ``content`` (media type -> media type object), built from the gateway (its
#: catalog) and, for an expanded route, the value of its last path parameter.
BodyMaker = Callable[["Gateway", "str | None"], dict[str, Any]]

#: What each error status means to a client; every document uses these words.
ERROR_STATUSES = {
    400: "The request is malformed: not JSON, not an object, nested too deep, or a field of the wrong kind.",
    401: "No API key, or one that is unknown, revoked or expired.",
    403: "The key may not do this: not enough credits, spending cap reached, model or address not allowed.",
    404: "No such task, model or endpoint (or it belongs to another account).",
    409: "The same Idempotency-Key was used with another body, or the task is already finished.",
    413: "The request body is larger than the gateway accepts.",
    415: "The body is not of the content type this operation takes.",
    422: "The input does not match the schema: the error names the field and the reason.",
    429: "Too many failed attempts from this address, or the upstream is rate limiting: see Retry-After.",
    502: "Every upstream attempt failed.",
    503: "No channel can serve this model right now: see Retry-After.",
}
#: Every operation that needs a key can answer these.
AUTH_ERRORS = (401, 429)
#: And every one that reads a JSON body these.
BODY_ERRORS = (400, 413, 415, 422)


@dataclass(frozen=True)
class Param:
    name: str
    schema: Schema
    description: str = ""
    required: bool = False
    where: str = "query"

    def render(self) -> dict[str, Any]:
        out = {"name": self.name, "in": self.where, "required": self.required or self.where == "path",
               "schema": self.schema}
        if self.description:
            out["description"] = self.description
        return out


@dataclass(frozen=True)
class Operation:
    """What a document says of one route: kept beside the route's handler (see :func:`describe`)."""

    summary: str
    #: The 200 answer: a JSON schema, or a whole ``content`` map when it is not (only) JSON.
    ok: Schema | None = None
    ok_content: dict[str, Any] | None = None
    description: str = ""
    tag: str = ""
    #: The request body's ``content`` map, or a maker of it from the catalog.
    body: dict[str, Any] | BodyMaker | None = None
    query: tuple[Param, ...] = ()
    #: Path parameters, by name; each is a string unless given here.
    path: dict[str, Param] = field(default_factory=dict)
    headers: tuple[Param, ...] = ()
    #: Error statuses beyond the ones every authenticated (and body-reading) operation has.
    errors: tuple[int, ...] = ()
    #: Statuses whose body is not the dialect's error envelope, with their schema.
    answers: dict[int, Schema] = field(default_factory=dict)
    #: No key needed.
    public: bool = False
    #: One path per value of the route's last path parameter (a capability, an endpoint slug),
    #: each with a request body of its own; a value the catalog gives no body is left out.
    expand: Callable[["Gateway"], Iterable[str]] | None = None
    #: The summary of one expanded path, from its value (a model's title, say).
    label: Callable[["Gateway", str], str] | None = None
    operation_id: str = ""


def describe(summary: str, **details: Any) -> Callable[[Any], Any]:
    """Decorates a route's handler with its :class:`Operation`."""

    def mark(handler: Any) -> Any:
        handler.openapi = Operation(summary, **details)
        return handler

    return mark


def operation_of(route: BaseRoute) -> Operation | None:
    return getattr(getattr(route, "endpoint", None), "openapi", None)


# -- schema pieces ---------------------------------------------------------------------------------

def nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


def obj(properties: dict[str, Schema], required: Iterable[str] | None = None, **more: Any) -> Schema:
    """An object with these properties, all required unless ``required`` says which."""
    return {"type": "object", "properties": properties,
            "required": list(properties if required is None else required), **more}


STRING = {"type": "string"}
INTEGER = {"type": "integer"}
NUMBER = {"type": "number"}
BOOLEAN = {"type": "boolean"}
TIME = {"type": "string", "format": "date-time"}
ANY: Schema = {}


def json_content(schema: Schema, examples: dict[str, Any] | None = None) -> dict[str, Any]:
    media: dict[str, Any] = {"schema": schema}
    if examples:
        media["examples"] = examples
    return {"application/json": media}


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def task_endpoints(gw: "Gateway") -> list["Endpoint"]:
    """The catalog entries a task can run (the others take uploaded files: only the relay has them)."""
    return [ep for ep in gw.catalog.endpoints.values() if not ep.relay_only]


def example_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "example"


def with_model(schema: Schema, models: Sequence[str]) -> Schema:
    """A catalog input schema with a required ``model`` field naming one of ``models`` (the relay's
    bodies: the model sits beside the inputs, not above them)."""
    out = copy.deepcopy(schema)
    model = {"type": "string", "enum": list(models)} if len(models) > 1 else {"type": "string", "const": models[0]}
    out["properties"] = {"model": model, **(out.get("properties") or {})}
    out["required"] = ["model", *(r for r in out.get("required", []) if r != "model")]
    return out


def grouped_by_schema(items: Iterable[tuple[str, Schema]]) -> list[tuple[list[str], Schema]]:
    """Names that share one identical schema, grouped, in first-seen order: a catalog where twenty
    models take the same input gives one variant naming twenty, not twenty copies."""
    groups: dict[bytes, tuple[list[str], Schema]] = {}
    for name, schema in items:
        key = orjson.dumps(schema, option=orjson.OPT_SORT_KEYS)
        groups.setdefault(key, ([], schema))[0].append(name)
    return list(groups.values())


def one_of(variants: list[Schema]) -> Schema:
    return variants[0] if len(variants) == 1 else {"oneOf": variants}


# -- documents -------------------------------------------------------------------------------------

@dataclass
class Part:
    """Routes of one mounted app, under ``prefix`` relative to the document's server URL (less
    ``strip``, for routes mounted with their whole path)."""

    prefix: str
    routes: Sequence[BaseRoute]
    tag: str = ""
    strip: str = ""


@dataclass
class Spec:
    """One dialect's document: where it is served, what it covers, its own components (error
    envelope, task shape)."""

    name: str
    url: str
    title: str
    description: str
    servers: list[str]
    parts: list[Part]
    #: The error envelope's schema, or the name of the component in ``components`` that is.
    error: Schema | str
    components: dict[str, Schema] = field(default_factory=dict)


_CONVERTOR = re.compile(r"\{(\w+)(?::\w+)?\}")


def build(spec: Spec, gw: "Gateway", version: str) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    tags: dict[str, None] = {}
    error = ref(spec.error if isinstance(spec.error, str) else "Error")
    for part in spec.parts:
        for route in part.routes:
            op = operation_of(route)
            if op is None or not isinstance(route, Route):
                continue
            methods = sorted((route.methods or set()) - {"HEAD"})
            template = part.prefix + _CONVERTOR.sub(r"{\1}", route.path.removeprefix(part.strip))
            tag = op.tag or part.tag
            if tag:
                tags[tag] = None
            for method in methods:
                for path, value, body in _expanded(op, template, gw):
                    summary = op.label(gw, value) if op.label and value is not None else op.summary
                    paths.setdefault(path, {})[method.lower()] = _operation(op, summary, method, path, body, tag,
                                                                            error)
    return {
        "openapi": "3.1.0",
        "info": {"title": spec.title, "version": version, "description": spec.description},
        "servers": [{"url": url} for url in spec.servers],
        "tags": [{"name": t} for t in tags],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "An API key: `Authorization: Bearer <key>`."}},
            "schemas": {**({} if isinstance(spec.error, str) else {"Error": spec.error}), **spec.components},
        },
    }


def _expanded(op: Operation, template: str, gw: "Gateway") -> Iterable[tuple[str, str | None, dict[str, Any] | None]]:
    if op.expand is None:
        body = op.body(gw, None) if callable(op.body) else op.body
        yield template, None, body
        return
    last = list(_CONVERTOR.finditer(template))[-1]
    for value in op.expand(gw):
        body = op.body(gw, value) if callable(op.body) else op.body
        if op.body is not None and not body:
            continue
        yield template[:last.start()] + value + template[last.end():], value, body


def _operation(op: Operation, summary: str, method: str, path: str, body: dict[str, Any] | None, tag: str,
               error: Schema) -> dict[str, Any]:
    out: dict[str, Any] = {"summary": summary, "operationId": _operation_id(op, method, path)}
    if op.description:
        out["description"] = op.description
    if tag:
        out["tags"] = [tag]
    parameters = [op.path.get(name, Param(name, STRING, where="path")).render()
                  for name in re.findall(r"\{(\w+)\}", path)]
    parameters += [p.render() for p in (*op.query, *op.headers)]
    if parameters:
        out["parameters"] = parameters
    if body:
        out["requestBody"] = {"required": True, "content": body}
    ok = op.ok_content or json_content(op.ok if op.ok is not None else ANY)
    responses: dict[str, Any] = {"200": {"description": "OK", "content": ok}}
    statuses = set(op.errors) | set(op.answers)
    if not op.public:
        statuses.update(AUTH_ERRORS)
        out["security"] = [{"bearer": []}]
    else:
        out["security"] = []
    if body and any(media == "application/json" or media.startswith("multipart/") for media in body):
        statuses.update(BODY_ERRORS)
    for status in sorted(statuses):
        response: dict[str, Any] = {"description": ERROR_STATUSES.get(status, "Error"),
                                    "content": json_content(op.answers.get(status, error))}
        if status in (429, 503):
            response["headers"] = {"Retry-After": {"description": "Seconds to wait before trying again.",
                                                   "schema": INTEGER}}
        responses[str(status)] = response
    out["responses"] = responses
    return out


def _operation_id(op: Operation, method: str, path: str) -> str:
    words = re.sub(r"[{}]", "", path).strip("/").replace("/", "_")
    return f"{method.lower()}_{re.sub(r'[^A-Za-z0-9_]+', '_', words)}".strip("_")


# -- serving ---------------------------------------------------------------------------------------

class Documents:
    """The documents, each built on first request and kept while the gateway's catalog is the same
    object (a catalog load makes a new one)."""

    def __init__(self, gw: "Gateway", specs: Sequence[Spec], version: str) -> None:
        self.gw = gw
        self.specs = {spec.name: spec for spec in specs}
        self.version = version
        self._cache: dict[str, tuple[object, bytes]] = {}

    def document(self, name: str) -> dict[str, Any]:
        return orjson.loads(self.rendered(name))

    def rendered(self, name: str) -> bytes:
        catalog = self.gw.catalog
        cached = self._cache.get(name)
        if cached is None or cached[0] is not catalog:
            cached = (catalog, orjson.dumps(build(self.specs[name], self.gw, self.version)))
            self._cache[name] = cached
        return cached[1]

    def routes(self) -> list[Route]:
        """``GET <url>`` for each document, no key needed."""
        out = []
        for spec in self.specs.values():
            async def serve(request: Request, name: str = spec.name) -> Response:
                return Response(self.rendered(name), media_type="application/json",
                                headers={"Cache-Control": "no-cache"})
            out.append(Route(spec.url, serve, methods=["GET"]))
        return out


def load_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))
