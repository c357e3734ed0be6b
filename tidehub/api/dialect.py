"""What every dialect shares: a sub-application whose errors come out in that dialect's envelope."""

from __future__ import annotations

import logging
from typing import Any, Callable, Sequence

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.routing import BaseRoute

from tidehub.api.responses import JSONResponse
from tidehub.core.errors import TidehubError

log = logging.getLogger("tidehub.api")

# Renders (status, code, message, field) as a dialect's error body.
ErrorRenderer = Callable[[int, str, str, str | None], Any]

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


def dialect_app(routes: Sequence[BaseRoute], render: ErrorRenderer) -> Starlette:
    async def on_tidehub_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, TidehubError)
        return JSONResponse(render(exc.status, exc.code, exc.message, exc.field), status_code=exc.status)

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

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(render(500, "internal_error", "an internal error occurred; it has been logged", None),
                            status_code=500)

    return Starlette(
        routes=list(routes),
        exception_handlers={TidehubError: on_tidehub_error, HTTPException: on_http_error, Exception: on_unexpected},
    )
