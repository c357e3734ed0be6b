"""The console's Starlette sub-application: routes from each page module, the session loaded for
every request, errors shown as pages, the static files, and the security headers over all of it."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from tidehub.console.rendering import Renderer, json_response, make_environment, wants_json
from tidehub.console.security import COOKIE, SecurityHeaders, files_origin, set_login_cookie
from tidehub.errors import TidehubError
from tidehub.gateway import Gateway

log = logging.getLogger("tidehub.console")
STATIC = Path(__file__).parent / "static"


@dataclass
class Console:
    """What every page module gets: the gateway (its services and store) and the renderer."""

    gw: Gateway
    render: Renderer


class LoadSession:
    """Resolves the session cookie once per request into ``request.state.session`` (None when
    signed out), before any route runs. Static files need none."""

    def __init__(self, app: ASGIApp, gw: Gateway) -> None:
        self.app = app
        self.gw = gw

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            state = scope.setdefault("state", {})
            state["session"] = None
            if "/static/" not in scope["path"]:
                token = Request(scope).cookies.get(COOKIE)
                if token:
                    state["session"] = await self.gw.sessions.resolve(token)
        await self.app(scope, receive, send)


def create_console_app(gw: Gateway) -> ASGIApp:
    from tidehub.console.pages import all_routes

    console = Console(gw, Renderer(make_environment(), gw.settings))

    def error_page(request: Request, status: int, code: str, message: str, field: str | None = None,
                   headers: dict[str, str] | None = None) -> Response:
        if wants_json(request) or request.headers.get("hx-request"):
            if not request.headers.get("hx-request"):
                return json_response({"error": {"code": code, "message": message, "field": field}}, status, headers)
            # htmx swaps this fragment in place of what the action would have shown.
            return console.render.html(request, "_error.html", {"status": status, "code": code, "message": message},
                                       status, headers)
        response = console.render.html(request, "error.html", {"status": status, "code": code, "message": message},
                                       status, headers)
        set_login_cookie(response, request, gw.settings.public_url)
        return response

    async def on_tidehub_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, TidehubError)
        retry = exc.details.get("retry_after")
        return error_page(request, exc.status, exc.code, exc.message, exc.field,
                          {"Retry-After": str(retry)} if retry is not None else None)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        message = {404: "there is no such page", 405: f"{request.method} is not allowed here"}.get(
            exc.status_code, str(exc.detail))
        return error_page(request, exc.status_code, {404: "not_found", 405: "method_not_allowed"}.get(
            exc.status_code, "http_error"), message)

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_page(request, 500, "internal_error", "something went wrong on our side; it has been logged")

    app = Starlette(
        routes=[*all_routes(console), Mount("/static", app=StaticFiles(directory=STATIC), name="static")],
        exception_handlers={TidehubError: on_tidehub_error, HTTPException: on_http_error, Exception: on_unexpected},
    )
    return SecurityHeaders(LoadSession(app, gw), files_origin(gw.settings.base_url))
