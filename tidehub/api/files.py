"""Serving mirrored result files. The URL's random token is the capability: no key is needed, so
browsers, ``<img>`` tags and download tools can fetch results directly.

The upstream declared each file's type, and an upstream is a third party: a file declared
``text/html`` or ``image/svg+xml`` would run its scripts on the origin it is served from (the
gateway's own, which the console shares). So only media that cannot script are served inline;
everything else is a download (``Content-Disposition: attachment``), and every file comes with
``nosniff`` and a CSP that sandboxes it. ``TIDEHUB_FILES_URL`` can move file links to an origin of
their own as well.
"""

from __future__ import annotations

import time
from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, Response
from starlette.routing import Route

from tidehub.gateway import Gateway

#: No script, no plugin, no fetch, in whatever context the browser opens the file.
SANDBOX_CSP = "default-src 'none'; sandbox"
_INLINE_FAMILIES = ("image/", "video/", "audio/")
_SCRIPTABLE = ("svg", "xml", "html", "script")


def shown_inline(content_type: str) -> bool:
    """Images, video and audio, except the ones that can carry script (SVG, anything XML)."""
    media = content_type.split(";", 1)[0].strip().lower()
    return media.startswith(_INLINE_FAMILIES) and not any(word in media for word in _SCRIPTABLE)


def file_response(path: Path, content_type: str, name: str, headers: dict[str, str] | None = None) -> FileResponse:
    """A stored result file as it may safely be served from one of the gateway's origins."""
    return FileResponse(
        path,
        media_type=content_type,
        filename=name,
        content_disposition_type="inline" if shown_inline(content_type) else "attachment",
        headers={"X-Content-Type-Options": "nosniff", "Content-Security-Policy": SANDBOX_CSP, **(headers or {})},
    )


def file_routes(gw: Gateway) -> list[Route]:
    async def get_file(request: Request) -> Response:
        token, name = request.path_params["token"], request.path_params["name"]
        asset = await gw.store.call(gw.store.assets.get, token)
        if asset is None or asset["name"] != name or asset["expires_at"] <= time.time():
            return PlainTextResponse("file not found or expired\n", status_code=404)
        return file_response(gw.assets.root / asset["path"], asset["content_type"], name,
                             {"Cache-Control": "private, max-age=86400"})

    return [Route("/files/{token}/{name}", get_file, methods=["GET", "HEAD"])]
