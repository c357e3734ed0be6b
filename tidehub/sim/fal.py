"""The fal.ai queue API (submit, status, result, cancel), as documented in UPSTREAMS.md.

Only wire-format translation lives here; when things happen is the ``JobBoard``'s business, and
whether a channel misbehaves is its ``SimBehaviour``'s. Faults are applied in this order: unknown
key (401); then, on every endpoint, ``latency_s``, ``hang_rate``, ``outage`` (503); on submit,
unknown model (404) and invalid input (422) come before the 429 burst and ``submit_error_rate``
(503), so only valid submits count towards rate limits. A result names the files it lists with
``result_url`` / ``result_content_type`` when those are set.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tidehub.sim.channels import Channel, Channels, ChannelStats
from tidehub.sim.errors import RunFailure
from tidehub.sim.hangs import hold
from tidehub.sim.jobs import Job, JobBoard, Phase
from tidehub.sim.models import SimModel
from tidehub.sim.validation import validate_input

_PROGRESS_STEPS = 10


def json_response(body: Any, status_code: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status_code, headers=headers, media_type="application/json")


class FalQueueAPI:
    """Request handlers for every fal model id the sim knows, one channel per accepted API key.

    A request id is only known to the channel that submitted it, as with fal's per-account queues.
    ``stopping`` releases held ("hung") requests when the server shuts down.
    """

    def __init__(self, models: Mapping[str, SimModel], board: JobBoard, base_url: str, channels: Channels,
                 stopping: asyncio.Event | None = None) -> None:
        self._models = models
        self._board = board
        self._base_url = base_url.rstrip("/")
        self._channels = channels
        self._stopping = stopping if stopping is not None else asyncio.Event()

    def routes(self) -> list[Route]:
        # Order matters: the request routes come before the catch-all submit route.
        return [
            Route("/{owner}/{app}/requests/{request_id}/status", self.status, methods=["GET"]),
            Route("/{owner}/{app}/requests/{request_id}/cancel", self.cancel, methods=["PUT"]),
            Route("/{owner}/{app}/requests/{request_id}", self.result, methods=["GET"]),
            Route("/{model_id:path}", self.submit, methods=["POST"]),
        ]

    async def submit(self, request: Request) -> Response:
        channel = self._channel(request)
        if channel is None:
            return _unauthorized()
        channel.stats.submits += 1
        if channel.behaviour.disturbs_requests and (refused := await self._misbehave(request, channel)):
            return refused
        model_id = request.path_params["model_id"].strip("/")
        model = self._models.get(model_id)
        if model is None:
            return json_response({"detail": f"Application '{model_id}' not found"}, 404)
        raw = await request.body()
        try:
            payload = orjson.loads(raw) if raw.strip() else {}
        except orjson.JSONDecodeError:
            return json_response({"detail": [{"loc": ["body"], "msg": "Invalid JSON", "type": "json_invalid"}]}, 422)
        if errors := validate_input(model.input_schema, payload):
            return json_response({"detail": errors}, 422)
        behaviour = channel.behaviour
        if channel.rate_limited():
            channel.stats.rate_limited += 1
            return json_response({"detail": "Rate limit exceeded"}, 429, {"Retry-After": behaviour.retry_after_header})
        if channel.chance(behaviour.submit_error_rate):
            channel.stats.submit_errors += 1
            return _infra_error(503, "runner_scheduling_failure", "Failed to schedule the request on a runner")
        job, ahead = self._board.submit(
            model,
            payload,
            webhook_url=request.query_params.get("fal_webhook"),
            priority=request.headers.get("x-fal-queue-priority", "normal"),
            timeout_s=_float_or_none(request.headers.get("x-fal-request-timeout")),
            channel=channel,
            failure=channel.plan_failure(payload),
        )
        channel.count_accepted()
        urls = self._urls(job)
        return json_response({
            "request_id": job.id,
            "response_url": urls["response_url"],
            "status_url": urls["status_url"],
            "cancel_url": urls["cancel_url"],
            "queue_position": ahead,
            "status": "IN_QUEUE",
        })

    async def status(self, request: Request) -> Response:
        channel = self._channel(request)
        if channel is None:
            return _unauthorized()
        channel.stats.status_polls += 1
        if channel.behaviour.disturbs_requests and (refused := await self._misbehave(request, channel)):
            return refused
        job = self._find(request, channel)
        if job is None:
            return _not_found()
        phase = self._board.phase(job)
        with_logs = request.query_params.get("logs", "0").lower() in ("1", "true")
        body: dict[str, Any] = {"request_id": job.id, "response_url": self._urls(job)["response_url"]}
        if phase is Phase.QUEUED:
            body.update(status="IN_QUEUE", queue_position=self._board.queue_position(job), logs=[])
            return json_response(body, 202)
        logs = self._logs(job, phase) if with_logs else []
        if phase is Phase.RUNNING:
            body.update(status="IN_PROGRESS", logs=logs)
            return json_response(body, 202)
        body.update(status="COMPLETED", logs=logs, metrics={"inference_time": _inference_time(job)})
        if job.failure is not None:
            body.update(error=job.failure.message, error_type=job.failure.error_type)
        return json_response(body, 200)

    async def result(self, request: Request) -> Response:
        channel = self._channel(request)
        if channel is None:
            return _unauthorized()
        if channel.behaviour.disturbs_requests and (refused := await self._misbehave(request, channel)):
            return refused
        job = self._find(request, channel)
        if job is None:
            return _not_found()
        if self._board.phase(job) is not Phase.DONE:
            return json_response({"detail": "Request is still in progress"}, 400)
        if job.failure is not None:
            return _failure_response(job.failure)
        return json_response(channel.behaviour.rewrite_files(job.output))

    async def cancel(self, request: Request) -> Response:
        channel = self._channel(request)
        if channel is None:
            return _unauthorized()
        if channel.behaviour.disturbs_requests and (refused := await self._misbehave(request, channel)):
            return refused
        job = self._find(request, channel)
        if job is None:
            return _not_found()
        if self._board.phase(job) is Phase.DONE or not self._board.cancel(job):
            return json_response({"status": "ALREADY_COMPLETED"}, 400)
        return json_response({"status": "CANCELLATION_REQUESTED"}, 202)

    def _channel(self, request: Request) -> Channel | None:
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "key":
            return None
        return self._channels.get(key.strip())

    async def _misbehave(self, request: Request, channel: Channel) -> Response | None:
        """The answer a misbehaving channel gives instead of the real one; None when it behaves."""
        behaviour = channel.behaviour
        if behaviour.latency_s:
            await asyncio.sleep(behaviour.latency_s)
        if channel.chance(behaviour.hang_rate):
            channel.stats.hangs += 1
            return await self._hold(request, channel.stats, behaviour.hang_s)
        if behaviour.outage:
            channel.stats.outage_errors += 1
            return _infra_error(503, "runner_scheduling_failure", "Service temporarily unavailable")
        return None

    async def _hold(self, request: Request, stats: ChannelStats, limit_s: float) -> Response:
        """Answer nothing until the client hangs up, the sim stops, or ``limit_s`` passes."""
        await hold(request, stats, limit_s, self._stopping)
        return _infra_error(504, "request_timeout", "Request timed out")

    def _find(self, request: Request, channel: Channel) -> Job | None:
        params = request.path_params
        job = self._board.get(params["request_id"])
        if job is None or job.channel is not channel or job.model.app_path != f"{params['owner']}/{params['app']}":
            return None
        return job

    def _urls(self, job: Job) -> dict[str, str]:
        base = f"{self._base_url}/{job.model.app_path}/requests/{job.id}"
        return {"response_url": base, "status_url": f"{base}/status", "cancel_url": f"{base}/cancel"}

    def _logs(self, job: Job, phase: Phase) -> list[dict[str, str]]:
        """Logs a runner would have printed so far: a start line, progress lines, an end line."""
        as_of = job.finished_at if job.finished_at is not None else self._board.now()
        span = job.ends_at - job.starts_at
        logs = [_log(f"Starting {job.model.fal_id}", job.starts_at)] if job.starts_at <= as_of else []
        for step in range(1, _PROGRESS_STEPS):
            at = job.starts_at + span * step / _PROGRESS_STEPS
            if at > as_of:
                break
            logs.append(_log(f"Generating: {step * 100 // _PROGRESS_STEPS}%", at))
        if job.finished_at is not None:
            if job.failure is None:
                logs.append(_log(f"Completed in {_inference_time(job):.2f}s", job.finished_at))
            else:
                logs.append(_log(job.failure.message, job.finished_at, level="ERROR"))
        return logs


def _unauthorized() -> Response:
    return json_response({"detail": "Invalid or missing API key: send 'Authorization: Key <key>'"}, 401)


def _infra_error(status: int, error_type: str, detail: str) -> Response:
    """fal's shape for infrastructure errors a retry may cure."""
    headers = {"X-Fal-Error-Type": error_type, "X-Fal-Retryable": "true"}
    return json_response({"detail": detail, "error_type": error_type}, status, headers)


def _failure_response(failure: RunFailure) -> Response:
    headers = {"X-Fal-Error-Type": failure.error_type, "X-Fal-Retryable": "true" if failure.retryable else "false"}
    return json_response({"detail": failure.detail, "error_type": failure.error_type}, failure.http_status, headers)


def _not_found() -> Response:
    return json_response({"detail": "Request not found"}, 404)


def _inference_time(job: Job) -> float:
    end = job.finished_at if job.finished_at is not None else job.ends_at
    return round(max(0.0, end - job.starts_at), 3)


def _log(message: str, at: float, level: str = "INFO") -> dict[str, str]:
    return {"message": message, "level": level, "source": "user", "timestamp": _iso(at)}


def _iso(at: float | None) -> str:
    return datetime.fromtimestamp(at or 0.0, tz=timezone.utc).isoformat()


def _float_or_none(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None
