"""nexus, an aggregator of many vendors behind one key, mounted under ``/nexus``.

- ``POST /nexus/v1/video/create`` + ``GET /nexus/v1/video/query?id=``: nexus's "unified" video format
  (veo and sora models, ids like ``veo3.1-fast:1757555257-<hex>``);
- ``/nexus/v1/videos`` (+ ``/{id}``, ``/{id}/download``, ``/{id}/content``): OpenAI's video format; veo
  models (``veo_3_1-fast``, sizes like ``16x9``) are handled here, sora-2 by the OpenAI surface's code;
- ``POST /nexus/v1/images/generations``: OpenAI's image models plus flux and doubao-seedream;
- ``/nexus/v1/chat/completions``, ``/embeddings``, ``/models``, ``/images/edits``, ``/audio/...``: the
  OpenAI surface's handlers, unchanged (its documentation names chat and image edits; audio is the catalog's
  whisper-1 route through nexus);
- ``/nexus/mj/...``: the Midjourney proxy API with Bearer auth (``midjourney.py``).

Channels, knobs, jobs and files are the sim's shared ones; the key is ``Authorization: Bearer <key>``.
nexus looks like a new-api deployment, so its errors are new-api's: OpenAI's envelope with
`` (request id: ...)`` after the message. The knobs come out in the messages its documentation lists:

- a 429 burst: 429 ``当前分组上游负载已饱和，请稍后再试`` (new-api rewrites every upstream 429 to this
  text, as public issue reports show; the ``Retry-After`` header is the sim's addition);
- ``submit_error_rate``: 500 ``HTTP 500 Internal Server Error``; ``outage``: 503; a hang: 504 ``timeout``;
- an unknown model: 400 ``model not found`` (the status is a guess);
- ``[sim:content-policy]``: 400 ``content policy violation`` on an image call, a failed task otherwise;
- a retryable run failure (``[sim:flaky]``, ``run_failure_rate``): a task failed with ``timeout``.
"""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tidehub.sim.channels import CONTENT_POLICY_MARKER, Channel, Channels
from tidehub.sim.errors import RunFailure
from tidehub.sim.fal import json_response
from tidehub.sim.files import FileStore
from tidehub.sim.forms import is_form
from tidehub.sim.jobs import Job, JobBoard, Phase
from tidehub.sim.midjourney import MidjourneyAPI, disturbance
from tidehub.sim.models import SimModel
from tidehub.sim.openai import (
    APIError,
    OpenAIAPI,
    OpenAIModel,
    _bad_value,
    _form_body,
    _image_request,
    _integer,
    _json_body,
    _missing,
    _required_text,
    _seed,
    _wrong_type,
)

PREFIX = "/nexus"
SATURATED = "当前分组上游负载已饱和，请稍后再试"
MODEL_NOT_FOUND = "model not found"
CONTENT_POLICY = "content policy violation"
SERVER_ERROR = "HTTP 500 Internal Server Error"
TIMEOUT = "timeout"
#: Paths whose requests count as status polls in the sim's stats.
_POLLED = (f"{PREFIX}/v1/video/query", f"{PREFIX}/v1/videos/")


@dataclass(frozen=True, slots=True)
class VideoCreateModel:
    """A model of ``/v1/video/create``: its family, the durations it takes (seconds) and its timing."""

    id: str
    family: str  # veo | sora
    min_s: int
    max_s: int
    default_s: int
    max_images: int = 3
    ratios: bool = True  # veo2 ignores aspect_ratio ("only veo3 supports it")
    queue_s: float = 3.0
    run_s: float = 45.0


#: Durations: the nexus documentation's table for veo2-fast, veo3.1-fast and sora-2-all; Google's 4-8 s for the
#: other veo models and the sora table's range for sora-2-pro-all (guesses).
CREATE_MODELS: dict[str, VideoCreateModel] = {m.id: m for m in (
    VideoCreateModel("veo2-fast", "veo", 5, 10, 5, ratios=False, run_s=30.0),
    VideoCreateModel("veo3-fast", "veo", 4, 8, 8, run_s=40.0),
    VideoCreateModel("veo3.1", "veo", 4, 8, 8, run_s=60.0),
    VideoCreateModel("veo3.1-fast", "veo", 5, 10, 8, run_s=40.0),
    VideoCreateModel("veo3.1-pro", "veo", 4, 8, 8, run_s=90.0),
    VideoCreateModel("sora-2-all", "sora", 5, 20, 10, max_images=1, queue_s=5.0, run_s=60.0),
    VideoCreateModel("sora-2-pro-all", "sora", 5, 20, 10, max_images=1, queue_s=8.0, run_s=120.0),
)}
#: sora's ``size`` on ``/v1/video/create`` as the rendered short edge.
SORA_SIZES = {"small": "480p", "medium": "720p", "large": "1080p"}

#: Veo on ``/v1/videos`` (OpenAI's format): model -> rendered resolution.
VEO_VIDEOS = {"veo_3_1": "720p", "veo_3_1-fast": "720p", "veo_3_1-4K": "4k", "veo_3_1-fast-4K": "4k"}
_VEO_SIZES = ("16x9", "9x16")
_VEO_SECONDS = ("4", "6", "8")

#: Image models nexus adds to OpenAI's (dall-e-3 and gpt-image-1 are the OpenAI surface's own).
IMAGE_MODELS: dict[str, OpenAIModel] = {m.id: m for m in (
    OpenAIModel("flux-schnell", "image", 1722470400, "nexus", run_s=2.0,
                sizes=("1024x1024", "1024x768", "768x1024", "1344x768", "768x1344"), qualities=("standard",)),
    OpenAIModel("flux-dev", "image", 1722470400, "nexus", run_s=8.0,
                sizes=("1024x1024", "1024x768", "768x1024", "1344x768", "768x1344"), qualities=("standard",)),
    OpenAIModel("flux-pro", "image", 1722470400, "nexus", run_s=12.0,
                sizes=("1024x1024", "1024x768", "768x1024", "1344x768", "768x1344"), qualities=("standard",)),
    OpenAIModel("doubao-seedream-4-0-250828", "image", 1756339200, "nexus", run_s=10.0,
                sizes=("1024x1024", "2048x2048", "2304x1728", "1728x2304"), qualities=("standard",)),
    OpenAIModel("doubao-seedream-4-5-251128", "image", 1764288000, "nexus", run_s=12.0,
                sizes=("2048x2048", "1024x1024", "2304x1728", "1728x2304"), qualities=("standard",)),
)}


class NexusAPI(OpenAIAPI):
    """The OpenAI surface's handlers under ``/nexus/v1``, nexus's own video formats, and ``/nexus/mj``."""

    def __init__(self, channels: Channels, board: JobBoard, files: FileStore, executor: Executor, scratch_dir: Path,
                 stopping: asyncio.Event | None = None) -> None:
        super().__init__(channels, board, files, executor, scratch_dir, stopping)
        # Under OpenAI's prefix, so the inherited /videos/{id} handlers find these jobs too.
        self._video_models.update({
            name: SimModel(fal_id=f"openai/videos/{name}", capability="video", mode="text-to-video", slug=name,
                           queue_s=3.0, run_s=45.0)
            for name in VEO_VIDEOS
        })
        self._create_models = {
            m.id: SimModel(fal_id=f"nexus/video/{m.id}", capability="video", mode="text-to-video", slug=m.id,
                           queue_s=m.queue_s, run_s=m.run_s)
            for m in CREATE_MODELS.values()
        }
        self.mj = MidjourneyAPI(PREFIX, "bearer", channels, board, files, self._stopping)

    def routes(self) -> list[Route]:
        v1, endpoint = f"{PREFIX}/v1", self._endpoint
        return [
            Route(f"{v1}/models", endpoint(self.list_models, creates=False), methods=["GET"]),
            Route(f"{v1}/models/{{model:path}}", endpoint(self.get_model, creates=False), methods=["GET"]),
            Route(f"{v1}/chat/completions", endpoint(self.chat), methods=["POST"]),
            Route(f"{v1}/embeddings", endpoint(self.embeddings), methods=["POST"]),
            Route(f"{v1}/images/generations", endpoint(self.image_generations), methods=["POST"]),
            Route(f"{v1}/images/edits", endpoint(self.image_edits), methods=["POST"]),
            Route(f"{v1}/audio/transcriptions", endpoint(self.transcriptions), methods=["POST"]),
            Route(f"{v1}/audio/translations", endpoint(self.translations), methods=["POST"]),
            Route(f"{v1}/video/create", endpoint(self.video_create), methods=["POST"]),
            Route(f"{v1}/video/query", endpoint(self.video_query, creates=False), methods=["GET"]),
            Route(f"{v1}/videos", endpoint(self.create_video), methods=["POST"]),
            Route(f"{v1}/videos/{{video_id}}", endpoint(self.get_video, creates=False), methods=["GET"]),
            Route(f"{v1}/videos/{{video_id}}/download", endpoint(self.video_content, creates=False), methods=["GET"]),
            Route(f"{v1}/videos/{{video_id}}/content", endpoint(self.video_content, creates=False), methods=["GET"]),
            *self.mj.routes(),
            Route(f"{PREFIX}/{{rest:path}}", self.unknown_route, methods=["GET", "POST", "PUT", "PATCH", "DELETE"]),
        ]

    async def aclose(self) -> None:
        await self.mj.aclose()

    # --- nexus's words for the inherited error paths -----------------------------------------------

    def _endpoint(self, handler: Callable[[Request, Channel], Awaitable[Response]], *,
                  creates: bool = True) -> Callable[[Request], Awaitable[Response]]:
        async def in_nexus_words(request: Request, channel: Channel) -> Response:
            if request.url.path.startswith(_POLLED):
                channel.stats.status_polls += 1
            try:
                return await handler(request, channel)
            except APIError as error:
                raise _nexus_error(error) from None

        return super()._endpoint(in_nexus_words, creates=creates)

    async def _misbehave(self, request: Request, channel: Channel) -> Response | None:
        fault = await disturbance(request, channel, self._stopping)
        if fault == "hang":
            return _nexus_error(APIError(504, TIMEOUT, type="upstream_error", code="timeout")).response()
        if fault == "outage":
            return _nexus_error(APIError(503, "HTTP 503 Service Unavailable", type="upstream_error",
                                         code="bad_response_status_code")).response()
        return None

    # --- images ------------------------------------------------------------------------------------

    async def image_generations(self, request: Request, channel: Channel) -> Response:
        body = await _json_body(request)
        name, prompt = body.get("model"), body.get("prompt")
        if isinstance(prompt, str) and CONTENT_POLICY_MARKER in prompt:
            raise APIError(400, CONTENT_POLICY, param="prompt", code="content_policy_violation")
        model = IMAGE_MODELS.get(name) if isinstance(name, str) else None
        if model is None:
            return await super().image_generations(request, channel)  # OpenAI's models, or "model not found"
        prompt = _required_text(prompt, "prompt")
        spec = _image_request(model, body, n_max=4)
        self._admit(channel)
        return await self._images(channel, model, prompt, spec, input_images=0, revise=False)

    # --- /v1/video/create and /v1/video/query ------------------------------------------------------

    async def video_create(self, request: Request, channel: Channel) -> Response:
        body = await _json_body(request)
        name = body.get("model")
        if name is None:
            raise _missing("model")
        model = CREATE_MODELS.get(name) if isinstance(name, str) else None
        if model is None:
            raise APIError(400, MODEL_NOT_FOUND, param="model", code="model_not_found")
        prompt = _required_text(body.get("prompt"), "prompt")
        duration = _integer(body, "duration", model.min_s, model.max_s) or model.default_s
        images = _image_urls(body.get("images"), model.max_images)
        if model.family == "sora":
            portrait = _choice(body, "orientation", ("landscape", "portrait")) == "portrait"
            ratio = "9:16" if portrait else "16:9"
            resolution = SORA_SIZES[_choice(body, "size", ("medium", "small", "large"))]
        else:
            ratio = _choice(body, "aspect_ratio", ("16:9", "9:16")) if model.ratios else "16:9"
            resolution = "1080p" if body.get("enable_upsample") is True else "720p"
        self._admit(channel)
        inputs = {"model": model.id, "prompt": prompt, "duration": duration, "aspect_ratio": ratio,
                  "resolution": resolution, "images": images, "generate_audio": True,
                  "seed": _seed(model.id, prompt, str(duration), ratio, resolution, *images)}
        job, _ = self._board.submit(self._create_models[model.id], inputs, channel=channel,
                                    failure=channel.plan_failure(inputs))
        answer: dict[str, Any] = {"id": _create_id(job), "status": "pending",
                                  "status_update_time": _ms(job.submitted_at)}
        if body.get("enhance_prompt") is True:
            answer["enhanced_prompt"] = f"{prompt.strip()}, cinematic lighting, smooth camera motion"
        return json_response(answer)

    async def video_query(self, request: Request, channel: Channel) -> Response:
        """The nexus documentation shows no finished task; ``video_url`` and ``error`` are guesses (the names public
        client code for this format reads)."""
        task_id = request.query_params.get("id")
        if not task_id:
            raise _missing("id")
        job = self._find_created(task_id, channel)
        if job is None:
            raise APIError(404, "task not found", param="id", code="task_not_exist")
        body: dict[str, Any] = {"id": task_id, "status": "pending", "status_update_time": _ms(job.submitted_at),
                                "video_url": None}
        phase = self._board.phase(job)
        if phase is Phase.RUNNING:
            body.update(status="processing", status_update_time=_ms(job.starts_at))
        elif phase is Phase.DONE:
            body["status_update_time"] = _ms(job.finished_at or job.ends_at)
            if job.failure is None and job.output is not None:
                body.update(status="completed", video_url=job.output["video"]["url"])
            elif job.failure is not None:
                status, _, reason = _failure_words(job.failure)
                body.update(status=status, error=reason)
        return json_response(body)

    def _find_created(self, task_id: str, channel: Channel) -> Job | None:
        try:
            job = self._board.get(str(uuid.UUID(hex=task_id.rpartition("-")[2])))
        except ValueError:
            return None
        if job is None or job.channel is not channel or _create_id(job) != task_id:
            return None
        return job

    # --- /v1/videos (OpenAI's format) --------------------------------------------------------------

    async def create_video(self, request: Request, channel: Channel) -> Response:
        fields = await _fields(request)
        name = fields.get("model")
        resolution = VEO_VIDEOS.get(name) if isinstance(name, str) else None
        if resolution is None:
            return await super().create_video(request, channel)  # sora-2 as OpenAI has it, or "model not found"
        prompt = _required_text(fields.get("prompt"), "prompt")
        size = str(fields.get("size") or _VEO_SIZES[0])
        if size not in _VEO_SIZES:
            raise _bad_value("size", size, _VEO_SIZES)
        seconds = str(fields.get("seconds") or "8")
        if seconds not in _VEO_SECONDS:
            raise _bad_value("seconds", seconds, _VEO_SECONDS)
        self._admit(channel)
        inputs = {"prompt": prompt, "model": name, "size": size, "duration": int(seconds), "resolution": resolution,
                  "aspect_ratio": size.replace("x", ":"), "generate_audio": True,
                  "seed": _seed(name, prompt, size, seconds)}
        job, _ = self._board.submit(self._video_models[name], inputs, channel=channel,
                                    failure=channel.plan_failure(inputs))
        return json_response(self._video_object(job, created=True))

    def _video_object(self, job: Job, created: bool = False) -> dict[str, Any]:
        body = super()._video_object(job, created)
        if body["status"] == "failed" and job.failure is not None:
            _, code, reason = _failure_words(job.failure)
            body["error"] = {"code": code, "message": reason}
        return body


def _nexus_error(error: APIError) -> APIError:
    """An error as nexus (new-api) puts it: its own words for overload, failure and unknown models,
    and a request id after every message."""
    status, message, kind, code, headers = error.status, error.message, error.type, error.code, error.headers
    if status == 429:
        message, kind, code = SATURATED, "new_api_error", None
        headers = {"Retry-After": error.headers["Retry-After"]} if "Retry-After" in error.headers else {}
    elif status in (500, 503) and code != "bad_response_status_code":
        status, message, kind, code = 500, SERVER_ERROR, "upstream_error", "bad_response_status_code"
    elif code == "model_not_found":
        status, message, kind = 400, MODEL_NOT_FOUND, "invalid_request_error"
    return APIError(status, f"{message} (request id: {_request_id()})", type=kind, param=error.param, code=code,
                    headers=headers)


def _failure_words(failure: RunFailure) -> tuple[str, str, str]:
    """A failed run as nexus reports it: (query status, error code, reason)."""
    if failure.error_type == "content_policy_violation":
        return "failed", "content_policy_violation", CONTENT_POLICY
    if failure.error_type == "runner_disconnected":
        return "failed", "timeout", TIMEOUT
    return "error", "internal_error", SERVER_ERROR


async def _fields(request: Request) -> dict[str, Any]:
    """A JSON body, or a form's text fields (``/v1/videos`` takes both)."""
    if is_form(request.headers.get("content-type", "")):
        form = await _form_body(request)
        return {name: form.get(name) for name in form.names()}
    return await _json_body(request)


def _choice(body: dict[str, Any], param: str, allowed: tuple[str, ...]) -> str:
    """The value of an enum parameter; absent means the first allowed one."""
    value = body.get(param)
    if value is None:
        return allowed[0]
    if value not in allowed:
        raise _bad_value(param, value, allowed)
    return str(value)


def _image_urls(value: Any, limit: int) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _wrong_type("images", "an array", value)
    if len(value) > limit:
        raise APIError(400, f"Invalid 'images': at most {limit} images for this model, got {len(value)}.",
                       param="images", code="invalid_value")
    for index, url in enumerate(value):
        if not isinstance(url, str) or not url.startswith(("http://", "https://", "data:image/")):
            raise APIError(400, f"Invalid 'images[{index}]': expected an image URL.", param="images",
                           code="invalid_value")
    return list(value)


def _create_id(job: Job) -> str:
    return f"{job.inputs['model']}:{int(job.submitted_at)}-{uuid.UUID(job.id).hex}"


def _request_id() -> str:
    return f"{time.strftime('%Y%m%d%H%M%S')}{secrets.randbelow(10**9):09d}{secrets.token_hex(4)}"


def _ms(at: float) -> int:
    return int(at * 1000)
