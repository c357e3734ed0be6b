"""The ASGI application: every dialect mounted over one gateway."""

from __future__ import annotations

import contextlib
from typing import AsyncIterator

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.requests import Request
from starlette.responses import RedirectResponse
from starlette.routing import Mount, Route
from starlette.types import ASGIApp

from tidehub.api.admin import create_admin_app
from tidehub.api.callbacks import callback_routes
from tidehub.api.cors import APICORS, parse_origins
from tidehub.api.dialect import Dispatch
from tidehub.api.docs import reference_routes, specs
from tidehub.api.edge import RequestEdge
from tidehub.api.files import file_routes
from tidehub.api.health import health_routes
from tidehub.api.metrics import metrics_routes
from tidehub.api import hub, ms
from tidehub import heap
from tidehub.api.hub import create_hub_app
from tidehub.api.ms import create_ms_app
from tidehub.api.openai import create_openai_app
from tidehub.api.quota import create_quota_app
from tidehub.api.video_hub import create_video_hub_app
from tidehub.config import Settings
from tidehub.console import create_console_app
from tidehub.gateway import Gateway


class GatewayApp(Starlette):
    """Starlette with its middleware outermost: the request's edge (api/edge.py), which has the
    last word on unexpected errors, stands in for Starlette's ServerErrorMiddleware, so a dialect's
    request passes no layer of the gateway's own but the edge and the dispatch in front of the router."""

    def build_middleware_stack(self) -> ASGIApp:
        assert not {500, Exception} & set(self.exception_handlers), "unexpected errors are RequestEdge's"
        app: ASGIApp = ExceptionMiddleware(self.router, handlers=self.exception_handlers)
        for cls, args, kwargs in reversed(self.user_middleware):
            app = cls(app, *args, **kwargs)
        return app


def create_app(settings: Settings, gateway: Gateway | None = None, *, settle_heap: bool = False) -> Starlette:
    """The gateway's ASGI app. ``settle_heap``: the process serves this app alone until it exits
    (``tidehub serve``, ``tidehub worker``), so its garbage collector is tuned for it (tidehub/heap.py)."""
    origins = parse_origins(settings.cors_origins)  # a bad setting fails before anything is opened
    gw = gateway or Gateway.open(settings)
    # A webhook shows the task as the dialect it was submitted through would.
    gw.sender.renderers = {"hub": hub.render_task, "ms": ms.render_task}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        gw.start()
        if settle_heap:
            heap.settle()
        try:
            yield
        finally:
            if settle_heap:
                heap.release()
            await gw.close()

    relay = create_openai_app(gw)
    hub_app, ms_app = create_hub_app(gw), create_ms_app(gw)
    quota_app, video_app, health = create_quota_app(gw), create_video_hub_app(gw), health_routes(gw)
    # Outermost: its headers go on every answer. CORS next, and its headers go on the edge's own
    # answers to unexpected errors too, which it sends through the same layer.
    def between(app: ASGIApp) -> ASGIApp:
        return APICORS(app, origins=origins) if origins else app

    middleware = [Middleware(RequestEdge, measure=settings.http_metrics, access_log=settings.access_log,
                             between=between)]
    if origins:
        middleware.append(Middleware(APICORS, origins=origins))
    docs = reference_routes(gw, specs(hub_app.routes, ms_app.routes, relay.routes, quota_app.routes,
                                      video_app.routes, health))
    dialects = [Mount(path, app=dialect) for path, dialect in (
        ("/v1", relay), ("/api/relay/v1", relay), ("/hub/v1", hub_app), ("/ms/v1", ms_app), ("/api/user", quota_app),
        ("/api/video", video_app), ("/admin/v1", create_admin_app(gw)))]
    # The dialects' requests take the fast path past the router; the API documents under their
    # prefixes are the gateway's own routes.
    middleware.append(Middleware(Dispatch, mounts=dialects,
                                 exact=frozenset(r.path for r in docs if isinstance(r, Route))))

    async def home(request: Request) -> RedirectResponse:
        return RedirectResponse("/console/", status_code=303)

    app = GatewayApp(
        routes=[
            *docs,  # before the dialects: the documents sit under their prefixes
            *dialects,
            Mount("/console", app=create_console_app(gw)),
            Route("/", home, methods=["GET", "HEAD"]),
            *file_routes(gw),
            *callback_routes(gw),
            *health,
            *metrics_routes(gw),
        ],
        middleware=middleware,
        lifespan=lifespan,
    )
    app.state.gateway = gw
    return app
