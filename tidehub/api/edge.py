"""What every HTTP request passes through on its way in and out, whatever the dialect: its work
context (core/context.py) with the request's id (the client's ``X-Request-Id`` when it is short
and plain, else a new one; returned on every answer), the rate-limit headers of the key it used,
the request's count and latency for the metrics (by dialect, route template and status), and,
with ``TIDEHUB_ACCESS_LOG``, one log line.

A plain ASGI middleware (no BaseHTTPMiddleware: that would run each request in a task of its
own and copy the body), outermost, so every answer carries the headers, errors included.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

from starlette.routing import Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tidehub.core import context, ids, metrics
from tidehub.core.context import WorkContext
from tidehub.errors import clipped

log = logging.getLogger("tidehub.access")

#: The dialect each mount is, for the metrics' labels; routes outside a mount are the gateway's own.
DIALECTS = {"/v1": "openai", "/api/relay/v1": "openai", "/hub/v1": "hub", "/ms/v1": "ms", "/api/user": "quota",
            "/api/video": "video-hub", "/admin/v1": "admin", "/console": "console", "": "gateway"}
_CONVERTER = re.compile(r":\w+}")  # /{slug:path} reads /{slug}
_METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"}

#: A client's X-Request-Id is kept when it is this sane; otherwise one is made.
_SANE_ID = re.compile(rb"[A-Za-z0-9._:/+=@-]{1,128}")


def request_id_of(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            if _SANE_ID.fullmatch(value):
                return value.decode("ascii")
            break
    return ids.request_id()


def route_of(route: Any, mount: str) -> tuple[str, str]:
    """(dialect, route template) of a request the app has routed: ``/hub/v1/tasks/{task_id}``,
    never the raw path, so the metrics' labels stay few."""
    path = getattr(route, "path", None)
    if path is None:
        return "none", "<unmatched>"
    if isinstance(route, Mount):  # the mount matched, none of its routes did
        return DIALECTS.get(mount, "other"), mount + "/<unmatched>"
    return DIALECTS.get(mount, "other"), mount + _CONVERTER.sub("}", path)


class RequestEdge:
    def __init__(self, app: ASGIApp, *, measure: bool = True, access_log: bool = False) -> None:
        self.app = app
        self.measure = measure
        self.access_log = access_log
        # The metrics' children by label values: cheaper than prometheus-client's labels() each time.
        self._children: dict[tuple[int, str, str, int], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ctx = WorkContext(request_id=request_id_of(scope))
        token = context.current.set(ctx)
        started = time.perf_counter()
        status = 500

        async def send_out(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", ()))
                headers.append((b"x-request-id", ctx.request_id.encode()))  # type: ignore[union-attr]
                rate = ctx.rate
                if rate is not None:
                    headers += [(b"x-ratelimit-limit", b"%d" % rate.limit),
                                (b"x-ratelimit-remaining", b"%d" % rate.remaining),
                                (b"x-ratelimit-reset", b"%d" % rate.reset_s)]
                message = {**message, "headers": headers}  # the app's own message stays as it was
            await send(message)

        try:
            await self.app(scope, receive, send_out)
        finally:
            seconds = time.perf_counter() - started
            if self.access_log:
                # The path as sent (clipped), never a header or a body: no secret travels there.
                log.info("%s %s %d %.1f ms", scope["method"][:10], clipped(scope["path"], 200), status,
                         seconds * 1000, extra={"status": status, "duration_ms": round(seconds * 1000, 1)})
            context.current.reset(token)
            if self.measure:
                self._count(scope, status, seconds)

    def _count(self, scope: Scope, status: int, seconds: float) -> None:
        # Routes (by identity: they live as long as the app) and mounts are few: a small key space.
        mount = scope.get("root_path", "")[len(scope.get("app_root_path", "")):]
        method = scope["method"] if scope["method"] in _METHODS else "other"
        matched = scope.get("route")
        key = (id(matched), mount, method, status)
        children = self._children.get(key)
        if children is None:
            dialect, route = route_of(matched, mount)
            children = (metrics.http_requests.labels(dialect, route, method, str(status)),
                        metrics.http_latency.labels(dialect, route))
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)
