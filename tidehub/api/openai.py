"""The OpenAI-compatible dialect , mounted at ``/v1`` and ``/api/relay/v1``: the official
SDKs work with only ``base_url`` changed. Chat, embeddings, images and audio are relayed calls
(core/relay.py); videos are tasks, shown as OpenAI video objects."""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from tidehub.api.dialect import dialect_app
from tidehub.api.files import file_response
from tidehub.api.requests import authenticate, read_json_object
from tidehub.api.responses import JSONResponse
from tidehub.errors import BadRequest, InvalidInput, NotFound, PayloadTooLarge, UnsupportedMediaType, quoted
from tidehub.core.relay import Answer, Upload
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


def render_error(status: int, code: str, message: str, field: str | None) -> dict[str, Any]:
    kind = _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    if code == "unauthorized":
        code = "invalid_api_key"
    return {"error": {"message": message, "type": kind, "param": field, "code": code}}


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


def _respond(answer: Answer) -> Response:
    # The request's id is Tidehub's own (api/edge.py); the upstream's goes along under another name.
    headers = {"x-upstream-request-id": v for k, v in answer.headers.items() if k == "x-request-id"}
    return Response(answer.body, status_code=answer.status, headers=headers,
                    media_type=answer.headers.get("content-type", "application/json"))


def create_openai_app(gw: Gateway) -> Starlette:
    relay = gw.relay
    limit = gw.settings.max_upload_bytes

    async def models(request: Request) -> JSONResponse:
        principal = await authenticate(gw.auth, request)
        return JSONResponse({"object": "list", "data": [_model(ep) for ep in relay.listed(principal)]})

    async def model(request: Request) -> JSONResponse:
        principal = await authenticate(gw.auth, request)
        name = request.path_params["model"]
        for ep in relay.listed(principal):
            if ep.model == name:
                return JSONResponse(_model(ep))
        raise NotFound(f"The model {quoted(name)} does not exist", field="model", code="model_not_found")

    async def chat(request: Request) -> Response:
        principal = await authenticate(gw.auth, request)
        body = await read_json_object(request, limit)
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise InvalidInput("stream: must be a boolean", field="stream")
        if not stream:
            return _respond(await relay.call(principal, "chat", body))
        events, close = await relay.stream(principal, body)
        return MeteredStream(events, close)

    def json_call(surface: str) -> Any:
        async def endpoint(request: Request) -> Response:
            principal = await authenticate(gw.auth, request)
            return _respond(await relay.call(principal, surface, await read_json_object(request, limit)))
        return endpoint

    def form_call(surface: str) -> Any:
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

    async def create_video(request: Request) -> JSONResponse:
        principal = await authenticate(gw.auth, request)
        if _media_type(request).startswith("multipart/"):
            fields, files = await _read_form(request, limit)
            if files:
                raise InvalidInput(f"{files[0].name}: reference files are not supported here; send a prompt only",
                                   field=files[0].name)
        else:
            fields = await read_json_object(request, gw.settings.max_body_bytes)
        return JSONResponse(as_video(await relay.submit_video(principal, fields)))

    async def get_video(request: Request) -> JSONResponse:
        principal = await authenticate(gw.auth, request)
        return JSONResponse(as_video(await gw.tasks.get(principal, request.path_params["video_id"])))

    async def cancel_video(request: Request) -> JSONResponse:
        principal = await authenticate(gw.auth, request)
        return JSONResponse(render_deleted_video(await gw.tasks.cancel(principal, request.path_params["video_id"])))

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
            Route("/models", models, methods=["GET"]),
            Route("/models/{model:path}", model, methods=["GET"]),
            Route("/chat/completions", chat, methods=["POST"]),
            Route("/embeddings", json_call("embeddings"), methods=["POST"]),
            Route("/images/generations", json_call("images"), methods=["POST"]),
            Route("/images/edits", form_call("image-edits"), methods=["POST"]),
            Route("/audio/transcriptions", form_call("transcriptions"), methods=["POST"]),
            Route("/audio/translations", form_call("translations"), methods=["POST"]),
            Route("/videos", create_video, methods=["POST"]),
            Route("/videos/{video_id}", get_video, methods=["GET"]),
            Route("/videos/{video_id}", cancel_video, methods=["DELETE"]),
            Route("/videos/{video_id}/content", video_content, methods=["GET"]),
        ],
        render_error,
        statuses={422: 400},
    )


class MeteredStream(StreamingResponse):
    """An SSE response that settles its call when it ends, however it ends (done, upstream broke, or
    the client went away and the server cancelled the body)."""

    def __init__(self, events: Any, close: Any) -> None:
        super().__init__(events, media_type="text/event-stream; charset=utf-8", headers=_SSE_HEADERS)
        self._close = close

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._close()


def _model(ep: Any) -> dict[str, Any]:
    return {"id": ep.model, "object": "model", "created": 1700000000, "owned_by": ep.vendor or "tidehub"}


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def _read_form(request: Request, limit: int) -> tuple[dict[str, Any], list[Upload]]:
    if not _media_type(request).startswith("multipart/form-data"):
        raise UnsupportedMediaType("expected 'Content-Type: multipart/form-data' with the file(s)",
                                   field="Content-Type")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the request body exceeds {limit} bytes")
    try:
        form = await request.form(max_files=16, max_fields=64)
    except Exception as exc:  # python-multipart's errors have no common base worth naming
        raise BadRequest(f"the multipart body could not be read: {exc}", field="body") from None
    fields: dict[str, Any] = {}
    files: list[Upload] = []
    size = 0
    try:
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                data = await value.read()
                size += len(data)
                if size > limit:
                    raise PayloadTooLarge(f"the uploaded files exceed {limit} bytes")
                files.append(Upload(name, value.filename or name, value.content_type or "application/octet-stream",
                                    data))
            elif name in _ARRAY_FIELDS:
                fields.setdefault(name, []).append(value)
            else:
                fields[name] = value
    finally:
        await form.close()
    return fields, files
