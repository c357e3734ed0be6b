"""What every HTTP request passes through on its way in and out, whatever the dialect: its work
context (core/context.py) with the request's id (the client's ``X-Request-Id`` when it is short
and plain, else a new one; returned on every answer), the rate-limit headers of the key it used,
the request's count and latency for the metrics (by dialect, route template and status), and,
with ``TIDEHUB_ACCESS_LOG``, one log line.

It also has the last word on an exception nothing else handled: logged once, in brief, and
answered with a 500 in the envelope of the app that was answering (each dialect leaves its own
answer in the scope under ``UNEXPECTED``), unless the answer had started, which is then cut short
(the server closes the connection). It stands in for Starlette's ServerErrorMiddleware, which would
answer and then re-raise, so that uvicorn printed the whole traceback a second time and dropped
the connection; and since it already watches the answer go out for its headers, no other layer
has to.

A plain ASGI middleware (no BaseHTTPMiddleware: that would run each request in a task of its
own and copy the body), outermost, so every answer carries the headers, errors included.
"""

from __future__ import annotations

import logging
import re
import time
import traceback
from typing import Any, Callable

from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tidehub.core import context, ids, metrics
from tidehub.core.context import WorkContext
from tidehub.errors import clipped

log = logging.getLogger("tidehub.access")
errors_log = logging.getLogger("tidehub.api")

#: The scope's entry holding the answer (a function making the response) to an unexpected error,
#: set by the app answering the request; without one, a plain-text 500.
UNEXPECTED = "tidehub.on_unexpected"

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
    def __init__(self, app: ASGIApp, *, measure: bool = True, access_log: bool = False,
                 unexpected: Callable[[], Response] = lambda: PlainTextResponse("internal error\n", 500),
                 between: Callable[[ASGIApp], ASGIApp] = lambda app: app) -> None:
        self.app = app
        self.unexpected = unexpected
        # The layers between the edge and the app (CORS), around an answer of the edge's own.
        self.between = between
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
        status = 0  # no answer started yet

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
        except Exception as exc:
            errors_log.error("%s %s failed: %s: %s\n%s", scope.get("method"), clipped(scope.get("path", ""), 200),
                             type(exc).__name__, clipped(str(exc), 500), brief_traceback(exc))
            if not status:
                await self.between(scope.get(UNEXPECTED, self.unexpected)())(scope, receive, send_out)
        finally:
            status = status or 500  # the client left (or the task was cancelled) before any answer
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


def brief_traceback(exc: BaseException, head: int = 4, tail: int = 12) -> str:
    """The traceback with its middle left out: a deep recursion makes thousands of frames."""
    frames = traceback.extract_tb(exc.__traceback__)
    if len(frames) <= head + tail:
        lines = traceback.format_list(frames)
    else:
        lines = [*traceback.format_list(frames[:head]), f"  ... {len(frames) - head - tail} frames left out ...\n",
                 *traceback.format_list(frames[-tail:])]
    return "Traceback (most recent call last):\n" + "".join(lines).rstrip("\n")
