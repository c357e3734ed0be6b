"""The simulator as one ASGI app: the fal queue API, the OpenAI API (``/v1``), Replicate predictions
(``/replicate/v1``), nexus (``/nexus``), a Midjourney proxy (``/mj-proxy``), the file host, the webhook key
and ``/_sim`` control."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from tidehub.sim.behaviour import SimBehaviour
from tidehub.sim.channels import Channel, Channels
from tidehub.sim.control import SimControl
from tidehub.sim.fal import FalQueueAPI, json_response
from tidehub.sim.files import FileStore
from tidehub.sim.jobs import Job, JobBoard
from tidehub.sim.midjourney import MidjourneyAPI
from tidehub.sim.models import SimModel, load_models
from tidehub.sim.nexus import NexusAPI
from tidehub.sim.openai import OpenAIAPI
from tidehub.sim.outputs import OutputMaker
from tidehub.sim.replicate import ReplicateAPI
from tidehub.sim.settings import SimSettings
from tidehub.sim.webhooks import WebhookSender, WebhookSigner

log = logging.getLogger(__name__)


class SimRuntime:
    """The live state of one sim, reachable as ``app.state.sim`` (tests read counters from it)."""

    def __init__(self, settings: SimSettings, models: dict[str, SimModel]) -> None:
        self.settings = settings
        self.models = models
        self.channels = Channels(settings.time_scale, settings.seed)
        for key, behaviour in settings.channel_behaviours().items():
            self.channels.add(key, behaviour)
        #: The ``api_key`` channel's knobs.
        self.behaviour: SimBehaviour = self.channel(settings.api_key).behaviour
        #: Set when the server begins to shut down; releases held ("hung") requests.
        self.stopping = asyncio.Event()
        self.webhooks = WebhookSender(WebhookSigner(), settings.webhook_retry_delays_s, settings.webhook_timeout_s)
        self._owns_work_dir = settings.work_dir is None
        self.work_dir = Path(settings.work_dir or tempfile.mkdtemp(prefix="tidehub-sim-"))
        self.executor = ThreadPoolExecutor(settings.worker_count(), thread_name_prefix="sim-render")
        self.files = FileStore(self.work_dir / "files", settings.base_url, settings.file_ttl_s, self.executor)
        self.scratch_dir = self.work_dir / "scratch"
        self.scratch_dir.mkdir(parents=True, exist_ok=True)
        self.maker = OutputMaker(self.files, self.executor, self.scratch_dir)
        rng = random.Random(settings.seed) if settings.seed is not None else None
        self.board = JobBoard(self.behaviour, self.maker, settings.request_ttl_s, rng=rng, on_finish=self._finished)
        #: Called with every job that ends, after the counters: other vendor surfaces send their own webhooks.
        self.finish_listeners: list[Callable[[Job], None]] = []

    def channel(self, key: str) -> Channel:
        channel = self.channels.get(key)
        if channel is None:
            raise KeyError(f"no channel with key {key!r}")
        return channel

    def _finished(self, job: Job) -> None:
        channel = job.channel
        if channel is None:
            return
        if job.failure is None:
            channel.stats.completions += 1
        elif job.cancelled:
            channel.stats.cancels += 1
        else:
            channel.stats.run_failures += 1
        if job.webhook_url and channel.behaviour.webhooks:
            self.webhooks.deliver(job)
        for listener in self.finish_listeners:
            listener(job)

    async def maintain(self) -> None:
        """Expire links, delete unreferenced files and forget old requests, forever."""
        interval = min(max(self.settings.file_ttl_s / 4, 0.05), 30.0)
        while True:
            await asyncio.sleep(interval)
            try:
                self.files.sweep()
                self.board.forget_old()
            except Exception:  # a failed sweep must not stop the next one
                log.exception("sim: maintenance sweep failed")

    async def close(self) -> None:
        self.stopping.set()
        await self.webhooks.aclose()
        await self.board.aclose()
        await self.maker.aclose()
        shutdown = functools.partial(self.executor.shutdown, wait=True, cancel_futures=True)
        await asyncio.get_running_loop().run_in_executor(None, shutdown)
        if self._owns_work_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def stats(self) -> dict[str, Any]:
        return {
            "models": len(self.models),
            "requests": self.board.count,
            "files": self.files.file_count,
            "links": self.files.link_count,
            "renders": self.files.renders,
            "webhooks_pending": self.webhooks.pending,
            "channels": {channel.key: channel.stats.as_dict() for channel in self.channels},
        }


def create_sim_app(settings: SimSettings) -> Starlette:
    """A fresh simulator app; background work starts and stops with the ASGI lifespan."""
    runtime = SimRuntime(settings, load_models(settings.catalog_paths()))
    fal = FalQueueAPI(runtime.models, runtime.board, settings.base_url, runtime.channels, runtime.stopping)
    openai = OpenAIAPI(runtime.channels, runtime.board, runtime.files, runtime.executor, runtime.scratch_dir,
                       runtime.stopping)
    replicate = ReplicateAPI(runtime.channels, runtime.board, settings.base_url, runtime.stopping,
                             settings.webhook_retry_delays_s, settings.webhook_timeout_s)
    runtime.finish_listeners.append(replicate.finished)
    nexus = NexusAPI(runtime.channels, runtime.board, runtime.files, runtime.executor, runtime.scratch_dir,
                     runtime.stopping)
    mj_proxy = MidjourneyAPI("/mj-proxy", "secret", runtime.channels, runtime.board, runtime.files, runtime.stopping)
    control = SimControl(runtime.channels)

    async def serve_file(request: Request) -> Response:
        stored = runtime.files.lookup(request.path_params["token"], request.path_params["name"])
        if stored is None:
            return json_response({"detail": "File not found or expired"}, 404)
        return FileResponse(stored.path, media_type=stored.content_type)

    async def health(request: Request) -> Response:
        return json_response({"ok": True, "models": len(runtime.models)})

    async def stats(request: Request) -> Response:
        return json_response(runtime.stats())

    async def jwks(request: Request) -> Response:
        return json_response(runtime.webhooks.signer.jwks())

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        tasks = [
            asyncio.create_task(runtime.board.run_scheduler(), name="sim-scheduler"),
            asyncio.create_task(runtime.maintain(), name="sim-maintenance"),
        ]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await replicate.aclose()
            await nexus.aclose()
            await mj_proxy.aclose()
            await runtime.close()

    routes = [
        Route("/files/{token}/{name}", serve_file, methods=["GET", "HEAD"]),
        Route("/_sim/health", health, methods=["GET"]),
        Route("/_sim/stats", stats, methods=["GET"]),
        *control.routes(),
        Route("/.well-known/jwks.json", jwks, methods=["GET"]),
        *replicate.routes(),  # every vendor surface before fal's catch-all submit route, which would take any POST
        *openai.routes(),
        *nexus.routes(),
        *mj_proxy.routes(),
        *fal.routes(),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: _http_error})
    app.state.sim = runtime
    return app


async def _http_error(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    detail = exc.detail if isinstance(exc, HTTPException) else "Internal server error"
    return json_response({"detail": detail}, status)
