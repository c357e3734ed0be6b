"""CORS for the bearer-key APIs, so a web page can call them with ``fetch`` (``TIDEHUB_CORS_ORIGINS``).

Only the paths clients call with an API key get CORS: the console (cookies, its own origin), the
operator API and upstream callbacks never do, whatever the setting says, because a path outside
``API_PREFIXES`` never reaches Starlette's CORSMiddleware. Credentials (cookies) are never
allowed: these APIs authenticate with the ``Authorization`` header, which a page sends itself, so
``*`` is safe for them and nothing ambient can ride along.
"""

from __future__ import annotations

import re

from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

#: The bearer-key APIs (and what they link to): the only paths that answer preflights.
API_PREFIXES = ("/hub/v1", "/ms/v1", "/v1", "/api/relay/v1", "/api/video", "/api/user", "/files", "/api/health")

#: What clients send: our own headers, and the OpenAI SDKs' (in a browser, ``dangerouslyAllowBrowser``).
ALLOWED_HEADERS = (
    "Authorization", "Content-Type", "Idempotency-Key", "X-Request-Id",
    "OpenAI-Organization", "OpenAI-Project", "OpenAI-Beta",
    "X-Stainless-Arch", "X-Stainless-Lang", "X-Stainless-OS", "X-Stainless-Package-Version",
    "X-Stainless-Retry-Count", "X-Stainless-Runtime", "X-Stainless-Runtime-Version", "X-Stainless-Timeout",
    "X-Stainless-Async",
)
#: What a page may read beyond the CORS-safelisted response headers.
EXPOSED_HEADERS = ("Retry-After", "X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset",
                   "X-Request-Id", "Content-Disposition")
_ORIGIN = re.compile(r"https?://[^/?#\s]+")


def parse_origins(value: str) -> list[str]:
    """``TIDEHUB_CORS_ORIGINS``: comma-separated origins (``https://app.example.com``) or ``*``.

    A bad entry raises ValueError at start: an origin with a path or a trailing slash would
    otherwise silently never match."""
    origins = [part.strip().rstrip("/") if part.strip() != "*" else "*" for part in value.split(",") if part.strip()]
    for origin in origins:
        if origin != "*" and not _ORIGIN.fullmatch(origin):
            raise ValueError(f"TIDEHUB_CORS_ORIGINS: {origin!r} is not an origin like https://app.example.com or *")
    return ["*"] if "*" in origins else origins


class APICORS:
    """Starlette's CORSMiddleware, on ``API_PREFIXES`` only."""

    def __init__(self, app: ASGIApp, origins: list[str]) -> None:
        self.app = app
        self.cors = CORSMiddleware(app, allow_origins=origins, allow_credentials=False,
                                   allow_methods=["GET", "POST", "DELETE", "HEAD"],
                                   allow_headers=list(ALLOWED_HEADERS), expose_headers=list(EXPOSED_HEADERS),
                                   max_age=600)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and covered(scope["path"]):
            await self.cors(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def covered(path: str) -> bool:
    return any(path == prefix or path.startswith(prefix + "/") for prefix in API_PREFIXES)
