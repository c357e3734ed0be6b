"""Upstream callbacks: a vendor tells us a job moved. Verified by the channel's adapter (fal: an
ED25519 signature against fal's JWKS), then the task is checked at once through the normal
polling path, which stays the one way a task finishes."""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from tidehub.gateway import Gateway
from tidehub.core.ports import UpstreamError


def callback_routes(gw: Gateway) -> list[Route]:
    async def callback(request: Request) -> PlainTextResponse:
        adapter = gw.router.adapter(request.path_params["channel_id"])
        if adapter is None:
            return PlainTextResponse("unknown channel\n", status_code=404)
        body = await request.body()
        try:
            job_id = await adapter.verify_callback(request.headers, body)
        except UpstreamError as exc:
            return PlainTextResponse(f"{exc.message}\n", status_code=401)
        nudged = await gw.store.call(gw.store.tasks.nudge, request.path_params["task_id"], job_id, time.time())
        if nudged and gw.engine is not None:
            gw.engine.wake()
        return PlainTextResponse("ok\n")

    return [Route("/callbacks/{channel_id}/{task_id}", callback, methods=["POST"])]
