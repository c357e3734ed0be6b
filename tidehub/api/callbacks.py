"""Upstream callbacks: a vendor tells us a job moved. Verified by the channel's adapter (fal: an
ED25519 signature against fal's JWKS), then the task is checked at once through the normal
polling path, which stays the one way a task finishes.

Anyone can reach this route, so it does the cheap checks first: the route exists only when
callbacks are on, a request without the adapter's signature headers is refused before its body is
read, and the body is read with a running count up to ``MAX_CALLBACK_BYTES``.
"""

from __future__ import annotations

import logging
import time

from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from tidehub.gateway import Gateway
from tidehub.core.ports import UpstreamError

#: A callback only nudges a task (the result is fetched by polling): its body is small.
MAX_CALLBACK_BYTES = 4 * 1024 * 1024

log = logging.getLogger("tidehub.api.callbacks")


def callback_routes(gw: Gateway) -> list[Route]:
    if not gw.settings.upstream_callbacks:
        return []  # no callback URL was ever handed out: nothing to listen for

    async def callback(request: Request) -> PlainTextResponse:
        adapter = gw.router.adapter(request.path_params["channel_id"])
        if adapter is None:
            return PlainTextResponse("unknown channel\n", status_code=404)
        missing = [name for name in getattr(adapter, "callback_headers", ()) if name not in request.headers]
        if missing:
            return PlainTextResponse(f"missing header {missing[0]}\n", status_code=401)
        body = await _read_body(request, MAX_CALLBACK_BYTES)
        if body is None:
            return PlainTextResponse(f"body larger than {MAX_CALLBACK_BYTES} bytes\n", status_code=413)
        try:
            job_id = await adapter.verify_callback(request.headers, body)
        except UpstreamError as exc:
            if exc.retryable:  # we cannot check it now (the vendor's keys are unreachable): ask for a retry
                log.warning("callback for %s not checked: %s", request.path_params["channel_id"], exc.message)
                return PlainTextResponse(f"{exc.message}\n", status_code=503, headers={"Retry-After": "30"})
            return PlainTextResponse(f"{exc.message}\n", status_code=401)
        nudged = await gw.store.call(gw.store.tasks.nudge, request.path_params["task_id"], job_id, time.time())
        if nudged:
            gw.tasks.wake()  # whichever process's engine claims it first
        return PlainTextResponse("ok\n")

    return [Route("/callbacks/{channel_id}/{task_id}", callback, methods=["POST"])]


async def _read_body(request: Request, limit: int) -> bytes | None:
    """The body, or None as soon as it is known to exceed ``limit`` (the rest is never read)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)
