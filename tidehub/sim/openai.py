"""The OpenAI API under ``/v1``: models, chat (with SSE), embeddings, images, audio, videos.

A second protocol of the same simulator: any channel key is accepted as ``Authorization: Bearer
<key>`` and the channel's knobs apply as on the fal side. Faults come in the same order: unknown key
(401); then, on every endpoint, ``latency_s``, ``hang_rate`` (held, then 504), ``outage`` (503); on
the creating endpoints (every POST), the model (404 ``model_not_found``) and the input (400 naming
``param``) are checked before the 429 burst and ``submit_error_rate`` (500 or 503), so only valid
requests count towards rate limits. Every error is in OpenAI's envelope
``{"error": {"message", "type", "param", "code"}}``.

Chat is answered from ``language`` (deterministic, cached), with no server work worth the name;
streams pace their chunks on the channel's time scale, and ``[sim:cut]`` in the last user message
drops the connection half way through a stream. Images and videos are real files from the artifact
makers (videos run on the shared ``JobBoard``, so queueing, ``max_concurrent``, run failures and
prompt markers behave as on fal); transcription measures the uploaded audio with PyAV.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import logging
import math
import secrets
import sys
import time
import uuid
import zlib
from array import array
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from PIL import Image
from starlette.requests import Request
from starlette.responses import FileResponse, Response, StreamingResponse
from starlette.routing import Route

from tidehub.sim import artifacts, language
from tidehub.sim.channels import Channel, Channels
from tidehub.sim.fal import json_response
from tidehub.sim.files import FileStore, StoredFile
from tidehub.sim.forms import Form, FormError, UploadedFile, is_form, parse_form
from tidehub.sim.hangs import hold
from tidehub.sim.jobs import Job, JobBoard, Phase
from tidehub.sim.models import SimModel
from tidehub.sim.params import ImageSpec, cache_key
from tidehub.sim.transcripts import make_transcript

log = logging.getLogger(__name__)

#: In the last user message of a streamed chat: the server hangs up half way through the stream.
STREAM_CUT_MARKER = "[sim:cut]"

#: Simulated seconds (scaled by the channel's ``time_scale``) before a stream's first token, and per token.
FIRST_TOKEN_S = 0.3
PER_TOKEN_S = 0.02
#: Simulated seconds of transcription per second of audio, plus a fixed start-up.
TRANSCRIBE_START_S = 0.5
TRANSCRIBE_PER_AUDIO_S = 0.1
#: Tokens an input image costs in an image edit (OpenAI bills by tile; one figure is enough here).
EDIT_IMAGE_TOKENS = 194
#: Tokens an ``image_url`` part of a chat message costs.
CHAT_IMAGE_TOKENS = 85
#: Largest body accepted (OpenAI's own upload limit for audio is 25 MB).
MAX_BODY = 64 * 1024 * 1024

_ROLES = ("system", "developer", "user", "assistant", "tool", "function")
_OVERLOADED = "The server is overloaded or not ready yet."
_SERVER_ERROR = "The server had an error while processing your request. Sorry about that!"


@dataclass(frozen=True, slots=True)
class OpenAIModel:
    """One model of the simulated ``/v1/models`` list and what the endpoints allow it."""

    id: str
    kind: str  # chat | embedding | image | transcribe | video
    created: int
    owned_by: str = "system"
    dims: int = 0  # embeddings: native length
    run_s: float = 0.0  # images: simulated seconds per request; videos: nominal run time
    queue_s: float = 0.0  # videos: nominal time in the queue
    sizes: tuple[str, ...] = ()
    qualities: tuple[str, ...] = ()


MODELS: dict[str, OpenAIModel] = {m.id: m for m in (
    OpenAIModel("gpt-4", "chat", 1687882411, "openai"),
    OpenAIModel("gpt-4o", "chat", 1715367049),
    OpenAIModel("gpt-4o-mini", "chat", 1721172741),
    OpenAIModel("gpt-5-mini", "chat", 1754425928),
    OpenAIModel("text-embedding-3-small", "embedding", 1705948997, dims=1536),
    OpenAIModel("text-embedding-3-large", "embedding", 1705953180, dims=3072),
    OpenAIModel("dall-e-3", "image", 1698785189, run_s=10.0,
                sizes=("1024x1024", "1792x1024", "1024x1792"), qualities=("standard", "hd")),
    OpenAIModel("gpt-image-1", "image", 1745517030, run_s=20.0,
                sizes=("1024x1024", "1536x1024", "1024x1536", "auto"), qualities=("low", "medium", "high", "auto")),
    OpenAIModel("whisper-1", "transcribe", 1677532384, "openai-internal"),
    OpenAIModel("sora-2", "video", 1759708615, queue_s=2.0, run_s=40.0, sizes=("720x1280", "1280x720")),
    OpenAIModel("sora-2-pro", "video", 1759708663, queue_s=3.0, run_s=90.0,
                sizes=("720x1280", "1280x720", "1024x1792", "1792x1024")),
)}

#: gpt-image-1 output tokens by quality, for a square image and for a 3:2 one.
_IMAGE_OUTPUT_TOKENS = {"low": (272, 408), "medium": (1056, 1584), "high": (4160, 6240)}
_VIDEO_SECONDS = ("4", "8", "12")
_AUDIO_FORMATS = ("json", "text", "srt", "verbose_json", "vtt")
_LANGUAGES = {
    "en": "english", "de": "german", "es": "spanish", "fr": "french", "it": "italian", "ja": "japanese",
    "ko": "korean", "nl": "dutch", "pl": "polish", "pt": "portuguese", "ru": "russian", "tr": "turkish",
    "uk": "ukrainian", "zh": "chinese", "ar": "arabic", "hi": "hindi", "sv": "swedish",
}


class APIError(Exception):
    """An OpenAI error answer; raised anywhere in a handler, rendered by the endpoint wrapper."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = dict(headers or {})

    def response(self) -> Response:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        return json_response(body, self.status, self.headers)


class _StreamCut(Exception):
    """Raised inside a chat stream to make the server drop the connection (``[sim:cut]``)."""


class _HideStreamCuts(logging.Filter):
    """uvicorn logs a deliberate cut as an application error; it is not one."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, BaseExceptionGroup):
            cuts, rest = exc.split(_StreamCut)
            return cuts is None or rest is not None
        return not isinstance(exc, _StreamCut)


_STREAM_CUT_FILTER = _HideStreamCuts()

Handler = Callable[[Request, Channel], Awaitable[Response]]


class OpenAIAPI:
    """Request handlers for ``/v1``; channels, jobs and files are shared with the fal side."""

    def __init__(self, channels: Channels, board: JobBoard, files: FileStore, executor: Executor, scratch_dir: Path,
                 stopping: asyncio.Event | None = None) -> None:
        self._channels = channels
        self._board = board
        self._files = files
        self._executor = executor
        self._scratch = scratch_dir
        self._stopping = stopping if stopping is not None else asyncio.Event()
        self._video_models = {
            m.id: SimModel(fal_id=f"openai/videos/{m.id}", capability="video", mode="text-to-video", slug=m.id,
                           queue_s=m.queue_s, run_s=m.run_s)
            for m in MODELS.values() if m.kind == "video"
        }
        uvicorn_log = logging.getLogger("uvicorn.error")
        if _STREAM_CUT_FILTER not in uvicorn_log.filters:
            uvicorn_log.addFilter(_STREAM_CUT_FILTER)

    def routes(self) -> list[Route]:
        """``/v1`` routes; they must come before the fal catch-all submit route."""
        endpoint = self._endpoint
        return [
            Route("/v1/models", endpoint(self.list_models, creates=False), methods=["GET"]),
            Route("/v1/models/{model:path}", endpoint(self.get_model, creates=False), methods=["GET"]),
            Route("/v1/chat/completions", endpoint(self.chat), methods=["POST"]),
            Route("/v1/embeddings", endpoint(self.embeddings), methods=["POST"]),
            Route("/v1/images/generations", endpoint(self.image_generations), methods=["POST"]),
            Route("/v1/images/edits", endpoint(self.image_edits), methods=["POST"]),
            Route("/v1/audio/transcriptions", endpoint(self.transcriptions), methods=["POST"]),
            Route("/v1/audio/translations", endpoint(self.translations), methods=["POST"]),
            Route("/v1/videos", endpoint(self.create_video), methods=["POST"]),
            Route("/v1/videos/{video_id}", endpoint(self.get_video, creates=False), methods=["GET"]),
            Route("/v1/videos/{video_id}/content", endpoint(self.video_content, creates=False), methods=["GET"]),
            Route("/v1/{rest:path}", self.unknown_route, methods=["GET", "POST", "PUT", "PATCH", "DELETE"]),
        ]

    # --- the common path of every request ----------------------------------------------------------

    def _endpoint(self, handler: Handler, *, creates: bool = True) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            channel = self._channel(request)
            if channel is None:
                return _unauthorized(request).response()
            stats = channel.stats
            if creates:
                stats.submits += 1
            elif request.url.path.startswith("/v1/videos/"):
                stats.status_polls += 1
            if channel.behaviour.disturbs_requests and (refused := await self._misbehave(request, channel)):
                return refused
            try:
                return await handler(request, channel)
            except APIError as error:
                return error.response()
            except Exception:
                log.exception("sim: %s %s failed", request.method, request.url.path)
                return APIError(500, _SERVER_ERROR, type="server_error").response()

        return endpoint

    def _channel(self, request: Request) -> Channel | None:
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            return None
        return self._channels.get(key.strip())

    async def _misbehave(self, request: Request, channel: Channel) -> Response | None:
        behaviour = channel.behaviour
        if behaviour.latency_s:
            await asyncio.sleep(behaviour.latency_s)
        if channel.chance(behaviour.hang_rate):
            channel.stats.hangs += 1
            await hold(request, channel.stats, behaviour.hang_s, self._stopping)
            return APIError(504, "Request timed out.", type="server_error", code="timeout").response()
        if behaviour.outage:
            channel.stats.outage_errors += 1
            return APIError(503, _OVERLOADED, type="server_error").response()
        return None

    def _admit(self, channel: Channel) -> None:
        """A valid request: refuse it with 429 or 500/503 when the knobs say so, else count it."""
        behaviour = channel.behaviour
        if channel.rate_limited():
            channel.stats.rate_limited += 1
            wait = behaviour.retry_after_header
            raise APIError(
                429, f"Rate limit reached for requests. Please try again in {wait}s.", type="requests",
                code="rate_limit_exceeded",
                headers={"Retry-After": wait, "retry-after-ms": str(round(behaviour.retry_after_s * 1000))},
            )
        if channel.chance(behaviour.submit_error_rate):
            channel.stats.submit_errors += 1
            if channel.chance(0.5):
                raise APIError(503, _OVERLOADED, type="server_error")
            raise APIError(500, _SERVER_ERROR, type="server_error")
        channel.count_accepted()

    async def unknown_route(self, request: Request) -> Response:
        if self._channel(request) is None:
            return _unauthorized(request).response()
        return APIError(404, f"Invalid URL ({request.method} {request.url.path})").response()

    # --- models ------------------------------------------------------------------------------------

    async def list_models(self, request: Request, channel: Channel) -> Response:
        return json_response({"object": "list", "data": [_model_object(m) for m in MODELS.values()]})

    async def get_model(self, request: Request, channel: Channel) -> Response:
        name = request.path_params["model"]
        model = MODELS.get(name)
        if model is None:
            raise _model_not_found(name)
        return json_response(_model_object(model))

    # --- chat --------------------------------------------------------------------------------------

    async def chat(self, request: Request, channel: Channel) -> Response:
        body = await _json_body(request)
        model = _model(body.get("model"), "chat", "v1/chat/completions")
        messages = body.get("messages")
        if messages is None:
            raise _missing("messages")
        if not isinstance(messages, list):
            raise _wrong_type("messages", "an array", messages)
        if not messages:
            raise APIError(400, "Invalid 'messages': empty array. Expected an array with minimum length 1, but got "
                                "an empty array instead.", param="messages", code="empty_array")
        prompt_tokens = language.REPLY_PRIMING_TOKENS
        question = ""
        for index, message in enumerate(messages):
            text, tokens = _message_text(message, index)
            prompt_tokens += tokens
            if message["role"] == "user" or not question:
                question = text
        _number(body, "temperature", 0, 2)  # checked, then ignored: the simulated model is deterministic
        _number(body, "top_p", 0, 1)
        limit = _integer(body, "max_completion_tokens", 1)
        if limit is None:
            limit = _integer(body, "max_tokens", 1)
        n = _integer(body, "n", 1, 128) or 1
        stream = body.get("stream") or False
        if not isinstance(stream, bool):
            raise _wrong_type("stream", "a boolean", stream)
        options = body.get("stream_options")
        if options is not None and not stream:
            raise APIError(400, "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                           param="stream_options", code="invalid_value")
        if options is not None and not isinstance(options, dict):
            raise _wrong_type("stream_options", "an object", options)
        self._admit(channel)
        answers = []
        for variant in range(n):
            pieces = language.reply(question, variant)
            if limit is not None and len(pieces) > limit:
                answers.append((pieces[:limit], "length"))
            else:
                answers.append((pieces, "stop"))
        completion_tokens = sum(len(pieces) for pieces, _ in answers)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                          "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
        }
        completion_id = f"chatcmpl-{secrets.token_hex(12)}"
        created = int(time.time())
        if stream:
            include_usage = bool(options and options.get("include_usage"))
            cut = STREAM_CUT_MARKER in question
            frames = _chat_frames(completion_id, created, model.id, answers, usage if include_usage else None,
                                  cut, channel.behaviour.scale)
            headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
            return StreamingResponse(frames, media_type="text/event-stream; charset=utf-8", headers=headers)
        return json_response({
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": model.id,
            "choices": [
                {
                    "index": index,
                    "message": {"role": "assistant", "content": "".join(pieces), "refusal": None, "annotations": []},
                    "logprobs": None,
                    "finish_reason": finish,
                }
                for index, (pieces, finish) in enumerate(answers)
            ],
            "usage": usage,
            "service_tier": "default",
            "system_fingerprint": "fp_tidehub_sim",
        })

    # --- embeddings --------------------------------------------------------------------------------

    async def embeddings(self, request: Request, channel: Channel) -> Response:
        body = await _json_body(request)
        model = _model(body.get("model"), "embedding", "v1/embeddings")
        raw = body.get("input")
        if raw is None:
            raise _missing("input")
        texts, tokens = _embedding_inputs(raw)
        dims = model.dims
        if body.get("dimensions") is not None:
            dims = _integer(body, "dimensions", 1, model.dims) or model.dims
        encoding = body.get("encoding_format") or "float"
        if encoding not in ("float", "base64"):
            raise _bad_value("encoding_format", encoding, ("float", "base64"))
        self._admit(channel)
        data = []
        for index, text in enumerate(texts):
            vector: Any = language.embedding(model.id, text, model.dims, dims)
            if encoding == "base64":
                packed = array("f", vector)  # OpenAI's base64 is little-endian float32
                if sys.byteorder == "big":
                    packed.byteswap()
                vector = base64.b64encode(packed.tobytes()).decode()
            data.append({"object": "embedding", "index": index, "embedding": vector})
        return json_response({
            "object": "list", "data": data, "model": model.id,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        })

    # --- images ------------------------------------------------------------------------------------

    async def image_generations(self, request: Request, channel: Channel) -> Response:
        body = await _json_body(request)
        model = _model(body.get("model") or "dall-e-3", "image", "v1/images/generations")
        prompt = _required_text(body.get("prompt"), "prompt")
        request_spec = _image_request(model, body, n_max=1 if model.id == "dall-e-3" else 10)
        self._admit(channel)
        return await self._images(channel, model, prompt, request_spec, input_images=0, revise=model.id == "dall-e-3")

    async def image_edits(self, request: Request, channel: Channel) -> Response:
        form = await _form_body(request)
        model = _model(form.get("model") or "gpt-image-1", "image", "v1/images/edits")
        if model.id != "gpt-image-1":
            raise APIError(400, f"Invalid value: '{model.id}'. Supported values are: 'gpt-image-1'.",
                           param="model", code="invalid_value")
        prompt = _required_text(form.get("prompt"), "prompt")
        images = form.get_files("image")
        if not images:
            raise _missing("image")
        dimensions = [_image_dimensions(upload, "image") for upload in images]
        for mask in form.get_files("mask"):
            if _image_dimensions(mask, "mask") and not mask.data.startswith(b"\x89PNG"):
                raise APIError(400, "Invalid mask: the mask must be a PNG image.", param="mask", code="invalid_value")
        fields = {name: form.get(name) for name in ("n", "size", "quality", "response_format", "output_format")}
        if fields["n"] is not None:
            fields["n"] = _form_int(fields["n"], "n")
        request_spec = _image_request(model, fields, n_max=10, auto_from=dimensions[0])
        self._admit(channel)
        return await self._images(channel, model, prompt, request_spec, input_images=len(images), revise=False)

    async def _images(self, channel: Channel, model: OpenAIModel, prompt: str, spec: _ImageRequest, *,
                      input_images: int, revise: bool) -> Response:
        seed = _seed(model.id, prompt, spec.size, spec.quality, str(input_images))
        specs = [ImageSpec(spec.width, spec.height, spec.format, (seed + i) & 0x7FFFFFFF) for i in range(spec.n)]
        renders = asyncio.gather(*(self._files.obtain(cache_key(s), s.extension, s.content_type,
                                                      lambda path, s=s: artifacts.render_image(s, path))
                                   for s in specs))
        stored, _ = await asyncio.gather(renders, asyncio.sleep(model.run_s * channel.behaviour.scale))
        data = []
        for file in stored:
            item: dict[str, Any] = {}
            if spec.response_format == "url":
                item["url"] = self._files.publish(file, f"img-{file.key[:12]}{file.path.suffix}")
            else:
                item["b64_json"] = await self._read_base64(file)
            if revise:
                item["revised_prompt"] = f"A detailed, high-quality rendering of: {prompt}"
            data.append(item)
        data = channel.behaviour.rewrite_files(data)
        answer: dict[str, Any] = {"created": int(time.time()), "data": data}
        if model.id == "gpt-image-1":
            text_tokens = language.count_tokens(prompt)
            image_tokens = input_images * EDIT_IMAGE_TOKENS
            square, wide = _IMAGE_OUTPUT_TOKENS[spec.quality]
            output_tokens = (square if spec.width == spec.height else wide) * spec.n
            answer.update(
                background="opaque", output_format=spec.format, quality=spec.quality,
                size=f"{spec.width}x{spec.height}",
                usage={
                    "input_tokens": text_tokens + image_tokens,
                    "input_tokens_details": {"text_tokens": text_tokens, "image_tokens": image_tokens},
                    "output_tokens": output_tokens,
                    "total_tokens": text_tokens + image_tokens + output_tokens,
                },
            )
        return json_response(answer)

    async def _read_base64(self, file: StoredFile) -> str:
        data = await asyncio.get_running_loop().run_in_executor(self._executor, file.path.read_bytes)
        return base64.b64encode(data).decode()

    # --- audio -------------------------------------------------------------------------------------

    async def transcriptions(self, request: Request, channel: Channel) -> Response:
        return await self._audio(request, channel, "transcribe")

    async def translations(self, request: Request, channel: Channel) -> Response:
        return await self._audio(request, channel, "translate")

    async def _audio(self, request: Request, channel: Channel, task: str) -> Response:
        form = await _form_body(request)
        path = "v1/audio/transcriptions" if task == "transcribe" else "v1/audio/translations"
        model_name = form.get("model")
        if model_name is None:
            raise _missing("model")
        _model(model_name, "transcribe", path)
        uploads = form.get_files("file")
        if not uploads:
            raise _missing("file")
        response_format = form.get("response_format") or "json"
        if response_format not in _AUDIO_FORMATS:
            raise _bad_value("response_format", response_format, _AUDIO_FORMATS)
        granularities = form.get_list("timestamp_granularities") if task == "transcribe" else []
        for value in granularities:
            if value not in ("word", "segment"):
                raise _bad_value("timestamp_granularities", value, ("word", "segment"))
        if granularities and response_format != "verbose_json":
            raise APIError(400, "timestamp_granularities is only supported with response_format=verbose_json.",
                           param="timestamp_granularities", code="invalid_value")
        code = (form.get("language") or "").strip().lower() if task == "transcribe" else "en"
        if code and (len(code) != 2 or not code.isalpha()):
            raise APIError(400, f"Invalid language '{code}'. Language parameter must be specified in ISO-639-1 "
                                "format.", param="language", code="invalid_language_format")
        upload = uploads[0]
        seconds = await asyncio.get_running_loop().run_in_executor(self._executor, _measure, upload, self._scratch)
        if seconds is None:
            raise APIError(400, "Audio file might be corrupted or unsupported", param="file", code="invalid_value")
        self._admit(channel)
        await asyncio.sleep((TRANSCRIBE_START_S + seconds * TRANSCRIBE_PER_AUDIO_S) * channel.behaviour.scale)
        seed = int.from_bytes(hashlib.sha256(upload.data).digest()[:4], "big")
        language_code = code or "en"
        transcript = make_transcript(seconds, seed, "segment", language_code)
        text = transcript["text"]
        segments = [(chunk["timestamp"][0], chunk["timestamp"][1], chunk["text"]) for chunk in transcript["chunks"]]
        usage = {"type": "duration", "seconds": math.ceil(seconds)}
        if response_format == "json":
            return json_response({"text": text, "usage": usage})
        if response_format == "text":
            return Response(text + "\n", media_type="text/plain; charset=utf-8")
        if response_format == "srt":
            return Response(_srt(segments), media_type="text/plain; charset=utf-8")
        if response_format == "vtt":
            return Response(_vtt(segments), media_type="text/plain; charset=utf-8")
        verbose: dict[str, Any] = {
            "task": task,
            "language": _LANGUAGES.get(language_code, language_code),
            "duration": round(seconds, 2),
            "text": text,
        }
        if not granularities or "segment" in granularities:
            verbose["segments"] = [_segment(index, start, end, words) for index, (start, end, words) in
                                   enumerate(segments)]
        if "word" in granularities:
            words = make_transcript(seconds, seed, "word", language_code)["chunks"]
            verbose["words"] = [
                {"word": chunk["text"].strip(), "start": chunk["timestamp"][0], "end": chunk["timestamp"][1]}
                for chunk in words
            ]
        verbose["usage"] = usage
        return json_response(verbose)

    # --- videos ------------------------------------------------------------------------------------

    async def create_video(self, request: Request, channel: Channel) -> Response:
        fields: dict[str, Any]
        references: list[UploadedFile] = []
        if is_form(request.headers.get("content-type", "")):
            form = await _form_body(request)
            fields = {name: form.get(name) for name in ("prompt", "model", "seconds", "size")}
            references = form.get_files("input_reference")
        else:
            fields = await _json_body(request)
        model = _model(fields.get("model") or "sora-2", "video", "v1/videos")
        prompt = _required_text(fields.get("prompt"), "prompt")
        seconds = str(fields.get("seconds") or "4")
        if seconds not in _VIDEO_SECONDS:
            raise _bad_value("seconds", seconds, _VIDEO_SECONDS)
        size = str(fields.get("size") or "720x1280")
        if size not in model.sizes:
            raise _bad_value("size", size, model.sizes)
        width, height = (int(part) for part in size.split("x"))
        for reference in references:
            if _image_dimensions(reference, "input_reference") != (width, height):
                raise APIError(400, "Inpaint image must match the requested width and height",
                               param="input_reference", code="invalid_value")
        self._admit(channel)
        inputs = {
            "prompt": prompt,
            "model": model.id,
            "size": size,
            "duration": int(seconds),
            "resolution": f"{min(width, height)}p",
            "aspect_ratio": f"{width}:{height}",
            "generate_audio": True,
            "seed": _seed(model.id, prompt, size, seconds),
        }
        job, _ = self._board.submit(self._video_models[model.id], inputs, channel=channel,
                                    failure=channel.plan_failure(inputs))
        return json_response(self._video_object(job, created=True))

    async def get_video(self, request: Request, channel: Channel) -> Response:
        job = self._find_video(request, channel)
        body = self._video_object(job)
        headers = {}
        if body["status"] in ("queued", "in_progress"):
            headers["openai-poll-after-ms"] = str(max(10, round(1000 * channel.behaviour.scale)))
        return json_response(body, headers=headers)

    async def video_content(self, request: Request, channel: Channel) -> Response:
        job = self._find_video(request, channel)
        variant = request.query_params.get("variant") or "video"
        if variant not in ("video", "thumbnail", "spritesheet"):
            raise _bad_value("variant", variant, ("video", "thumbnail", "spritesheet"))
        if self._board.phase(job) is not Phase.DONE or job.failure is not None or job.output is None:
            raise APIError(404, f"Video is not ready yet, use GET /v1/videos/{_video_id(job)} to check status.",
                           code="video_not_ready")
        if variant == "video":
            path = self._files.path_for_url(job.output["video"]["url"])
            if path is None:
                raise APIError(404, "The video content has expired.", code="video_expired")
            return FileResponse(path, media_type="video/mp4")
        width, height = (int(part) for part in job.inputs["size"].split("x"))
        fmt = "webp" if variant == "thumbnail" else "jpeg"
        spec = ImageSpec(width, height, fmt, job.inputs["seed"])
        file = await self._files.obtain(cache_key(spec), spec.extension, spec.content_type,
                                        lambda path: artifacts.render_image(spec, path))
        return FileResponse(file.path, media_type=spec.content_type)

    def _find_video(self, request: Request, channel: Channel) -> Job:
        video_id = request.path_params["video_id"]
        job = None
        if video_id.startswith("video_"):
            try:
                job = self._board.get(str(uuid.UUID(hex=video_id.removeprefix("video_"))))
            except ValueError:
                job = None
        if job is None or job.channel is not channel or not job.model.fal_id.startswith("openai/videos/"):
            raise APIError(404, f"Video with id '{video_id}' not found.", param="video_id", code="video_not_found")
        return job

    def _video_object(self, job: Job, created: bool = False) -> dict[str, Any]:
        inputs = job.inputs
        body: dict[str, Any] = {
            "id": _video_id(job),
            "object": "video",
            "model": inputs["model"],
            "status": "queued",
            "progress": 0,
            "created_at": int(job.submitted_at),
            "completed_at": None,
            "expires_at": None,
            "error": None,
            "prompt": inputs["prompt"],
            "remixed_from_video_id": None,
            "seconds": str(inputs["duration"]),
            "size": inputs["size"],
        }
        if created:
            return body
        phase = self._board.phase(job)
        if phase is Phase.RUNNING:
            span = max(job.ends_at - job.starts_at, 1e-9)
            done = (self._board.now() - job.starts_at) / span
            body.update(status="in_progress", progress=int(min(max(done, 0.0), 0.99) * 100))
        elif phase is Phase.DONE:
            failure = job.failure
            finished = int(job.finished_at or job.ends_at)
            if failure is None:
                body.update(status="completed", progress=100, completed_at=finished,
                            expires_at=finished + int(self._files.ttl_s))
            else:
                body.update(status="failed", completed_at=finished,
                            error={"code": failure.error_type, "message": failure.message})
        return body


# --- request reading ---------------------------------------------------------------------------------


async def _read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_BODY:
        raise APIError(413, f"Request body too large; the limit is {MAX_BODY} bytes.", code="request_too_large")
    return await request.body()


async def _json_body(request: Request) -> dict[str, Any]:
    raw = await _read_body(request)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise APIError(400, "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
                            "using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was "
                            "sent was not valid JSON.)") from None
    if not isinstance(body, dict):
        raise APIError(400, "The request body must be a JSON object.")
    return body


async def _form_body(request: Request) -> Form:
    content_type = request.headers.get("content-type", "")
    if not is_form(content_type):
        raise APIError(400, "This endpoint expects a multipart/form-data body.")
    try:
        return parse_form(content_type, await _read_body(request))
    except FormError as exc:
        raise APIError(400, f"Could not parse multipart form: {exc}") from None


# --- validation --------------------------------------------------------------------------------------


def _model(value: Any, kind: str, path: str) -> OpenAIModel:
    if value is None:
        raise APIError(400, "you must provide a model parameter", param="model", code="missing_required_parameter")
    if not isinstance(value, str):
        raise _wrong_type("model", "a string", value)
    model = MODELS.get(value)
    if model is None:
        raise _model_not_found(value)
    if model.kind != kind:
        raise APIError(400, f"The model `{value}` is not supported by {path}; use a {kind} model.",
                       param="model", code="invalid_value")
    return model


def _model_not_found(name: str) -> APIError:
    return APIError(404, f"The model `{name}` does not exist or you do not have access to it.", code="model_not_found")


def _unauthorized(request: Request) -> APIError:
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        message = ("You didn't provide an API key. You need to provide your API key in an Authorization header "
                   "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).")
    else:
        key = key.strip()
        shown = f"{key[:3]}{'*' * max(0, len(key) - 7)}{key[-4:]}" if len(key) > 8 else "*" * len(key)
        message = f"Incorrect API key provided: {shown}."
    return APIError(401, message, code="invalid_api_key")


def _missing(param: str) -> APIError:
    return APIError(400, f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter")


def _wrong_type(param: str, expected: str, value: Any) -> APIError:
    got = {bool: "a boolean", int: "an integer", float: "a decimal", str: "a string", list: "an array",
           dict: "an object", type(None): "null"}.get(type(value), "something else")
    return APIError(400, f"Invalid type for '{param}': expected {expected}, but got {got} instead.",
                    param=param, code="invalid_type")


def _bad_value(param: str, value: Any, allowed: tuple[str, ...]) -> APIError:
    listed = ", ".join(f"'{a}'" for a in allowed[:-1]) + f", and '{allowed[-1]}'" if len(allowed) > 1 else \
        f"'{allowed[0]}'"
    return APIError(400, f"Invalid value: '{value}'. Supported values are: {listed}.", param=param,
                    code="invalid_value")


def _required_text(value: Any, param: str) -> str:
    if value is None:
        raise _missing(param)
    if not isinstance(value, str):
        raise _wrong_type(param, "a string", value)
    if not value.strip():
        raise APIError(400, f"Invalid '{param}': empty string. Expected a string with minimum length 1.",
                       param=param, code="empty_string")
    return value


def _number(body: Mapping[str, Any], param: str, low: float, high: float) -> float | None:
    value = body.get(param)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _wrong_type(param, "a number", value)
    if not low <= value <= high:
        raise APIError(400, f"Invalid '{param}': expected a value between {low} and {high}, but got {value} "
                            "instead.", param=param, code="invalid_value")
    return float(value)


def _integer(body: Mapping[str, Any], param: str, low: int, high: int | None = None) -> int | None:
    value = body.get(param)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _wrong_type(param, "an integer", value)
    if value < low:
        raise APIError(400, f"Invalid '{param}': integer below minimum value. Expected a value >= {low}, but got "
                            f"{value} instead.", param=param, code="integer_below_min_value")
    if high is not None and value > high:
        raise APIError(400, f"Invalid '{param}': integer above maximum value. Expected a value <= {high}, but got "
                            f"{value} instead.", param=param, code="integer_above_max_value")
    return value


def _form_int(value: str, param: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise _wrong_type(param, "an integer", value) from None


def _message_text(message: Any, index: int) -> tuple[str, int]:
    """A chat message's text and the prompt tokens it costs; 400 naming the bad field otherwise."""
    where = f"messages[{index}]"
    if not isinstance(message, dict):
        raise _wrong_type(where, "an object", message)
    role = message.get("role")
    if role is None:
        raise _missing(f"{where}.role")
    if role not in _ROLES:
        raise _bad_value(f"{where}.role", role, _ROLES)
    content = message.get("content")
    if content is None and not (role == "assistant" and (message.get("tool_calls") or message.get("function_call"))):
        raise _missing(f"{where}.content")
    if role == "tool" and not message.get("tool_call_id"):
        raise _missing(f"{where}.tool_call_id")
    tokens = language.MESSAGE_OVERHEAD_TOKENS + (1 if message.get("name") else 0)
    if isinstance(content, str):
        text = content
    elif isinstance(content, list):
        texts = []
        for part_index, part in enumerate(content):
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise _missing(f"{where}.content[{part_index}].type")
            if part["type"] in ("text", "refusal"):
                texts.append(str(part.get(part["type"]) or ""))
            elif part["type"] == "image_url":
                tokens += CHAT_IMAGE_TOKENS
        text = "\n".join(texts)
    elif content is None:
        text = ""
    else:
        raise _wrong_type(f"{where}.content", "a string or an array", content)
    for call in message.get("tool_calls") or []:
        if isinstance(call, dict) and isinstance(call.get("function"), dict):
            tokens += language.count_tokens(str(call["function"].get("arguments") or ""))
    return text, tokens + language.count_tokens(text)


def _embedding_inputs(raw: Any) -> tuple[list[str], int]:
    """The texts to embed (token arrays stand for themselves) and the tokens they cost."""
    if isinstance(raw, str):
        items: list[Any] = [raw]
    elif isinstance(raw, list) and raw and all(isinstance(t, int) and not isinstance(t, bool) for t in raw):
        items = [raw]
    elif isinstance(raw, list):
        items = raw
    else:
        raise _wrong_type("input", "a string or an array", raw)
    if not items or len(items) > 2048:
        raise APIError(400, "Invalid 'input': expected between 1 and 2048 inputs.", param="input", code="invalid_value")
    texts: list[str] = []
    tokens = 0
    for index, item in enumerate(items):
        if isinstance(item, str):
            if not item:
                raise APIError(400, f"Invalid 'input[{index}]': empty string.", param="input", code="invalid_value")
            texts.append(item)
            tokens += language.count_tokens(item)
        elif isinstance(item, list) and item and all(isinstance(t, int) and not isinstance(t, bool) for t in item):
            texts.append("\x00tokens:" + ",".join(map(str, item)))
            tokens += len(item)
        else:
            raise _wrong_type(f"input[{index}]", "a string or an array of integers", item)
    return texts, tokens


@dataclass(frozen=True, slots=True)
class _ImageRequest:
    n: int
    size: str
    width: int
    height: int
    quality: str
    format: str
    response_format: str


def _image_request(model: OpenAIModel, body: Mapping[str, Any], n_max: int,
                   auto_from: tuple[int, int] | None = None) -> _ImageRequest:
    n = _integer(body, "n", 1, n_max) or 1
    size = body.get("size") or model.sizes[0]
    if size not in model.sizes:
        raise _bad_value("size", size, model.sizes)
    if size == "auto":
        width, height = auto_from or (1024, 1024)
        size = "1536x1024" if width > height * 1.2 else "1024x1536" if height > width * 1.2 else "1024x1024"
    width, height = (int(part) for part in size.split("x"))
    quality = body.get("quality") or model.qualities[0]
    if quality not in model.qualities:
        raise _bad_value("quality", quality, model.qualities)
    if quality == "auto":
        quality = "medium"
    if model.id == "gpt-image-1":
        if body.get("response_format") not in (None, "b64_json"):
            raise APIError(400, "Unknown parameter: 'response_format'. gpt-image-1 always returns b64_json.",
                           param="response_format", code="unknown_parameter")
        response_format = "b64_json"
        fmt = body.get("output_format") or "png"
        if fmt not in ("png", "jpeg", "webp"):
            raise _bad_value("output_format", fmt, ("png", "jpeg", "webp"))
    else:
        response_format = body.get("response_format") or "url"
        if response_format not in ("url", "b64_json"):
            raise _bad_value("response_format", response_format, ("url", "b64_json"))
        fmt = "png"
    return _ImageRequest(n, size, width, height, quality, fmt, response_format)


def _image_dimensions(upload: UploadedFile, param: str) -> tuple[int, int]:
    """Width and height of an uploaded PNG, JPEG or WebP (read from its header); 400 otherwise."""
    data = upload.data
    if not (data.startswith(b"\x89PNG") or data.startswith(b"\xff\xd8\xff")
            or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")):
        raise APIError(400, f"Invalid file '{param}': unsupported mimetype ('{upload.content_type}'). Supported file "
                            "formats are 'image/jpeg', 'image/png', and 'image/webp'.", param=param,
                       code="invalid_image_format")
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except Exception:
        raise APIError(400, f"Invalid file '{param}': the image could not be decoded.", param=param,
                       code="invalid_image") from None


# --- rendering ---------------------------------------------------------------------------------------


def _model_object(model: OpenAIModel) -> dict[str, Any]:
    return {"id": model.id, "object": "model", "created": model.created, "owned_by": model.owned_by}


async def _chat_frames(completion_id: str, created: int, model: str, answers: list[tuple[tuple[str, ...], str]],
                       usage: dict[str, Any] | None, cut: bool, scale: float) -> AsyncIterator[bytes]:
    """The SSE body of a streamed chat completion: role chunk, one chunk per token, finish, usage, [DONE]."""
    head = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
            "service_tier": "default", "system_fingerprint": "fp_tidehub_sim"}
    with_usage = usage is not None

    def frame(choices: list[dict[str, Any]]) -> bytes:
        chunk = {**head, "choices": choices}
        if with_usage:
            chunk["usage"] = None
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    def choice(index: int, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}

    await asyncio.sleep(FIRST_TOKEN_S * scale)
    for index in range(len(answers)):
        yield frame([choice(index, {"role": "assistant", "content": "", "refusal": None})])
    longest = max(len(pieces) for pieces, _ in answers)
    cut_at = longest // 2 if cut else -1
    pause = PER_TOKEN_S * scale
    for position in range(longest):
        if position == cut_at:
            raise _StreamCut("the client asked for a cut stream ([sim:cut])")
        for index, (pieces, _) in enumerate(answers):
            if position < len(pieces):
                yield frame([choice(index, {"content": pieces[position]})])
        await asyncio.sleep(pause)
    for index, (_, finish) in enumerate(answers):
        yield frame([choice(index, {}, finish)])
    if usage is not None:
        yield b"data: " + orjson.dumps({**head, "choices": [], "usage": usage}) + b"\n\n"
    yield b"data: [DONE]\n\n"


def _segment(index: int, start: float, end: float, text: str) -> dict[str, Any]:
    return {
        "id": index,
        "seek": int(start // 30) * 3000,
        "start": start,
        "end": end,
        "text": text,
        "tokens": [50364 + zlib.crc32(word.encode()) % 50000 for word in text.split()],
        "temperature": 0.0,
        "avg_logprob": -0.25,
        "compression_ratio": 1.3,
        "no_speech_prob": 0.01,
    }


def _timestamp(seconds: float, separator: str) -> str:
    millis = round(seconds * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def _srt(segments: list[tuple[float, float, str]]) -> str:
    return "".join(
        f"{number}\n{_timestamp(start, ',')} --> {_timestamp(end, ',')}\n{text.strip()}\n\n"
        for number, (start, end, text) in enumerate(segments, start=1)
    )


def _vtt(segments: list[tuple[float, float, str]]) -> str:
    cues = "".join(f"{_timestamp(start, '.')} --> {_timestamp(end, '.')}\n{text.strip()}\n\n"
                   for start, end, text in segments)
    return "WEBVTT\n\n" + cues


def _measure(upload: UploadedFile, scratch: Path) -> float | None:
    """Seconds of audio in an upload (PyAV reads it from a scratch file); None when it is not media."""
    suffix = Path(upload.filename).suffix[:8] if upload.filename else ""
    path = scratch / f"upload-{secrets.token_hex(8)}{suffix}"
    try:
        path.write_bytes(upload.data)
        seconds = artifacts.probe_duration(path)
    except ValueError:
        return None
    finally:
        path.unlink(missing_ok=True)
    return seconds if seconds > 0 else None


def _video_id(job: Job) -> str:
    return f"video_{uuid.UUID(job.id).hex}"


def _seed(*parts: str) -> int:
    return int.from_bytes(hashlib.sha256("\x00".join(parts).encode()).digest()[:4], "big") & 0x7FFFFFFF

