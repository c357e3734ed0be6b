"""The API reference: an OpenAPI 3.1 document per dialect (``openapi.py`` makes them from the routes'
descriptions and the catalog) and ``/docs``, Swagger UI over all four, served from the package."""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Sequence

from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from tidehub import __version__
from tidehub.api import hub, ms, openai, quota
from tidehub.api.openapi import Documents, Part, Spec
from tidehub.gateway import Gateway

STATIC = Path(__file__).parent / "static"
#: The console's kind of policy: scripts, styles and connections to this origin only, no inline script.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "font-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")
_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
            "Referrer-Policy": "same-origin", "Cache-Control": "no-cache"}
_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Tidehub API reference</title>
<link rel="icon" type="image/png" href="/docs/static/swagger-ui/favicon-32x32.png">
<link rel="stylesheet" href="/docs/static/swagger-ui/swagger-ui.css">
<link rel="stylesheet" href="/docs/static/docs.css">
</head>
<body>
<header class="docs-bar">
<h1>Tidehub API reference</h1>
<label for="docs-document">Document
<select id="docs-document">
{options}
</select></label>
<a id="docs-raw" href="{raw}">openapi.json</a>
<p>To try a request, press Authorize and paste an API key; requests go to this gateway.</p>
</header>
<div id="swagger-ui"></div>
<script src="/docs/static/swagger-ui/swagger-ui-bundle.js"></script>
<script src="/docs/static/docs.js"></script>
</body>
</html>
"""


def specs(hub_routes: Sequence[BaseRoute], ms_routes: Sequence[BaseRoute], relay_routes: Sequence[BaseRoute],
          quota_routes: Sequence[BaseRoute], video_routes: Sequence[BaseRoute],
          health_routes: Sequence[BaseRoute]) -> list[Spec]:
    return [
        Spec("hub", "/hub/v1/openapi.json", "Tidehub Hub API",
             "One submit endpoint per capability (`{model, input}`), tasks polled until `ready`. Each model's "
             "input schema is its request body; errors come as `{error_code, error_message, field}`.",
             ["/hub/v1"], [Part("", hub_routes)], hub.ERROR_SCHEMA, {"Task": hub.TASK_SCHEMA}),
        Spec("ms", "/ms/v1/openapi.json", "Tidehub MS API",
             "An endpoint marketplace: `POST /run/{endpoint}` with `{input}`, the standard Task object. Errors "
             "come as `{error: {code, message, field}}`.",
             ["/ms/v1"], [Part("", ms_routes)], ms.ERROR_SCHEMA, {"Task": ms.TASK_SCHEMA}),
        Spec("relay", "/v1/openapi.json", "Tidehub OpenAI-compatible relay",
             "OpenAI's API as the official SDKs call it (`base_url` set to this server): the answers are "
             "in the shapes of OpenAI's published document, whose components are used here as they are.",
             ["/v1", "/api/relay/v1"], [Part("", relay_routes)], "ErrorResponse", openai.openai_components()),
        Spec("api", "/api/openapi.json", "Tidehub video hub, quota and health",
             "The video hub (`/api/video`), quota and redemption codes (`/api/user`) in the "
             "`{success, data}` envelope, and the health check (no key).",
             ["/api"], [Part("/video", video_routes, "Video hub"), Part("/user", quota_routes, "Quota"),
                        Part("", health_routes, "Health", strip="/api")],
             quota.ERROR_SCHEMA),
    ]


def reference_routes(gw: Gateway, documents: Sequence[Spec]) -> list[BaseRoute]:
    """Each document at its URL and ``/docs``, none needing a key. Put them before the dialects'
    mounts, whose prefixes they share."""
    docs = Documents(gw, documents, __version__)

    async def page(request: Request) -> HTMLResponse:
        wanted = request.query_params.get("doc")
        chosen = next((spec for spec in documents if spec.name == wanted), documents[0])
        options = "\n".join(
            f'<option value="{escape(spec.url)}" data-name="{escape(spec.name)}"'
            f'{" selected" if spec is chosen else ""}>{escape(spec.title)} ({escape(spec.servers[0])})</option>'
            for spec in documents)
        return HTMLResponse(_PAGE.format(options=options, raw=escape(chosen.url)), headers=_HEADERS)

    return [
        *docs.routes(),
        Route("/docs", page, methods=["GET"]),
        Mount("/docs/static", app=StaticFiles(directory=STATIC), name="docs-static"),
    ]
