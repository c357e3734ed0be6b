"""``GET /metrics``: the Prometheus text format, behind a bearer token (``TIDEHUB_METRICS_TOKEN`` or
``TIDEHUB_ADMIN_TOKEN``; with neither set the route answers 404).

Under ``PROMETHEUS_MULTIPROC_DIR`` (set by a multi-process serve) a scrape of any process adds up
the counters of all of them (prometheus-client's multi-process mode); otherwise it shows this
process's. The figures read from the database are read at each scrape (core/metrics.py).
"""

from __future__ import annotations

import hmac
import os

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from tidehub.core.metrics import StateCollector
from tidehub.gateway import Gateway


def metrics_routes(gw: Gateway) -> list[Route]:
    tokens = [t.encode() for t in (gw.settings.metrics_token, gw.settings.admin_token) if t]
    state = CollectorRegistry(auto_describe=False)
    state.register(StateCollector(gw.store, gw.router))

    def render() -> bytes:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            every = CollectorRegistry()
            MultiProcessCollector(every)
            counted = generate_latest(every)
        else:
            counted = generate_latest(REGISTRY)
        return counted + generate_latest(state)

    async def metrics(request: Request) -> Response:
        if not tokens:
            return PlainTextResponse("metrics are off: set TIDEHUB_METRICS_TOKEN (or TIDEHUB_ADMIN_TOKEN)\n", 404)
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            return PlainTextResponse("missing token: send 'Authorization: Bearer <TIDEHUB_METRICS_TOKEN>'\n", 401,
                                     headers={"WWW-Authenticate": "Bearer"})
        if not any([hmac.compare_digest(given.strip().encode(), t) for t in tokens]):
            return PlainTextResponse("wrong metrics token\n", 403)
        # The database reads and the formatting run off the event loop.
        return Response(await run_in_threadpool(render), media_type=CONTENT_TYPE_LATEST)

    return [Route("/metrics", metrics, methods=["GET"])]
