"""What every dialect shares: a sub-application whose errors come out in that dialect's envelope."""

from __future__ import annotations

import asyncio
from urllib.parse import parse_qsl
from typing import TYPE_CHECKING, Any, Callable, Sequence

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route, Router
from starlette.types import ASGIApp, Receive, Scope, Send

from tidehub.api.openapi import INTEGER, STRING, TIME, Param, describe, nullable, obj, ref
from tidehub.api.edge import UNEXPECTED
from tidehub.api.events import EventStreamResponse, last_event_id, server_sent_events, wait_seconds
from tidehub.api.requests import authenticate, body_ended
from tidehub.api.responses import JSONResponse, iso
from tidehub.errors import TidehubError

if TYPE_CHECKING:
    from tidehub.gateway import Gateway

# Renders (status, code, message, field) as a dialect's error body.
ErrorRenderer = Callable[[int, str, str, str | None], Any]

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


def task_routes(gw: "Gateway", render_task: Callable[[dict[str, Any]], Any],
                statuses: dict[str, str]) -> list[Route]:
    """Reading, following and cancelling a task: the same in every dialect but for how a task and
    its statuses (``statuses``: internal status -> the dialect's word) are shown."""

    @describe("A task: its status, progress and, once finished, its result", tag="Tasks", ok=ref("Task"),
              errors=(400, 404), query=(Param("wait", INTEGER, "Answer as soon as the task is finished, or after "
                                                               "this many seconds (at most 60)."),))
    async def get_task(request: Request) -> JSONResponse:
        principal = await authenticate(gw.auth, request)
        task_id = request.path_params["task_id"]
        wait = wait_seconds(request.query_params.get("wait")) if request.scope["query_string"] else 0
        if wait:
            return JSONResponse(render_task(await gw.events.wait(principal, task_id, wait)))
        return JSONResponse(render_task(await gw.tasks.get(principal, task_id)))

    @describe("Follow a task as Server-Sent Events", tag="Tasks", errors=(400, 404),
              ok_content={"text/event-stream": {"schema": {**STRING, "description": (
                  "Events `status`, `progress`, `queue` and `log` as they happen, then one `task` event "
                  "whose data is the whole task, then the stream ends.")}}},
              headers=(Param("Last-Event-ID", STRING, "Resume after this event id (from a dropped stream).",
                             where="header"),),
              description="Each event has an id; reconnect with Last-Event-ID to resume where the stream stopped.")
    async def task_events(request: Request) -> Response:
        principal = await authenticate(gw.auth, request)
        after = last_event_id(request.headers.get("last-event-id"))
        task_id = request.path_params["task_id"]
        events = await gw.events.follow(principal, task_id, after)
        return EventStreamResponse(server_sent_events(events, render_task, statuses, task_id))

    @describe("Cancel a task", tag="Tasks", ok=ref("Task"), errors=(404, 409),
              description="Its hold is released; a task already finished cannot be cancelled (409).")
    async def cancel_task(request: Request) -> JSONResponse:
        principal = await authenticate(gw.auth, request)
        return JSONResponse(render_task(await gw.tasks.cancel(principal, request.path_params["task_id"])))

    return [
        Route("/tasks/{task_id}", get_task, methods=["GET"]),
        Route("/tasks/{task_id}/events", task_events, methods=["GET"]),
        Route("/tasks/{task_id}/cancel", cancel_task, methods=["POST"]),
    ]


def account_routes(gw: "Gateway") -> list[Route]:
    """Balance and usage, the same in the Hub and MS dialects."""

    @describe("The account's balance", tag="Account", ok=obj({
        "account_id": STRING, "key_id": STRING, "balance": INTEGER, "held": INTEGER, "spent": INTEGER,
        "total_added": INTEGER}), errors=(404,))
    async def account(request: Request) -> JSONResponse:
        principal = await authenticate(gw.auth, request)
        balance = await gw.accounts.balance(principal)
        return JSONResponse({"account_id": principal.account_id, "key_id": principal.key_id, **balance.as_dict()})

    @describe("Usage, grouped by day, model or user_identifier", tag="Account", errors=(422,), query=(
        Param("group_by", {"type": "string", "enum": ["day", "model", "user_identifier"], "default": "day"}),
        Param("from", STRING, "Epoch seconds or an ISO date or date-time (UTC unless it says)."),
        Param("to", STRING, "Epoch seconds or an ISO date or date-time, exclusive."),
        Param("model", STRING), Param("user_identifier", STRING), Param("key_id", STRING),
    ), ok=obj({"group_by": STRING, "data": {"type": "array", "items": {
        "type": "object", "required": ["tasks", "succeeded", "credits", "held"],
        "properties": {"tasks": INTEGER, "succeeded": INTEGER, "credits": INTEGER, "held": INTEGER}}},
        "totals": obj({"tasks": INTEGER, "succeeded": INTEGER, "credits": INTEGER, "held": INTEGER})}))
    async def usage(request: Request) -> JSONResponse:
        principal = await authenticate(gw.auth, request)
        return JSONResponse(await gw.accounts.usage(principal, dict(request.query_params)))

    @describe("The latest usage records (one per task or relayed call)", tag="Account", ok=obj({
        "data": {"type": "array", "items": obj({
            "task_id": STRING, "key_id": nullable(STRING), "user_identifier": nullable(STRING), "model": STRING,
            "endpoint": STRING, "channel": nullable(STRING), "status": STRING, "credits_held": INTEGER,
            "credits_captured": INTEGER, "created_at": TIME, "finished_at": nullable(TIME)})}}))
    async def records(request: Request) -> JSONResponse:
        principal = await authenticate(gw.auth, request)
        rows = await gw.accounts.records(principal)
        return JSONResponse({"data": [
            {"task_id": r["id"], "key_id": r["key_id"], "user_identifier": r["user_identifier"], "model": r["model"],
             "endpoint": r["endpoint"], "channel": r["adapter"], "status": r["status"], "credits_held": r["held"],
             "credits_captured": r["captured"], "created_at": iso(r["created_at"]), "finished_at": iso(r["finished_at"])}
            for r in rows
        ]})

    @describe("The account's webhook signing secret (POST: a new one)", tag="Webhooks",
              ok=obj({"secret": STRING, "rotated": {"type": "boolean"}}))
    async def webhook_secret(request: Request) -> JSONResponse:
        principal = await authenticate(gw.auth, request)
        rotate = request.method == "POST"
        return JSONResponse({"secret": await gw.webhooks.secret(principal, rotate=rotate), "rotated": rotate})

    @describe("Webhook deliveries and their attempts", tag="Webhooks",
              query=(Param("task_id", STRING, "Only this task's deliveries."),), ok=obj({
                  "data": {"type": "array", "items": obj({
                      "id": STRING, "task_id": STRING, "url": STRING, "status": STRING, "attempts": INTEGER,
                      "next_attempt_at": nullable(TIME), "last_status_code": nullable(INTEGER),
                      "last_error": nullable(STRING), "created_at": TIME, "delivered_at": nullable(TIME),
                      "attempt_log": {"type": "array", "items": obj({
                          "attempt": INTEGER, "at": TIME, "status_code": nullable(INTEGER),
                          "error": nullable(STRING), "duration_ms": nullable(INTEGER)})}})}}))
    async def deliveries(request: Request) -> JSONResponse:
        principal = await authenticate(gw.auth, request)
        rows = await gw.webhooks.deliveries(principal, request.query_params.get("task_id"))
        return JSONResponse({"data": [
            {"id": r["id"], "task_id": r["task_id"], "url": r["url"], "status": r["status"], "attempts": r["attempts"],
             "next_attempt_at": iso(r["next_attempt_at"]) if r["status"] == "pending" else None,
             "last_status_code": r["last_status_code"], "last_error": r["last_error"],
             "created_at": iso(r["created_at"]), "delivered_at": iso(r["delivered_at"]),
             "attempt_log": [{"attempt": a["attempt"], "at": iso(a["at"]), "status_code": a["status_code"],
                              "error": a["error"], "duration_ms": a["duration_ms"]} for a in r["attempt_log"]]}
            for r in rows
        ]})

    @describe("Send a delivery again", tag="Webhooks", errors=(404,),
              ok=obj({"id": STRING, "status": {"type": "string", "const": "pending"}}))
    async def redeliver(request: Request) -> JSONResponse:
        principal = await authenticate(gw.auth, request)
        await gw.webhooks.redeliver(principal, request.path_params["delivery_id"])
        return JSONResponse({"id": request.path_params["delivery_id"], "status": "pending"})

    return [
        Route("/webhooks/secret", webhook_secret, methods=["GET"]),
        Route("/webhooks/secret/rotate", webhook_secret, methods=["POST"]),
        Route("/webhooks/deliveries", deliveries, methods=["GET"]),
        Route("/webhooks/deliveries/{delivery_id}/redeliver", redeliver, methods=["POST"]),
        Route("/account", account, methods=["GET"]),
        Route("/usage", usage, methods=["GET"]),
        Route("/usage/records", records, methods=["GET"]),
    ]


class Dispatch:
    """A fast path in front of the gateway's router for its dialects' mounts: a request whose path
    lies under one goes straight to that dialect's app; anything else (the API documents in
    ``exact``, which sit under the dialects' prefixes, included) goes on to ``app``.

    The same child scope as the router would make (``root_path`` moved on, ``scope["route"]`` the
    mount), but found by prefix rather than by trying each route's pattern in turn, and in front of
    the outer app's error layers, which the dialects have of their own: every request pays for the
    routing, so it is kept to a few string comparisons. A path with a newline (``%0A`` in an id)
    reaches its dialect too, where a mount's pattern (``.*``) would stop at it.
    """

    def __init__(self, app: ASGIApp, mounts: Sequence[Mount], exact: frozenset[str] = frozenset()) -> None:
        self.app = app
        self.exact = exact
        # Longest first, so that no prefix shadows a longer one that starts with it.
        self.mounts = [(mount.path + "/", mount) for mount in sorted(mounts, key=lambda m: -len(m.path))]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            root_path = scope.get("root_path", "")
            path = scope["path"]
            route_path = path[len(root_path):] if root_path and path.startswith(root_path) else path
            if route_path not in self.exact:
                for prefix, mount in self.mounts:
                    if route_path.startswith(prefix):
                        scope["route"] = mount
                        scope.update(app_root_path=scope.get("app_root_path", root_path),
                                     root_path=root_path + mount.path, endpoint=mount.app,
                                     path_params=dict(scope.get("path_params", {})))
                        await mount.app(scope, receive, send)
                        return
        await self.app(scope, receive, send)


#: How much of a refused body is read and thrown away so that the client, still sending, gets the
#: 413 rather than a reset connection; past this the connection is closed instead.
DRAIN_BYTES = 8 * 1024 * 1024


async def drained(request: Request, limit: int = DRAIN_BYTES, timeout: float = 5.0) -> bool:
    """Read and discard what is left of the request body, up to ``limit`` bytes; whether it ended."""
    if body_ended(request):
        return True
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        return False
    size = 0
    try:
        async with asyncio.timeout(timeout):
            while True:
                message = await request.receive()
                if message["type"] != "http.request":
                    return False
                size += len(message.get("body", b""))
                if not message.get("more_body", False):
                    return True
                if size > limit:
                    return False
    except TimeoutError:
        return False


def dialect_app(routes: Sequence[BaseRoute], render: ErrorRenderer, statuses: dict[int, int] | None = None,
                handlers: dict[type[Exception], Callable[..., Any]] | None = None) -> DialectApp:
    """``statuses`` renumbers statuses where the dialect's clients expect others (OpenAI's 400 for a
    422); ``handlers`` answer some errors the dialect's own way (the most specific class wins)."""
    statuses = statuses or {}

    async def on_tidehub_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, TidehubError)
        status = statuses.get(exc.status, exc.status)
        retry_after = exc.details.get("retry_after")
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
        if status == 413 and not await drained(request):
            # More of the body is still coming: end the connection rather than read it all.
            headers["Connection"] = "close"
        return JSONResponse(render(status, exc.code, exc.message, exc.field), status_code=status, headers=headers)

    async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404:
            message = f"no such route: {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
        else:
            message = str(exc.detail)
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        return JSONResponse(render(exc.status_code, code, message, None), status_code=exc.status_code,
                            headers=exc.headers)

    def on_unexpected() -> Response:
        return JSONResponse(render(500, "internal_error", "an internal error occurred; it has been logged", None),
                            status_code=500)

    def on_nul(field: str) -> Response:
        message = f"{field}: contains a NUL character (U+0000), which no field may hold"
        return JSONResponse(render(400, "invalid_input", message, field), status_code=400)

    return DialectApp(routes, {TidehubError: on_tidehub_error, HTTPException: on_http_error, **(handlers or {})},
                      on_unexpected, on_nul)


class DialectApp:
    """A dialect's routes behind its error handling: a NUL character in the URL refused, the
    dialect's handlers for Tidehub's and Starlette's errors, and its answer to an unexpected error
    (left in the scope for the request's edge, api/edge.py, which logs the error and answers), all
    in its envelope.

    What ``Starlette(routes, exception_handlers)`` would build, with less on the way: an endpoint's
    own wrapper (Starlette's ``request_response``) finds the handlers in the scope and answers
    whatever its endpoint raises, so around the router only the router's own errors are left (no
    such route, a method not allowed), which it raises before anything is sent. Starlette's
    ExceptionMiddleware would wrap every request a second time for those.
    """

    def __init__(self, routes: Sequence[BaseRoute], handlers: dict[type[Exception], Callable[..., Any]],
                 on_unexpected: Callable[[], Response], on_nul: Callable[[str], Response]) -> None:
        self.router = Router(routes=list(routes))
        # The router's own errors are plain HTTPExceptions (404, 405).
        self.on_router_error = handlers[HTTPException]
        # As ExceptionMiddleware keeps them: (exception class -> handler, status code -> handler).
        self._tables: tuple[dict[Any, Any], dict[int, Any]] = (handlers, {})
        self.on_unexpected = on_unexpected
        self.on_nul = on_nul

    @property
    def routes(self) -> list[BaseRoute]:
        return self.router.routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.router(scope, receive, send)
            return
        scope[UNEXPECTED] = self.on_unexpected
        field = nul_in_url(scope)
        if field is not None:
            await self.on_nul(field)(scope, receive, send)
            return
        scope["starlette.exception_handlers"] = self._tables
        try:
            await self.router(scope, receive, send)
        except HTTPException as exc:  # the router's: nothing has been sent
            await (await self.on_router_error(Request(scope, receive), exc))(scope, receive, send)


def nul_in_url(scope: Scope) -> str | None:
    """Where a NUL character is in the URL: ``path``, or the query parameter holding one.

    No id, filter or label holds one, and PostgreSQL's text columns cannot even be compared with
    one: left alone, ``/tasks/%00`` would fail in the database instead of being the client's mistake.
    (JSON bodies are checked where they are read, in ``read_json_object``.)
    """
    if "\x00" in scope["path"]:
        return "path"
    if b"%00" in scope["query_string"]:
        return next((name for name, value in parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
                     if "\x00" in name or "\x00" in value), None)
    return None
