"""Replicate's predictions API under ``/replicate/v1``, as documented in UPSTREAMS.md.

A third protocol of the same simulator: a channel key is accepted as ``Authorization: Bearer <key>``
(or Replicate's older ``Token <key>``), and the channel's knobs apply as on the fal side. Faults come
in the same order: unknown key (401); then, on every endpoint, ``latency_s``, ``hang_rate`` (held,
then 504), ``outage`` (503); on a create, the model (404, or 422 for an unknown version) and the
input (422 naming ``input.<field>``) are checked before the 429 burst and ``submit_error_rate``
(500), so only valid requests count towards rate limits. Every error is an RFC 7807 body
``{title, detail, status}``; input errors add Replicate's ``invalid_fields`` list.

Predictions run on the shared ``JobBoard`` (queueing, ``max_concurrent``, run failures and the
``[sim:content-policy]`` / ``[sim:flaky]`` prompt markers behave as on fal) and their files come
from the shared ``OutputMaker``. Statuses: ``starting`` while queued, ``processing`` while running,
then ``succeeded``, ``failed`` (with Replicate's error strings) or ``canceled``.

Webhooks carry the whole prediction, signed with Standard Webhooks using the channel's secret
(``GET /replicate/v1/webhooks/default/secret``). Events sent: ``start`` (at create), ``output``
(once, when a run succeeds) and ``completed``; ``logs`` events are not sent. A failed delivery is
retried after the sim's ``webhook_retry_delays_s`` (scaled by the channel's time scale); 410 stops.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import re
import secrets
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cached_property
from typing import Any

import aiohttp
import orjson
from standardwebhooks.webhooks import Webhook
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route

from tidehub.sim import params
from tidehub.sim.channels import Channel, Channels
from tidehub.sim.fal import json_response
from tidehub.sim.hangs import hold
from tidehub.sim.jobs import Job, JobBoard, Phase
from tidehub.sim.models import SimModel
from tidehub.sim.webhooks import DEFAULT_RETRY_DELAYS_S

log = logging.getLogger(__name__)

PREFIX = "/replicate"
WEBHOOK_EVENTS = ("start", "output", "logs", "completed")
#: ``Prefer: wait`` holds a create at most this many (simulated) seconds, as Replicate does.
MAX_WAIT_S = 60

_PROGRESS_STEPS = 10
_INTERRUPTED = "Prediction interrupted; please retry (code: PA)"
_FLUX_NSFW = "NSFW content detected. Try running it again, or try a different prompt."
_SENSITIVE = "The input or output was flagged as sensitive. Please try again with different inputs. (E005)"
_ASPECT_RATIOS = ("1:1", "16:9", "21:9", "3:2", "2:3", "4:5", "5:4", "3:4", "4:3", "9:16", "9:21")
_FORMATS = ("webp", "jpg", "png")


@dataclass(frozen=True, slots=True)
class Field:
    """One input of a model, as much of its schema as the checks here use."""

    kind: str  # string | integer | number | boolean | uri | array
    default: Any = None
    choices: tuple[Any, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    required: bool = False

    def schema(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"type": "string", "format": "uri"} if self.kind == "uri" else {"type": self.kind}
        if self.default is not None:
            spec["default"] = self.default
        if self.choices:
            spec["enum"] = list(self.choices)
        if self.minimum is not None:
            spec["minimum"] = self.minimum
        if self.maximum is not None:
            spec["maximum"] = self.maximum
        return spec


@dataclass(frozen=True)
class ReplicateModel:
    """One public model: its inputs, how long it takes, and what its output looks like."""

    id: str  # owner/name
    family: str  # flux | flux-pro | seedream | video
    capability: str  # image | video
    fields: Mapping[str, Field]
    queue_s: float
    run_s: float
    #: A single URL string rather than a list of them.
    single_output: bool = False
    nsfw_error: str = _SENSITIVE
    description: str = ""

    @cached_property
    def version(self) -> str:
        """A stable 64-hex version id (the sim's own: real hashes change as models are updated)."""
        return hashlib.sha256(f"tidehub-sim:{self.id}".encode()).hexdigest()

    @cached_property
    def sim_model(self) -> SimModel:
        """The job board's view: its queue lane, timing and output kind."""
        return SimModel(fal_id=f"replicate/{self.id}", capability=self.capability, slug=self.id,
                        queue_s=self.queue_s, run_s=self.run_s)

    def input_schema(self) -> dict[str, Any]:
        return {
            "type": "object",
            "title": "Input",
            "required": [name for name, spec in self.fields.items() if spec.required],
            "properties": {name: spec.schema() for name, spec in self.fields.items()},
        }


def _flux_fields(steps_max: int, **extra: Field) -> dict[str, Field]:
    return {
        "prompt": Field("string", required=True),
        "aspect_ratio": Field("string", "1:1", _ASPECT_RATIOS),
        "num_outputs": Field("integer", 1, minimum=1, maximum=4),
        "num_inference_steps": Field("integer", steps_max, minimum=1, maximum=steps_max),
        "output_format": Field("string", "webp", _FORMATS),
        "output_quality": Field("integer", 80, minimum=0, maximum=100),
        "megapixels": Field("string", "1", ("1", "0.25")),
        "go_fast": Field("boolean", True),
        "disable_safety_checker": Field("boolean", False),
        "seed": Field("integer"),
        **extra,
    }


MODELS: dict[str, ReplicateModel] = {m.id: m for m in (
    ReplicateModel("black-forest-labs/flux-schnell", "flux", "image", _flux_fields(4), 0.5, 1.5,
                   nsfw_error=_FLUX_NSFW, description="The fastest image generation model tailored for local "
                                                      "development and personal use"),
    ReplicateModel("black-forest-labs/flux-dev", "flux", "image", _flux_fields(
        50, guidance=Field("number", 3, minimum=0, maximum=10), image=Field("uri"),
        prompt_strength=Field("number", 0.8, minimum=0, maximum=1)), 1.0, 6.0, nsfw_error=_FLUX_NSFW,
        description="A 12 billion parameter rectified flow transformer capable of generating images from text"),
    ReplicateModel("black-forest-labs/flux-1.1-pro", "flux-pro", "image", {
        "prompt": Field("string", required=True),
        "aspect_ratio": Field("string", "1:1", (*_ASPECT_RATIOS, "custom")),
        "width": Field("integer", minimum=256, maximum=1440),
        "height": Field("integer", minimum=256, maximum=1440),
        "output_format": Field("string", "webp", _FORMATS),
        "output_quality": Field("integer", 80, minimum=0, maximum=100),
        "safety_tolerance": Field("integer", 2, minimum=1, maximum=6),
        "prompt_upsampling": Field("boolean", False),
        "image_prompt": Field("uri"),
        "seed": Field("integer"),
    }, 1.0, 5.0, single_output=True, description="Faster, better FLUX Pro"),
    ReplicateModel("bytedance/seedream-4", "seedream", "image", {
        "prompt": Field("string", required=True),
        "image_input": Field("array", []),
        "size": Field("string", "2K", ("1K", "2K", "4K", "custom")),
        "aspect_ratio": Field("string", "match_input_image",
                              ("match_input_image", "1:1", "4:3", "3:4", "16:9", "9:16", "3:2", "2:3", "21:9")),
        "width": Field("integer", 2048, minimum=1024, maximum=4096),
        "height": Field("integer", 2048, minimum=1024, maximum=4096),
        "sequential_image_generation": Field("string", "disabled", ("disabled", "auto")),
        "max_images": Field("integer", 1, minimum=1, maximum=15),
        "seed": Field("integer"),
    }, 2.0, 20.0, description="Unified text-to-image generation and precise single-sentence editing at up to 4K"),
    ReplicateModel("minimax/video-01", "video", "video", {
        "prompt": Field("string", required=True),
        "prompt_optimizer": Field("boolean", True),
        "first_frame_image": Field("uri"),
        "subject_reference": Field("uri"),
    }, 5.0, 150.0, single_output=True, description="Generate 6s videos with prompts or images (Hailuo)"),
)}

#: Bare version id -> model.
VERSIONS: dict[str, ReplicateModel] = {m.version: m for m in MODELS.values()}


class Problem(Exception):
    """An RFC 7807 error answer; raised anywhere in a handler, rendered by the endpoint wrapper."""

    def __init__(self, status: int, title: str, detail: str, *, headers: Mapping[str, str] | None = None,
                 extra: Mapping[str, Any] | None = None) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail = status, title, detail
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})

    def response(self) -> Response:
        body = {"title": self.title, "detail": self.detail, "status": self.status, **self.extra}
        return Response(orjson.dumps(body), status_code=self.status, headers=self.headers,
                        media_type="application/problem+json")


@dataclass(slots=True, eq=False)
class Prediction:
    """What Replicate echoes back about a prediction, beside the board's job."""

    job: Job
    model: ReplicateModel
    version: str
    input: dict[str, Any]
    seed: int
    webhook: str | None
    events: frozenset[str]
    #: Set when the run ends; made only for a create that waits (``Prefer: wait``).
    done: asyncio.Event | None = None

    @property
    def id(self) -> str:
        return prediction_id(self.job.id)


Handler = Callable[[Request, Channel], Awaitable[Response]]


class ReplicateAPI:
    """Request handlers for ``/replicate/v1``; channels, jobs and files are shared with the other surfaces.

    ``finished`` must be called with every job the board finishes (it sends ``completed`` webhooks
    and releases ``Prefer: wait`` creates); ``aclose`` stops webhook deliveries.
    """

    def __init__(self, channels: Channels, board: JobBoard, base_url: str, stopping: asyncio.Event | None = None,
                 webhook_retry_delays_s: Sequence[float] = DEFAULT_RETRY_DELAYS_S,
                 webhook_timeout_s: float = 10.0) -> None:
        self._channels = channels
        self._board = board
        self._base = f"{base_url.rstrip('/')}{PREFIX}/v1"
        self._stopping = stopping if stopping is not None else asyncio.Event()
        self._predictions: dict[str, Prediction] = {}  # by board job id, in creation order
        self.webhooks = PredictionWebhooks(webhook_retry_delays_s, webhook_timeout_s)

    def routes(self) -> list[BaseRoute]:
        """One mount; it must come before the fal catch-all submit route."""
        endpoint = self._endpoint
        return [Mount(PREFIX, routes=[
            Route("/v1/models/{owner}/{name}/predictions", endpoint(self.create_for_model), methods=["POST"]),
            Route("/v1/models/{owner}/{name}", endpoint(self.get_model, creates=False), methods=["GET"]),
            Route("/v1/predictions", endpoint(self.create_for_version), methods=["POST"]),
            Route("/v1/predictions/{prediction_id}", endpoint(self.get_prediction, creates=False), methods=["GET"]),
            Route("/v1/predictions/{prediction_id}/cancel", endpoint(self.cancel, creates=False), methods=["POST"]),
            Route("/v1/webhooks/default/secret", endpoint(self.webhook_secret, creates=False), methods=["GET"]),
            Route("/{rest:path}", self.unknown_route, methods=["GET", "POST", "PUT", "PATCH", "DELETE"]),
        ])]

    async def aclose(self) -> None:
        await self.webhooks.aclose()

    # --- the common path of every request ----------------------------------------------------------

    def _endpoint(self, handler: Handler, *, creates: bool = True) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            channel = self._channel(request)
            if channel is None:
                return _unauthenticated().response()
            if creates:
                channel.stats.submits += 1
            elif request.method == "GET" and "prediction_id" in request.path_params:
                channel.stats.status_polls += 1
            if channel.behaviour.disturbs_requests and (refused := await self._misbehave(request, channel)):
                return refused
            try:
                return await handler(request, channel)
            except Problem as problem:
                return problem.response()
            except Exception:
                log.exception("sim: %s %s failed", request.method, request.url.path)
                return _server_error().response()

        return endpoint

    def _channel(self, request: Request) -> Channel | None:
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() not in ("bearer", "token"):
            return None
        return self._channels.get(key.strip())

    async def _misbehave(self, request: Request, channel: Channel) -> Response | None:
        behaviour = channel.behaviour
        if behaviour.latency_s:
            await asyncio.sleep(behaviour.latency_s)
        if channel.chance(behaviour.hang_rate):
            channel.stats.hangs += 1
            await hold(request, channel.stats, behaviour.hang_s, self._stopping)
            return Problem(504, "Gateway Timeout", "The request timed out.").response()
        if behaviour.outage:
            channel.stats.outage_errors += 1
            return Problem(503, "Service Unavailable",
                           "Replicate is temporarily unavailable. Please try again later.").response()
        return None

    def _admit(self, channel: Channel) -> None:
        """A valid create: refuse it with 429 or 500 when the knobs say so."""
        behaviour = channel.behaviour
        if channel.rate_limited():
            channel.stats.rate_limited += 1
            wait = behaviour.retry_after_header
            raise Problem(429, "Request was throttled.", f"Request was throttled. Expected available in {wait} "
                                                         "second.", headers={"Retry-After": wait})
        if channel.chance(behaviour.submit_error_rate):
            channel.stats.submit_errors += 1
            raise _server_error()

    async def unknown_route(self, request: Request) -> Response:
        if self._channel(request) is None:
            return _unauthenticated().response()
        return _not_found().response()

    # --- models ------------------------------------------------------------------------------------

    async def get_model(self, request: Request, channel: Channel) -> Response:
        model = _model(request.path_params["owner"], request.path_params["name"])
        owner, _, name = model.id.partition("/")
        return json_response({
            "url": f"{self._base}/models/{model.id}",
            "owner": owner,
            "name": name,
            "description": model.description,
            "visibility": "public",
            "run_count": 0,
            "latest_version": {
                "id": model.version,
                "created_at": "2024-08-01T00:00:00.000000Z",
                "cog_version": "0.9.0",
                "openapi_schema": {"components": {"schemas": {"Input": model.input_schema()}}},
            },
        })

    # --- predictions -------------------------------------------------------------------------------

    async def create_for_model(self, request: Request, channel: Channel) -> Response:
        model = _model(request.path_params["owner"], request.path_params["name"])
        body = await _json_body(request)
        return await self._create(request, channel, model, model.version, body)

    async def create_for_version(self, request: Request, channel: Channel) -> Response:
        body = await _json_body(request)
        model, version = _version(body.get("version"))
        return await self._create(request, channel, model, version, body)

    async def _create(self, request: Request, channel: Channel, model: ReplicateModel, version: str,
                      body: dict[str, Any]) -> Response:
        raw_input = body.get("input")
        problems = _check_input(model, raw_input)
        webhook, events = body.get("webhook"), body.get("webhook_events_filter")
        if webhook is not None and not (isinstance(webhook, str) and re.match(r"https?://[^\s/]+", webhook)):
            problems.append(_invalid("format", "webhook", "Does not match format 'uri'"))
        if events is not None and not (isinstance(events, list) and all(e in WEBHOOK_EVENTS for e in events)):
            problems.append(_invalid("enum", "webhook_events_filter",
                                     "webhook_events_filter must be a list of: " + ", ".join(WEBHOOK_EVENTS)))
        if problems:
            raise _validation_failed(problems)
        assert isinstance(raw_input, dict)
        self._admit(channel)
        seed = params.input_seed({"model": model.id, **raw_input})
        inputs = _maker_inputs(model, _given(model, raw_input), seed)
        job, _ = self._board.submit(model.sim_model, inputs, channel=channel, failure=channel.plan_failure(inputs))
        channel.count_accepted()
        self._forget_gone()
        prediction = Prediction(job, model, version, raw_input, seed, webhook,
                                frozenset(events if events is not None else WEBHOOK_EVENTS))
        self._predictions[job.id] = prediction
        if webhook and "start" in prediction.events and channel.behaviour.webhooks:
            self.webhooks.deliver(channel, webhook, self._object(prediction))
        wait = _prefer_wait(request.headers.get("prefer"))
        if wait:
            await self._wait(prediction, wait * channel.behaviour.scale)
        return json_response(self._object(prediction), 201)

    async def get_prediction(self, request: Request, channel: Channel) -> Response:
        return json_response(self._object(self._find(request, channel)))

    async def cancel(self, request: Request, channel: Channel) -> Response:
        prediction = self._find(request, channel)
        if self._board.phase(prediction.job) is not Phase.DONE:
            self._board.cancel(prediction.job)
        return json_response(self._object(prediction))

    async def webhook_secret(self, request: Request, channel: Channel) -> Response:
        return json_response({"key": self.webhooks.secret_for(channel)})

    def finished(self, job: Job) -> None:
        """The board's finish hook: wake waiting creates and send the ``output``/``completed`` webhooks."""
        prediction = self._predictions.get(job.id)
        if prediction is None:
            return
        if prediction.done is not None:
            prediction.done.set()
        channel = job.channel
        if not prediction.webhook or channel is None or not channel.behaviour.webhooks:
            return
        body = self._object(prediction)
        if "output" in prediction.events and body["status"] == "succeeded":
            self.webhooks.deliver(channel, prediction.webhook, body)
        if "completed" in prediction.events:
            self.webhooks.deliver(channel, prediction.webhook, body)

    async def _wait(self, prediction: Prediction, seconds: float) -> None:
        """Hold a create until its run ends, the sim stops or ``seconds`` pass."""
        if self._board.phase(prediction.job) is Phase.DONE:
            return
        prediction.done = prediction.done or asyncio.Event()
        waiters = [asyncio.ensure_future(prediction.done.wait()), asyncio.ensure_future(self._stopping.wait())]
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)

    def _find(self, request: Request, channel: Channel) -> Prediction:
        """A prediction of this channel (another account's ids are not found, as on Replicate)."""
        job_id = _job_id(request.path_params["prediction_id"])
        prediction = self._predictions.get(job_id) if job_id else None
        if prediction is None or prediction.job.channel is not channel or self._board.get(job_id) is None:
            raise _not_found()
        return prediction

    def _forget_gone(self) -> None:
        """Drop predictions the board has forgotten, oldest first (bounds memory on long runs)."""
        while self._predictions:
            oldest = next(iter(self._predictions))
            if self._board.get(oldest) is not None:
                return
            del self._predictions[oldest]

    def _object(self, prediction: Prediction) -> dict[str, Any]:
        """The prediction as Replicate renders it, as it stands now."""
        job = prediction.job
        phase = self._board.phase(job)
        urls = {"get": f"{self._base}/predictions/{prediction.id}",
                "cancel": f"{self._base}/predictions/{prediction.id}/cancel"}
        started = phase is not Phase.QUEUED and (job.finished_at is None or job.finished_at >= job.starts_at)
        body: dict[str, Any] = {
            "id": prediction.id,
            "model": prediction.model.id,
            "version": prediction.version,
            "input": prediction.input,
            "logs": self._logs(prediction, phase) if started else "",
            "output": None,
            "data_removed": False,
            "error": None,
            "source": "api",
            "status": "starting",
            "created_at": _iso(job.submitted_at),
            "started_at": _iso(job.starts_at) if started else None,
            "completed_at": None,
            "metrics": {},
            "urls": urls,
        }
        if phase is Phase.RUNNING:
            body["status"] = "processing"
        elif phase is Phase.DONE:
            finished = job.finished_at or job.ends_at
            body["completed_at"] = _iso(finished)
            failure = job.failure
            if started:
                predict = round(max(0.0, finished - job.starts_at), 6)
                body["metrics"] = {"predict_time": predict, "total_time": round(finished - job.submitted_at, 6)}
            if failure is None:
                body.update(status="succeeded", output=_output(prediction.model, job.output or {}))
                if prediction.model.capability == "image":
                    body["metrics"]["image_count"] = len((job.output or {}).get("images") or [])
            elif job.cancelled:
                body["status"] = "canceled"
            else:
                body.update(status="failed", error=_error_text(prediction.model, failure.error_type, failure.message))
        return body

    def _logs(self, prediction: Prediction, phase: Phase) -> str:
        """What the model would have printed so far: its seed, then progress."""
        job = prediction.job
        as_of = job.finished_at if job.finished_at is not None else self._board.now()
        span = job.ends_at - job.starts_at
        lines = [f"Using seed: {prediction.seed}"]
        for step in range(1, _PROGRESS_STEPS + 1):
            if job.starts_at + span * step / _PROGRESS_STEPS > as_of:
                break
            bar = "█" * step + " " * (_PROGRESS_STEPS - step)
            lines.append(f"{step * 100 // _PROGRESS_STEPS:3d}%|{bar}| {step}/{_PROGRESS_STEPS}")
        return "\n".join(lines) + "\n"


class PredictionWebhooks:
    """Standard Webhooks deliveries of predictions, in the background, one secret per channel."""

    def __init__(self, retry_delays_s: Sequence[float] = DEFAULT_RETRY_DELAYS_S, timeout_s: float = 10.0) -> None:
        self._delays = tuple(retry_delays_s)
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._secrets: dict[str, str] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._http: aiohttp.ClientSession | None = None

    def secret_for(self, channel: Channel) -> str:
        secret = self._secrets.get(channel.key)
        if secret is None:
            secret = self._secrets[channel.key] = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
        return secret

    @property
    def pending(self) -> int:
        return len(self._tasks)

    def deliver(self, channel: Channel, url: str, prediction: dict[str, Any]) -> None:
        """Start delivering one event (the prediction as it stands now); returns at once."""
        raw = orjson.dumps(prediction)
        task = asyncio.get_running_loop().create_task(self._deliver(channel, url, raw),
                                                      name=f"sim-replicate-webhook-{prediction['id']}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.close()

    async def _deliver(self, channel: Channel, url: str, raw: bytes) -> None:
        signer = Webhook(self.secret_for(channel))
        message_id = f"msg_{secrets.token_hex(12)}"  # the same on every attempt, so receivers can dedupe
        text = raw.decode()
        for attempt in range(len(self._delays) + 1):
            if attempt:
                await asyncio.sleep(self._delays[attempt - 1] * channel.behaviour.scale)
            now = datetime.now(timezone.utc)
            headers = {
                "Content-Type": "application/json",
                "webhook-id": message_id,
                "webhook-timestamp": str(int(now.timestamp())),
                "webhook-signature": signer.sign(message_id, now, text),
            }
            try:
                async with self._session().post(url, data=raw, headers=headers, allow_redirects=False) as response:
                    await response.read()
                    if 200 <= response.status < 300:
                        channel.stats.webhooks_sent += 1
                        return
                    reason = f"HTTP {response.status}"
                    if response.status == 410:  # the receiver disabled the endpoint
                        channel.stats.webhooks_failed += 1
                        break
            except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
                reason = f"{type(exc).__name__}: {exc}"
            channel.stats.webhooks_failed += 1
            log.debug("sim: replicate webhook to %s failed (attempt %d): %s", url, attempt + 1, reason)
        channel.stats.webhooks_abandoned += 1
        log.info("sim: gave up delivering a replicate webhook to %s", url)

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(
                timeout=self._timeout, connector=aiohttp.TCPConnector(limit=256), trust_env=False
            )
        return self._http


# --- ids ---------------------------------------------------------------------------------------------


def prediction_id(job_id: str) -> str:
    """Replicate-looking ids (26 lower-case base32 characters) that map back to the board's job id."""
    return base64.b32encode(uuid.UUID(job_id).bytes).decode().rstrip("=").lower()


def _job_id(prediction: str) -> str | None:
    if len(prediction) != 26:
        return None
    try:
        return str(uuid.UUID(bytes=base64.b32decode(prediction.upper() + "======")))
    except ValueError:
        return None


# --- request reading and checks ----------------------------------------------------------------------


async def _json_body(request: Request) -> dict[str, Any]:
    try:
        body = orjson.loads(await request.body() or b"null")
    except orjson.JSONDecodeError:
        raise Problem(400, "Invalid JSON", "The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise _validation_failed([_invalid("invalid_type", "(root)", "Invalid type. Expected: object")])
    return body


def _model(owner: str, name: str) -> ReplicateModel:
    model = MODELS.get(f"{owner}/{name}")
    if model is None:
        raise _not_found()
    return model


def _version(value: Any) -> tuple[ReplicateModel, str]:
    """``version`` as a bare id or ``owner/name:id``; Replicate answers 422 for one it does not know."""
    if not isinstance(value, str) or not value:
        raise _validation_failed([_invalid("required", "(root)", "version is required")])
    name, _, version = value.rpartition(":")
    model = VERSIONS.get(version)
    if model is None or (name and name != model.id):
        raise Problem(422, "Invalid version or not permitted",
                      "The specified version does not exist (or perhaps you don't have permission to use it?)")
    return model, version


def _check_input(model: ReplicateModel, value: Any) -> list[dict[str, str]]:
    """Replicate's (gojsonschema) checks of ``input``; enum, range, type and required errors."""
    if value is None:
        return [_invalid("required", "(root)", "input is required")]
    if not isinstance(value, dict):
        return [_invalid("invalid_type", "input", f"Invalid type. Expected: object, given: {_kind(value)}")]
    problems = [_invalid("required", "input", f"{name} is required")
                for name, spec in model.fields.items() if spec.required and value.get(name) is None]
    for name, given in value.items():
        spec = model.fields.get(name)
        if spec is None or given is None:
            continue  # unknown inputs are ignored, as Replicate does
        where = f"input.{name}"
        if not _is_kind(given, spec.kind):
            expected = "string" if spec.kind == "uri" else spec.kind
            problems.append(_invalid("invalid_type", where,
                                     f"Invalid type. Expected: {expected}, given: {_kind(given)}"))
        elif spec.kind == "uri" and not re.match(r"(https?://\S+|data:[^,]*,)", given):
            problems.append(_invalid("format", where, "Does not match format 'uri'"))
        elif spec.choices and given not in spec.choices:
            listed = ", ".join(orjson.dumps(c).decode() for c in spec.choices)
            problems.append(_invalid("enum", where, f"{where} must be one of the following: {listed}"))
        elif spec.minimum is not None and given < spec.minimum:
            problems.append(_invalid("number_gte", where, f"Must be greater than or equal to {_num(spec.minimum)}"))
        elif spec.maximum is not None and given > spec.maximum:
            problems.append(_invalid("number_lte", where, f"Must be less than or equal to {_num(spec.maximum)}"))
    return problems


def _is_kind(value: Any, kind: str) -> bool:
    if kind in ("string", "uri"):
        return isinstance(value, str)
    if kind == "integer":
        return (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, float) and value.is_integer())
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "array":
        return isinstance(value, list)
    return True


def _kind(value: Any) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object",
            type(None): "null"}.get(type(value), "unknown")


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _invalid(kind: str, where: str, description: str) -> dict[str, str]:
    return {"type": kind, "field": where, "description": description}


def _validation_failed(problems: list[dict[str, str]]) -> Problem:
    detail = "".join(f"- {p['field']}: {p['description']}\n" for p in problems)
    return Problem(422, "Input validation failed", detail, extra={"invalid_fields": problems})


def _prefer_wait(header: str | None) -> float:
    """Seconds asked for by ``Prefer: wait`` or ``wait=N`` (capped at 60); 0 when absent or malformed."""
    for part in (header or "").split(","):
        name, _, value = part.strip().partition("=")
        if name.strip().lower() != "wait":
            continue
        if not value:
            return MAX_WAIT_S
        try:
            return float(min(max(int(value.strip()), 1), MAX_WAIT_S))
        except ValueError:
            return 0
    return 0


# --- turning requests into board jobs and jobs into predictions --------------------------------------


def _given(model: ReplicateModel, raw: Mapping[str, Any]) -> dict[str, Any]:
    """The checked input with defaults filled in, nulls dropped and ``4.0`` read as the integer it is."""
    given = {name: spec.default for name, spec in model.fields.items() if spec.default is not None}
    for name, value in raw.items():
        if value is None:
            continue
        spec = model.fields.get(name)
        given[name] = int(value) if spec is not None and spec.kind == "integer" and isinstance(value, float) else value
    return given


def _maker_inputs(model: ReplicateModel, given: Mapping[str, Any], seed: int) -> dict[str, Any]:
    """The request in the output maker's (fal-style) words: how many files, of what size and format."""
    inputs: dict[str, Any] = {"prompt": given.get("prompt"), "seed": seed}
    if model.family == "flux":
        inputs.update(num_images=given["num_outputs"], aspect_ratio=given["aspect_ratio"],
                      output_format=given["output_format"],
                      resolution="0.5K" if given.get("megapixels") == "0.25" else "1K")
    elif model.family == "flux-pro":
        inputs.update(num_images=1, output_format=given["output_format"], resolution="1K",
                      aspect_ratio=given["aspect_ratio"])
        if given["aspect_ratio"] == "custom":
            inputs["image_size"] = {"width": given.get("width", 1024), "height": given.get("height", 1024)}
    elif model.family == "seedream":
        # With sequential generation on, the model makes up to max_images (the maker caps it at 8).
        count = given["max_images"] if given["sequential_image_generation"] == "auto" else 1
        inputs.update(num_images=count, output_format="jpeg", aspect_ratio=given["aspect_ratio"])
        if given["size"] == "custom":
            inputs["image_size"] = {"width": given["width"], "height": given["height"]}
        else:
            inputs["resolution"] = given["size"]
    else:  # video-01: 6 s of 720p, no soundtrack
        inputs.update(duration=6, resolution="720p", aspect_ratio="16:9", generate_audio=False)
    return inputs


def _output(model: ReplicateModel, made: Mapping[str, Any]) -> Any:
    """The maker's output as Replicate's: a list of file URLs, or one URL for single-output models."""
    if "video" in made:
        urls = [made["video"]["url"]]
    else:
        urls = [image["url"] for image in made.get("images") or []]
    if model.single_output:
        return urls[0] if urls else None
    return urls


def _error_text(model: ReplicateModel, error_type: str, message: str) -> str:
    if error_type == "content_policy_violation":
        return model.nsfw_error
    if error_type == "runner_disconnected":
        return _INTERRUPTED
    return message


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _unauthenticated() -> Problem:
    return Problem(401, "Unauthenticated", "You did not pass a valid authentication token")


def _not_found() -> Problem:
    return Problem(404, "Not found", "The requested resource could not be found.")


def _server_error() -> Problem:
    return Problem(500, "Internal Server Error", "Something went wrong on our end. Please try again.")
