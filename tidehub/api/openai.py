"""The OpenAI-compatible dialect , mounted at ``/v1`` and ``/api/relay/v1``: the official
SDKs work with only ``base_url`` changed. Chat, embeddings, images and audio are relayed calls
(core/relay.py); videos are tasks, shown as OpenAI video objects.

The client's side of OpenAI's wire is here: the paths, the multipart forms read as they arrive,
the SSE response and an error that ends it, and OpenAI's error codes for core's."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

import anyio

import orjson

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartParser
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tidehub.api.dialect import DialectApp, dialect_app
from tidehub.api.files import file_response
from tidehub.api.openapi import (
    STRING, Param, describe, example_name, grouped_by_schema, json_content, one_of, ref, with_model,
)
from tidehub.api.requests import authenticate, capped_body, media_type, read_json_object
from tidehub.api.responses import JSONResponse
from tidehub.errors import BadRequest, InvalidInput, NotFound, PayloadTooLarge, TidehubError, UnsupportedMediaType, quoted
from tidehub.core.ports import RelayAnswer, Upload
from tidehub.core.relay import UnknownModel
from tidehub.core.tasks import Task
from tidehub.gateway import Gateway

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "invalid_request_error", 409: "invalid_request_error", 413: "invalid_request_error",
          415: "invalid_request_error", 429: "rate_limit_error"}
_VIDEO_STATUS = {"queued": "queued", "running": "in_progress", "succeeded": "completed", "failed": "failed",
                 "timeout": "failed", "canceled": "failed"}
#: Multipart fields that may repeat (OpenAI's array syntax).
_ARRAY_FIELDS = ("timestamp_granularities[]", "include[]")
_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
#: Core's error codes where OpenAI has its own word.
_CODES = {"unauthorized": "invalid_api_key", "invalid_input": "invalid_value",
          "content_policy": "content_policy_violation", "upstream_rate_limited": "rate_limit_exceeded"}
#: Where each relay surface is, as "model not found" messages name it.
_PATHS = {"chat": "/chat/completions", "embeddings": "/embeddings", "images": "/images/generations",
          "image-edits": "/images/edits", "transcriptions": "/audio/transcriptions",
          "translations": "/audio/translations", "videos": "/videos"}


#: OpenAI's own response schemas (and the error envelope), copied from tests/openai_spec/ (see its
#: README for the source commit); the relay's document uses them as they are.
COMPONENTS_PATH = Path(__file__).with_name("openai_components.json")


def openai_components() -> dict[str, Any]:
    """The vendored components, in OpenAPI 3.1 terms: a few 3.0 ``nullable: true`` are still in the
    spec (they become ``anyOf [..., null]``). One fix: OpenAI answers ``encoding_format: base64``
    with the embedding as a base64 string, which its ``Embedding`` schema does not allow."""
    schemas = _without_nullable(orjson.loads(COMPONENTS_PATH.read_bytes())["components"]["schemas"])
    vector = schemas["Embedding"]["properties"]["embedding"]
    schemas["Embedding"]["properties"]["embedding"] = {
        "anyOf": [vector, {"type": "string", "description": "base64 of the float32 vector (encoding_format base64)."}]}
    return schemas


def _without_nullable(node: Any) -> Any:
    if isinstance(node, list):
        return [_without_nullable(item) for item in node]
    if not isinstance(node, dict):
        return node
    converted = {key: _without_nullable(value) for key, value in node.items() if key != "nullable"}
    return {"anyOf": [converted, {"type": "null"}]} if node.get("nullable") is True else converted


def relay_body(surface: str, media: tuple[str, ...] = ("application/json",),
               files: dict[str, Any] | None = None) -> Any:
    """The body of ``surface`` for the models the relay serves on it: the catalog's input schema
    with ``model`` beside the inputs (and, in a multipart form, the uploaded files)."""

    def make(gw: Gateway, _: str | None) -> dict[str, Any]:
        served = [(name, ep) for (where, name), ep in gw.relay.models.items() if where == surface]
        variants = []
        for names, schema in grouped_by_schema((name, ep.input_schema) for name, ep in served):
            variant = with_model(schema, names)
            if files:
                variant["properties"].update(files)
                variant["required"] += [name for name in files if name != "mask"]
            variants.append(variant)
        if not variants:
            return {}
        examples = {example_name(name): {"summary": ep.title, "value": {"model": name, **ep.examples[0]}}
                    for name, ep in served if ep.examples}
        return {kind: {"schema": one_of(variants), **({"examples": examples} if kind.endswith("json") else {})}
                for kind in media}

    return make


_UPLOAD = {"type": "string", "format": "binary", "contentMediaType": "application/octet-stream"}
_TRANSCRIPT = {
    "application/json": {"schema": {"anyOf": [
        ref("CreateTranscriptionResponseVerboseJson"), ref("CreateTranscriptionResponseJson")]}},
    "text/plain": {"schema": {**STRING, "description": "response_format text, srt or vtt."}},
}
_TRANSLATION = {
    "application/json": {"schema": {"anyOf": [
        ref("CreateTranslationResponseVerboseJson"), ref("CreateTranslationResponseJson")]}},
    "text/plain": {"schema": {**STRING, "description": "response_format text, srt or vtt."}},
}
#: OpenAI answers invalid input with a 400, never a 422.
STATUSES = {422: 400}
_CALL_ERRORS = (403, 404, 429, 502, 503)
_VIDEO_ID = {"video_id": Param("video_id", STRING, "The id `POST /videos` answered.", where="path")}


def render_error(status: int, code: str, message: str, field: str | None) -> dict[str, Any]:
    kind = _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": field, "code": _CODES.get(code, code)}}


async def _unknown_model(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, UnknownModel)
    hint = f"; did you mean {', '.join(repr(c) for c in exc.close)}?" if exc.close else ""
    message = f"The model {quoted(exc.model)} does not exist or is not available on {_PATHS[exc.surface]}{hint}"
    return JSONResponse(render_error(exc.status, exc.code, message, exc.field), status_code=exc.status)


def render_video(task: Task, retention_s: float) -> dict[str, Any]:
    """A task as OpenAI's ``VideoResource``. A file is served for ``retention_s`` after the task
    finishes; OpenAI has no cancelled status, so a cancelled video is ``failed`` with code ``cancelled``."""
    data = task["input"] or {}
    status = task["status"]
    finished = task["finished_at"]
    error = None
    if status == "canceled":
        error = {"code": "cancelled", "message": task["error_message"] or "cancelled"}
    elif status in ("failed", "timeout"):
        error = {"code": task["error_code"] or status, "message": task["error_message"] or status}
    seconds = data.get("seconds")
    return {
        "id": task["id"],
        "object": "video",
        "model": task["model"],
        "status": _VIDEO_STATUS[status],
        "progress": task["progress"] or 0,
        "created_at": int(task["created_at"]),
        "completed_at": int(finished) if finished else None,
        "expires_at": int(finished + retention_s) if status == "succeeded" and finished else None,
        "prompt": data.get("prompt"),
        "size": data.get("size"),
        "seconds": str(seconds) if seconds is not None else None,
        "remixed_from_video_id": None,
        "error": error,
    }


def render_deleted_video(task: Task) -> dict[str, Any]:
    """``DELETE /videos/{id}`` answers OpenAI's ``DeletedVideoResource``; here it cancels the task,
    so it is ``deleted`` only if the task ended cancelled (the engine may have finished it first)."""
    return {"id": task["id"], "object": "video.deleted", "deleted": task["status"] == "canceled"}


def _respond(answer: RelayAnswer) -> Response:
    # The request's id is Tidehub's own (api/edge.py); the upstream's goes along under another name.
    headers = {"x-upstream-request-id": v for k, v in answer.headers.items() if k == "x-request-id"}
    return Response(answer.body, status_code=answer.status, headers=headers,
                    media_type=answer.headers.get("content-type", "application/json"))


def create_openai_app(gw: Gateway) -> DialectApp:
    relay = gw.relay
    limit = gw.settings.max_upload_bytes

    @describe("List the models", tag="Models", ok=ref("ListModelsResponse"))
    async def models(request: Request) -> JSONResponse:
        principal = await authenticate(gw.auth, request)
        return JSONResponse({"object": "list", "data": [_model(ep) for ep in relay.listed(principal)]})

    @describe("A model", tag="Models", ok=ref("Model"), errors=(404,), path={"model": Param(
        "model", STRING, "A model id from `GET /models`.", where="path",
        example=lambda gw: next((name for _, name in gw.relay.models), None))})
    async def model(request: Request) -> JSONResponse:
        principal = await authenticate(gw.auth, request)
        name = request.path_params["model"]
        for ep in relay.listed(principal):
            if ep.model == name:
                return JSONResponse(_model(ep))
        raise NotFound(f"The model {quoted(name)} does not exist", field="model", code="model_not_found")

    @describe("Create a chat completion", tag="Chat", body=relay_body("chat"), errors=_CALL_ERRORS,
              ok_content={"application/json": {"schema": ref("CreateChatCompletionResponse")},
                          "text/event-stream": {"schema": {**STRING, "description": (
                              "With `stream: true`: `data: <CreateChatCompletionStreamResponse>` events, "
                              "ending in `data: [DONE]`.")}}})
    async def chat(request: Request) -> Response | MeteredStream:
        principal = await authenticate(gw.auth, request)
        body = await read_json_object(request, limit)
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise InvalidInput("stream: must be a boolean", field="stream")
        if not stream:
            return _respond(await relay.call(principal, "chat", body))
        events, close = await relay.stream(principal, body)
        return MeteredStream(events, close)

    def json_call(surface: str, summary: str, tag: str, answer: str) -> Any:
        @describe(summary, tag=tag, body=relay_body(surface), ok=ref(answer), errors=_CALL_ERRORS)
        async def endpoint(request: Request) -> Response:
            principal = await authenticate(gw.auth, request)
            return _respond(await relay.call(principal, surface, await read_json_object(request, limit)))
        return endpoint

    def form_call(surface: str, summary: str, tag: str, files: dict[str, Any], answer: dict[str, Any]) -> Any:
        @describe(summary, tag=tag, body=relay_body("transcriptions" if surface == "translations" else surface,
                                                    ("multipart/form-data",), files),
                  ok_content=answer, errors=_CALL_ERRORS)
        async def endpoint(request: Request) -> Response:
            principal = await authenticate(gw.auth, request)
            fields, files = await _read_form(request, limit)
            wanted = "image" if surface == "image-edits" else "file"
            if not any(f.name.removesuffix("[]") == wanted for f in files):
                raise InvalidInput(f"{wanted}: is required (a file in the multipart form)", field=wanted)
            return _respond(await relay.call_form(principal, surface, fields, files))
        return endpoint

    def as_video(task: Task) -> dict[str, Any]:
        return render_video(task, gw.assets.retention_s)

    @describe("Create a video (a task underneath)", tag="Videos", ok=ref("VideoResource"), errors=(403, 404, 503),
              body=relay_body("videos", ("application/json", "multipart/form-data")))
    async def create_video(request: Request) -> JSONResponse:
        principal = await authenticate(gw.auth, request)
        if media_type(request).startswith("multipart/"):
            fields, files = await _read_form(request, limit)
            if files:
                raise InvalidInput(f"{files[0].name}: reference files are not supported here; send a prompt only",
                                   field=files[0].name)
        else:
            fields = await read_json_object(request, gw.settings.max_body_bytes)
        return JSONResponse(as_video(await relay.submit_video(principal, fields)))

    @describe("A video: its status and progress", tag="Videos", ok=ref("VideoResource"), errors=(404,),
              path=_VIDEO_ID)
    async def get_video(request: Request) -> JSONResponse:
        principal = await authenticate(gw.auth, request)
        return JSONResponse(as_video(await gw.tasks.get(principal, request.path_params["video_id"])))

    @describe("Delete a video: cancels its task", tag="Videos", ok=ref("DeletedVideoResource"), errors=(404, 409),
              path=_VIDEO_ID)
    async def cancel_video(request: Request) -> JSONResponse:
        principal = await authenticate(gw.auth, request)
        return JSONResponse(render_deleted_video(await gw.tasks.cancel(principal, request.path_params["video_id"])))

    @describe("Download a finished video", tag="Videos", errors=(404, 422), path=_VIDEO_ID,
              query=(Param("variant", {"type": "string", "enum": ["video"], "default": "video"}),),
              ok_content={"video/mp4": {"schema": {"type": "string", "contentMediaType": "video/mp4"}}})
    async def video_content(request: Request) -> Response:
        principal = await authenticate(gw.auth, request)
        variant = request.query_params.get("variant", "video")
        if variant != "video":
            raise InvalidInput(f"variant: only 'video' is kept, not {quoted(variant)}", field="variant")
        task = await gw.tasks.get(principal, request.path_params["video_id"])
        if task["status"] != "succeeded":
            # OpenAI answers 404 for a video not (yet) downloadable.
            raise NotFound(f"video {task['id']!r} is {_VIDEO_STATUS[task['status']]}, not completed",
                           field="video_id", code="video_not_ready")
        assets = await gw.store.call(gw.store.assets.of_task, task["id"])
        video = next((a for a in assets if a["content_type"].startswith("video/")), assets[0] if assets else None)
        if video is None:
            raise NotFound(f"video {task['id']!r} has no file", field="video_id")
        return file_response(gw.assets.root / video["path"], video["content_type"], video["name"])

    return dialect_app(
        [
            # The router tries each in turn: the busiest first.
            Route("/chat/completions", chat, methods=["POST"]),
            Route("/models", models, methods=["GET"]),
            Route("/models/{model:path}", model, methods=["GET"]),
            Route("/embeddings", json_call("embeddings", "Create embeddings", "Embeddings",
                                           "CreateEmbeddingResponse"), methods=["POST"]),
            Route("/images/generations", json_call("images", "Create images", "Images", "ImagesResponse"),
                  methods=["POST"]),
            Route("/images/edits", form_call("image-edits", "Edit images", "Images", {
                "image": {"anyOf": [_UPLOAD, {"type": "array", "items": _UPLOAD}]}, "mask": _UPLOAD},
                json_content(ref("ImagesResponse"))), methods=["POST"]),
            Route("/audio/transcriptions", form_call("transcriptions", "Transcribe audio", "Audio",
                                                     {"file": _UPLOAD}, _TRANSCRIPT), methods=["POST"]),
            Route("/audio/translations", form_call("translations", "Translate audio into English", "Audio",
                                                   {"file": _UPLOAD}, _TRANSLATION), methods=["POST"]),
            Route("/videos", create_video, methods=["POST"]),
            Route("/videos/{video_id}", get_video, methods=["GET"]),
            Route("/videos/{video_id}", cancel_video, methods=["DELETE"]),
            Route("/videos/{video_id}/content", video_content, methods=["GET"]),
        ],
        render_error,
        statuses=STATUSES,
        handlers={UnknownModel: _unknown_model},
    )


class MeteredStream:
    """The relayed SSE response, as a bare ASGI app: it settles its call exactly once when it ends,
    however it ends (done, upstream broke, the client went away, or the server cancelled it).

    Not Starlette's ``StreamingResponse``: that runs an anyio task group per response to hear the
    client leave. One plain task waiting for ``http.disconnect`` does the same here: it cancels the
    send loop, which stops reading the upstream, so what was streamed is what is charged (uvicorn's
    ``send`` to a client that left returns without an error, so the loop alone would not notice)."""

    def __init__(self, chunks: AsyncIterator[bytes], close: Callable[[], Awaitable[None]]) -> None:
        self._chunks = chunks
        self._close: Callable[[], Awaitable[None]] | None = close

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        sender = asyncio.current_task()
        assert sender is not None
        left = False
        streaming = True

        async def hear_disconnect() -> None:
            nonlocal left
            try:
                while (await receive())["type"] != "http.disconnect":
                    pass
            except Exception:  # a server whose receive fails has lost the client too
                pass
            if streaming:
                left = True
                sender.cancel()

        watcher = asyncio.get_running_loop().create_task(hear_disconnect())
        try:
            await send(_SSE_START)
            try:
                async for chunk in self._chunks:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            except TidehubError as exc:  # begun already: the error is the stream's last event
                await send({"type": "http.response.body", "more_body": True, "body": b"data: " + orjson.dumps(
                    render_error(exc.status, exc.code, exc.message, exc.field)) + b"\n\n"})
            streaming = False
            await send(_SSE_END)
        except asyncio.CancelledError:
            if not left:
                raise  # the server's cancel, not ours: pass it on once settled
            sender.uncancel()
        finally:
            streaming = False
            watcher.cancel()
            await self._settle()

    async def _settle(self) -> None:
        close, self._close = self._close, None
        if close is None:
            return  # settled already: a second run of this response must not charge twice
        try:
            aclose = getattr(self._chunks, "aclose", None)
            if aclose is not None:
                with anyio.CancelScope(shield=True):
                    await aclose()
        finally:
            await close()


_SSE_START = {"type": "http.response.start", "status": 200, "headers": [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    *((name.lower().encode(), value.encode()) for name, value in _SSE_HEADERS.items())]}
_SSE_END = {"type": "http.response.body", "body": b"", "more_body": False}


def _model(ep: Any) -> dict[str, Any]:
    return {"id": ep.model, "object": "model", "created": 1700000000, "owned_by": ep.vendor or "tidehub"}


async def _read_form(request: Request, limit: int) -> tuple[dict[str, Any], list[Upload]]:
    if not media_type(request).startswith("multipart/form-data"):
        raise UnsupportedMediaType("expected 'Content-Type: multipart/form-data' with the file(s)",
                                   field="Content-Type")
    # Parsed as it arrives and counted on the way in: a body past the limit (chunked ones have no
    # Content-Length to refuse up front) is cut off there, not spooled whole first.
    try:
        async with contextlib.aclosing(capped_body(request, limit)) as body:
            form = await MultiPartParser(request.headers, body, max_files=16, max_fields=64).parse()
    except PayloadTooLarge:
        raise
    except Exception as exc:  # python-multipart's errors have no common base worth naming
        raise BadRequest(f"the multipart body could not be read: {exc}", field="body") from None
    fields: dict[str, Any] = {}
    files: list[Upload] = []
    try:
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                data = await value.read()
                files.append(Upload(name, value.filename or name, value.content_type or "application/octet-stream",
                                    data))
            elif name in _ARRAY_FIELDS:
                fields.setdefault(name, []).append(value)
            else:
                fields[name] = value
    finally:
        await form.close()
    return fields, files
