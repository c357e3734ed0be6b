"""nexus, an aggregator: OpenAI-compatible chat, embeddings and images, its own
video formats and Midjourney, all behind one Bearer key.

``base_url`` is nexus's root (``https://api.allapi.store``; a trailing ``/v1`` is accepted). The
catalog's upstream spec picks the surface with ``api`` (kept in ``Job.data`` for ``status``/``result``):

- ``video-create``: ``POST /v1/video/create``, polled at ``GET /v1/video/query?id=``. The catalog input
  arrives shaped for OpenAI's videos (``seconds: "8"``, ``size: "1280x720"``) or for fal's veo
  (``duration: "8s"``, ``aspect_ratio``, ``resolution``, image URLs) and is mapped to nexus's fields;
  what nexus does not take (``generate_audio``, ``negative_prompt``, ``seed``...) is dropped;
- ``videos``: OpenAI's video format at ``/v1/videos``; the MP4 downloads from ``/v1/videos/{id}/download``,
  which wants the Bearer key (``auth_headers_for`` gives it for URLs under the base);
- ``images``, ``chat``, ``embeddings``: synchronous, run as the OpenAI adapter runs them;
- ``mj``: the Midjourney proxy protocol at ``/mj`` (``providers.midjourney``), Bearer key.

The relay uses the inherited ``call`` and ``stream``. nexus is a new-api deployment whose messages
say more than its statuses, so every error read by the OpenAI rules is corrected by its text:
``当前分组上游负载已饱和`` (saturated, retryable), ``model not found`` (another channel may have the
model), ``content policy violation`` (permanent), ``timeout`` (retryable).
"""

from __future__ import annotations

from typing import Any, Mapping
from urllib.parse import quote

import aiohttp

from tidehub.core.ports import Job, JobState, UpstreamError
from tidehub.providers.midjourney import MidjourneyTasks, callback_task_id
from tidehub.providers.openai import SYNC_APIS, OpenAIAdapter, SSEStream, classify

#: Texts of nexus's "the upstreams of your group are at capacity" answer (new-api's, any status).
SATURATION_WORDS = ("负载已饱和", "上游已饱和")
#: Catalog input fields that carry images for image-to-video, in the order nexus's ``images`` wants.
IMAGE_FIELDS = ("first_frame_url", "start_image_url", "image_url", "last_frame_url", "end_image_url", "image_urls",
                "reference_image_urls")
_CREATE_STATES = {"pending": "queued", "processing": "running", "completed": "completed"}


class NexusAdapter(OpenAIAdapter):
    name = "nexus"

    def __init__(self, base_url: str, key: str, *, timeout_s: float = 60.0, max_connections: int = 200,
                 **_ignored: Any) -> None:
        self.root = base_url.rstrip("/").removesuffix("/v1")
        super().__init__(f"{self.root}/v1", key, timeout_s=timeout_s, max_connections=max_connections)
        self.mj = MidjourneyTasks(f"{self.root}/mj", self._http, self.name)

    # --- task-style ---------------------------------------------------------------------------------

    async def submit(self, model: str, payload: dict[str, Any], *, callback_url: str | None = None,
                     spec: Mapping[str, Any] | None = None) -> Job:
        """Only Midjourney posts callbacks; the video formats are polled."""
        api = (spec or {}).get("api", "video-create")
        if api == "mj":
            return await self.mj.submit(payload, callback_url)
        if api in SYNC_APIS:
            return await super().submit(model, payload, spec=spec)
        if api == "video-create":
            body, fields = video_create_body(model, payload)
            try:
                answer = await self._json("POST", "/video/create", body, input_fields=True)
            except UpstreamError as exc:
                raise _renamed(exc, fields) from None
            if not answer.get("id"):
                raise UpstreamError("nexus answered a video submit without an id", retryable=True)
            return Job(ref=str(answer["id"]), data={"api": api})
        if api == "videos":
            body, fields = videos_body(payload)
            try:
                job = await super().submit(model, body, spec={"api": "videos"})
            except UpstreamError as exc:
                raise _renamed(exc, fields) from None
            return Job(ref=job.ref, data={"api": api})
        raise UpstreamError(f"nexus adapter has no api {api!r}", code="model_unavailable")

    async def status(self, job: Job) -> JobState:
        api = job.data.get("api")
        if api == "mj":
            return await self.mj.status(job)
        if api != "video-create":
            state = await super().status(job)
            if state.error is not None:
                state.error = refine(state.error)
            return state
        answer = await self._query(job)
        status = str(answer.get("status") or "")
        if status in ("failed", "error"):
            return JobState("failed", error=_task_error(answer))
        state = _CREATE_STATES.get(status)
        if state is None:
            raise UpstreamError(f"nexus answered an unknown video status {status!r}", retryable=True)
        return JobState(state)  # type: ignore[arg-type]

    async def result(self, job: Job) -> dict[str, Any]:
        api = job.data.get("api")
        if api == "mj":
            return await self.mj.result(job)
        if api == "videos":
            return {"video": {"url": f"{self.base_url}/videos/{job.ref}/download", "content_type": "video/mp4"}}
        if api != "video-create":
            return await super().result(job)
        answer = await self._query(job)
        url = answer.get("video_url") or answer.get("url")
        if answer.get("status") != "completed" or not url:
            raise UpstreamError(f"nexus: video {job.ref} has no video_url yet", retryable=True)
        return {"video": {"url": str(url), "content_type": "video/mp4"}}

    async def cancel(self, job: Job) -> None:
        if job.data.get("api") in ("mj", "video-create"):
            return  # nexus offers no cancel on these surfaces
        await super().cancel(job)

    async def verify_callback(self, headers: Mapping[str, str], body: bytes) -> str:
        """Midjourney's unsigned ``notifyHook``: only the task id (see ``providers.midjourney``)."""
        return callback_task_id(body)

    async def _query(self, job: Job) -> dict[str, Any]:
        return await self._json("GET", f"/video/query?id={quote(job.ref, safe='')}")

    # --- every error through nexus's words ----------------------------------------------------------

    async def _json(self, method: str, path: str, body: dict[str, Any] | None = None, *,
                    input_fields: bool = False) -> dict[str, Any]:
        try:
            return await super()._json(method, path, body, input_fields=input_fields)
        except UpstreamError as exc:
            raise refine(exc) from None

    async def call(self, path: str, body: dict[str, Any] | None = None, *, form: aiohttp.FormData | None = None,
                   method: str = "POST") -> tuple[int, dict[str, str], bytes]:
        try:
            return await super().call(path, body, form=form, method=method)
        except UpstreamError as exc:
            raise refine(exc) from None

    async def stream(self, path: str, body: dict[str, Any]) -> SSEStream:
        try:
            return await super().stream(path, body)
        except UpstreamError as exc:
            raise refine(exc) from None

    @staticmethod
    def classify(status: int, headers: Mapping[str, str], body: bytes) -> UpstreamError | None:
        error = classify(status, headers, body)
        return refine(error) if error is not None else None


def refine(error: UpstreamError) -> UpstreamError:
    """An error read by the OpenAI rules, corrected by what nexus's message says.

    Saturation is ``upstream_saturated`` rather than a rate limit: the whole group is at capacity,
    so the attempt counts and another channel is tried. An unknown model is not the caller's
    mistake (the catalog named it): another channel may well serve it.
    """
    message = error.message
    if message.startswith("openai"):
        message = "nexus" + message[len("openai"):]
    text = message.lower()
    code, retryable, field = error.code, error.retryable, error.field
    if any(word in message for word in SATURATION_WORDS):
        code, retryable = "upstream_saturated", True
    elif "model not found" in text:
        code, retryable, field = "upstream_not_found", True, None
    elif "content policy" in text or code == "content_policy":
        code, retryable = "content_policy", False
    elif code != "invalid_input" and "timeout" in text:
        code, retryable = "upstream_timeout", True
    elif error.status is not None and error.status >= 500:
        retryable = True
    if (message, code, retryable, field) == (error.message, error.code, error.retryable, error.field):
        return error
    return UpstreamError(message, code=code, retryable=retryable, status=error.status, field=field,
                         retry_after=error.retry_after)


def video_create_body(model: str, payload: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """nexus's ``/v1/video/create`` body for a catalog input, and the catalog field behind each of its
    fields (to name the right one when nexus refuses a value)."""
    body: dict[str, Any] = {"model": model, "prompt": payload.get("prompt")}
    fields = {"prompt": "prompt"}
    length = "seconds" if payload.get("seconds") is not None else "duration"
    if payload.get(length) is not None:
        body["duration"] = _whole_seconds(payload[length])
        fields["duration"] = length
    shape = "aspect_ratio" if payload.get("aspect_ratio") else "size"
    portrait = _is_portrait(payload.get(shape))
    if model.startswith("sora"):
        if portrait is not None:
            body["orientation"] = "portrait" if portrait else "landscape"
            fields["orientation"] = shape
    else:
        if portrait is not None:
            body["aspect_ratio"] = "9:16" if portrait else "16:9"
            fields["aspect_ratio"] = shape
        body["enhance_prompt"] = True  # veo takes English prompts only; this makes nexus translate them
        body["enable_upsample"] = payload.get("resolution") in ("1080p", "4k")
    images: list[str] = []
    for name in IMAGE_FIELDS:
        value = payload.get(name)
        found = [value] if isinstance(value, str) else list(value) if isinstance(value, list) else []
        if found and not images:
            fields["images"] = name
        images.extend(str(url) for url in found)
    if images:
        body["images"] = images
    return body, fields


def videos_body(payload: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """OpenAI's video fields for nexus's ``/v1/videos``: sora input passes as it is; veo input becomes
    ``size: "16x9"`` and ``seconds: "8"``. Images would have to be uploaded files, which this adapter
    does not fetch: such input belongs on ``video-create``, so another channel is tried."""
    if any(payload.get(name) for name in IMAGE_FIELDS):
        raise UpstreamError("nexus's /v1/videos takes images as uploaded files; use api video-create for "
                            "image-to-video", code="model_unavailable", retryable=True)
    body = {name: payload[name] for name in ("prompt", "seconds", "size") if payload.get(name) is not None}
    fields = {"prompt": "prompt", "seconds": "seconds", "size": "size"}
    if payload.get("aspect_ratio"):
        body["size"] = str(payload["aspect_ratio"]).replace(":", "x")
        fields["size"] = "aspect_ratio"
    if payload.get("duration") is not None and "seconds" not in body:
        body["seconds"] = str(_whole_seconds(payload["duration"]))
        fields["seconds"] = "duration"
    return body, fields


def _renamed(error: UpstreamError, fields: Mapping[str, str]) -> UpstreamError:
    """Name the catalog field behind the upstream field nexus refused."""
    if error.field and error.field.startswith("input."):
        upstream = error.field.removeprefix("input.").split(".")[0].split("[")[0]
        if upstream in fields:
            error.field = f"input.{fields[upstream]}"
    return error


def _task_error(answer: Mapping[str, Any]) -> UpstreamError:
    reason = answer.get("error") or answer.get("fail_reason") or answer.get("message")
    if isinstance(reason, dict):
        reason = reason.get("message") or reason.get("code")
    return refine(UpstreamError(f"nexus: {reason or 'the video ' + str(answer.get('status'))}", retryable=True))


def _whole_seconds(value: Any) -> Any:
    """``"8s"``, ``"8"`` or ``8`` -> 8; anything else is passed on for nexus to judge."""
    try:
        return int(str(value).strip().lower().removesuffix("s"))
    except ValueError:
        return value


def _is_portrait(shape: Any) -> bool | None:
    """``"9:16"`` or ``"720x1280"`` -> True; None when there is no readable shape."""
    if not isinstance(shape, str):
        return None
    for separator in (":", "x"):
        width, sep, height = shape.partition(separator)
        if sep:
            try:
                return float(width) < float(height)
            except ValueError:
                return None
    return None
