"""The API reference: an OpenAPI 3.1 document per dialect (``openapi.py`` makes them from the routes'
descriptions and the catalog) and ``/docs``, Swagger UI over all four, served from the package."""

from __future__ import annotations

from typing import Sequence

from starlette.routing import BaseRoute

from tidehub import __version__
from tidehub.api import hub, ms, openai, quota
from tidehub.api.openapi import Documents, Part, Spec
from tidehub.gateway import Gateway


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
    return [*docs.routes()]
