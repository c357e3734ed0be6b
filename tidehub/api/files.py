"""Serving mirrored result files. The URL's random token is the capability: no key is needed, so
browsers, ``<img>`` tags and download tools can fetch results directly."""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, Response
from starlette.routing import Route

from tidehub.gateway import Gateway


def file_routes(gw: Gateway) -> list[Route]:
    async def get_file(request: Request) -> Response:
        token, name = request.path_params["token"], request.path_params["name"]
        asset = await gw.store.call(gw.store.assets.get, token)
        if asset is None or asset["name"] != name or asset["expires_at"] <= time.time():
            return PlainTextResponse("file not found or expired\n", status_code=404)
        return FileResponse(
            gw.assets.root / asset["path"],
            media_type=asset["content_type"],
            headers={"Cache-Control": "private, max-age=86400"},
        )

    return [Route("/files/{token}/{name}", get_file, methods=["GET", "HEAD"])]
