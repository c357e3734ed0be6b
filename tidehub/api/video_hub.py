"""The video hub's API (``/api/video``): submit a prompt, poll a job. Tidehub picks the
model when the client names no provider: the cheapest text-to-video model that a healthy channel
can run now. Errors come in the same ``{success: false, message}`` envelope as ``/api/user``."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.routing import Route

from tidehub.api.dialect import DialectApp, dialect_app
from tidehub.api.openapi import INTEGER, STRING, TIME, Param, describe, json_content, obj
from tidehub.api.requests import authenticate, optional_label, read_json_object, required
from tidehub.api.responses import JSONResponse, iso
from tidehub.api.quota import render_error
from tidehub.catalog import Endpoint
from tidehub.errors import InvalidInput, ServiceUnavailable, quoted
from tidehub.gateway import Gateway

STATUS = {"queued": "pending", "running": "processing", "succeeded": "succeeded", "failed": "failed",
          "timeout": "failed", "canceled": "canceled"}


JOB_SCHEMA = {**obj({
    "jobId": STRING, "status": {"type": "string", "enum": sorted(set(STATUS.values()))},
    "progress": {**INTEGER, "minimum": 0, "maximum": 100},
    "resultUrl": {"anyOf": [{"type": "string", "format": "uri"}, {"type": "null"}]},
    "model": STRING, "createdAt": TIME,
    "error": obj({"code": STRING, "message": {"anyOf": [STRING, {"type": "null"}]}}),
}, required=["jobId", "status", "progress", "resultUrl", "model", "createdAt"])}


def submit_body(gw: Gateway, _: str | None) -> dict[str, Any]:
    return json_content(obj({
        "prompt": {"type": "string", "minLength": 1, "description": "The video to make."},
        "provider": {"type": "string", "minLength": 1, "maxLength": 100,
                     "description": "A vendor, family (kling, veo, sora, wan, seedance) or model id; "
                                    "without it Tidehub picks the cheapest model a healthy channel runs now."},
        "user_identifier": {"type": "string", "minLength": 1, "maxLength": 200},
    }, required=["prompt"]), {"prompt": {"summary": "Any provider", "value": {"prompt": "a lighthouse at dawn"}}})


def render_job(task: dict[str, Any]) -> dict[str, Any]:
    output = task["output"] or {}
    video = output.get("video") if isinstance(output, dict) else None
    data = {
        "jobId": task["id"],
        "status": STATUS[task["status"]],
        "progress": task["progress"] or 0,
        "resultUrl": video.get("url") if isinstance(video, dict) else None,
        "model": task["model"],
        "createdAt": iso(task["created_at"]),
    }
    if task["error_code"]:
        data["error"] = {"code": task["error_code"], "message": task["error_message"]}
    return data


def providers(endpoint: Endpoint) -> set[str]:
    """The names a client may use for the family of ``endpoint``: its vendor, tags and model."""
    return {endpoint.vendor, endpoint.model, *endpoint.tags, *endpoint.hub_ids}


def create_video_hub_app(gw: Gateway) -> DialectApp:
    # Prompt-only text-to-video models: the ones a bare prompt can run.
    candidates = [ep for ep in gw.catalog.endpoints.values()
                  if ep.capability == "video" and ep.mode == "text-to-video" and ep.required <= {"prompt"}]
    # Vendor, family (the second tag: kling, veo, sora...) and model ids, for the error message.
    known = sorted({name for ep in candidates for name in (ep.vendor, *ep.tags[1:2], *ep.hub_ids)} - {""})

    def choose(provider: str | None, prompt: str) -> Endpoint:
        fitting = [ep for ep in candidates if provider is None or provider in providers(ep)]
        if not fitting:
            raise InvalidInput(f"provider: unknown provider {quoted(provider)}; known: {', '.join(known)}",
                               field="provider")
        healthy = [ep for ep in fitting if gw.router.available(ep)]
        if not healthy:
            raise ServiceUnavailable("no video channel is available right now; try again shortly",
                                     code="no_channel_available", details={"retry_after": 5})
        return min(healthy, key=lambda ep: ep.price.quote(ep.validate({"prompt": prompt})).credits)

    @describe("Submit a video job", body=submit_body, errors=(403, 503),
              ok=obj({"success": {"const": True}, "data": obj({"jobId": STRING, "model": STRING})}))
    async def submit(request: Request) -> JSONResponse:
        principal = await authenticate(gw.auth, request)
        body = await read_json_object(request, gw.settings.max_body_bytes)
        prompt = required(body, "prompt", str, "a string")
        if not prompt.strip():
            raise InvalidInput("prompt: must not be empty", field="prompt")
        provider = optional_label(body, "provider", 100)
        endpoint = choose(provider, prompt)
        task = await gw.tasks.submit(principal, endpoint, {"prompt": prompt}, id_prefix="job",
                                     user_identifier=optional_label(body, "user_identifier"))
        return JSONResponse({"success": True, "data": {"jobId": task["id"], "model": task["model"]}})

    @describe("A video job's status", errors=(404, 422),
              query=(Param("jobId", {"type": "string", "minLength": 1}, "The id submit answered.", required=True),),
              ok=obj({"success": {"const": True}, "data": JOB_SCHEMA}))
    async def status(request: Request) -> JSONResponse:
        principal = await authenticate(gw.auth, request)
        job_id = request.query_params.get("jobId")
        if not job_id:
            raise InvalidInput("jobId: is required (as a query parameter)", field="jobId")
        return JSONResponse({"success": True, "data": render_job(await gw.tasks.get(principal, job_id))})

    return dialect_app(
        [Route("/submit", submit, methods=["POST"]), Route("/status", status, methods=["GET"])],
        render_error,
    )
