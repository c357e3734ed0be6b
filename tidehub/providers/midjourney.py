"""Midjourney through a proxy (midjourney-proxy style ``/mj`` API): imagine, fetch, and upscale actions.

``MidjourneyTasks`` is the protocol over any aiohttp session; ``MidjourneyAdapter`` uses it for a
plain proxy (key in the ``mj-api-secret`` header, ``base_url`` the proxy's root, ``/mj`` appended),
and the nexus adapter for nexus's ``/mj`` (Bearer key).

A proxy answers refusals with HTTP 200 and a ``code``: 1 submitted, 21 already exists, 22 queued
(all three carry the task id), 23 queue full (retryable), 24 banned prompt (``content_policy``), 4
validation (``invalid_input``); anything else may pass on retry.

Callbacks (``notifyHook``) are unsigned: ``verify_callback`` can only read the task id from the body.
That is enough because the gateway treats a callback as a hint to poll that task now; it matches the
id against the task named in the callback URL and learns the outcome from the proxy itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, Mapping

import aiohttp
import orjson

from tidehub.core.ports import Job, JobState, UpstreamError
from tidehub.providers.base import LazyPool
from tidehub.providers.openai import classify

#: Submit codes that mean the task exists: submitted, already existed, queued.
ACCEPTED_CODES = (1, 21, 22)
_QUEUE_FULL, _BANNED, _VALIDATION = 23, 24, 4
_STATES = {"NOT_START": "queued", "SUBMITTED": "queued", "": "queued", "IN_PROGRESS": "running",
           "SUCCESS": "completed", "FAILURE": "failed"}
#: Words of a failReason (or submit description) that mean the prompt or image was refused.
_POLICY_WORDS = ("banned", "policy", "moderation", "sensitive", "敏感", "违规")


class MidjourneyTasks:
    """The ``/mj`` task protocol at ``root`` (``{proxy}/mj``), over the session ``http`` returns."""

    def __init__(self, root: str, http: Callable[[], aiohttp.ClientSession], vendor: str) -> None:
        self.root = root.rstrip("/")
        self._http = http
        self.vendor = vendor

    async def submit(self, payload: Mapping[str, Any], callback_url: str | None) -> Job:
        """Imagine from ``{prompt, image_urls?, aspect_ratio?, base64Array?}``, or press a button of a
        finished task with ``{task_id, custom_id}`` (an upscale ``U1``..``U4``, a variation, a reroll)."""
        body: dict[str, Any]
        renamed: dict[str, str]  # proxy field -> catalog field, for naming a refused field
        if payload.get("custom_id"):
            body = {"taskId": payload.get("task_id"), "customId": payload["custom_id"]}
            renamed = {"taskId": "task_id", "customId": "custom_id"}
            path = "/submit/action"
        else:
            body = {"prompt": _prompt(payload)}
            renamed = {"prompt": "prompt"}
            if payload.get("base64Array"):
                body["base64Array"] = payload["base64Array"]
                renamed["base64Array"] = "base64Array"
            path = "/submit/imagine"
        if callback_url:
            body["notifyHook"] = callback_url
        answer = await self._json("POST", path, body)
        code = answer.get("code")
        description = str(answer.get("description") or f"code {code}")
        text = f"{self.vendor}: {description}"
        if code in ACCEPTED_CODES and answer.get("result"):
            return Job(ref=str(answer["result"]), data={"api": "mj"})
        if code == _QUEUE_FULL:
            raise UpstreamError(text, code="upstream_rate_limited", retryable=True)
        if code == _BANNED:
            raise UpstreamError(text, code="content_policy", field="input.prompt")
        if code == _VALIDATION:
            field = next((catalog for sent, catalog in renamed.items() if sent in description), None)
            raise UpstreamError(text, code="invalid_input", field=f"input.{field}" if field else None)
        raise UpstreamError(text, code="upstream_error", retryable=True)

    async def status(self, job: Job) -> JobState:
        task = await self.fetch(job)
        status = str(task.get("status") or "")
        state = _STATES.get(status)
        if state is None:
            raise UpstreamError(f"{self.vendor} answered an unknown task status {status!r}", retryable=True)
        if state == "failed":
            return JobState("failed", error=self._run_error(task.get("failReason")))
        logs = []
        if state == "running" and task.get("progress"):
            # JobState has no progress field: the proxy's percentage travels as a log line.
            logs.append({"message": f"progress {task['progress']}", "level": "INFO", "source": self.vendor,
                         "timestamp": datetime.now(timezone.utc).isoformat()})
        return JobState(state, logs=logs)  # type: ignore[arg-type]

    async def result(self, job: Job) -> dict[str, Any]:
        task = await self.fetch(job)
        if task.get("status") != "SUCCESS" or not task.get("imageUrl"):
            raise UpstreamError(f"{self.vendor}: task {job.ref} has no image yet", retryable=True)
        buttons = [{"custom_id": b["customId"], "label": b.get("label") or b.get("emoji") or ""}
                   for b in task.get("buttons") or [] if isinstance(b, dict) and b.get("customId")]
        output: dict[str, Any] = {"images": [{"url": task["imageUrl"], "content_type": "image/png"}]}
        if buttons:
            output["buttons"] = buttons  # for a follow-up task: {task_id, custom_id}
        output["task_id"] = job.ref
        return output

    async def fetch(self, job: Job) -> dict[str, Any]:
        return await self._json("GET", f"/task/{job.ref}/fetch")

    def _run_error(self, reason: Any) -> UpstreamError:
        message = f"{self.vendor}: {reason or 'the task failed'}"
        text = str(reason or "").lower()
        if any(word in text for word in _POLICY_WORDS):
            return UpstreamError(message, code="content_policy")
        return UpstreamError(message, code="upstream_timeout" if "timeout" in text else "upstream_error",
                             retryable=True)

    async def _json(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        try:
            async with self._http().request(method, f"{self.root}{path}", json=body) as resp:
                raw = await resp.read()
                status, headers = resp.status, resp.headers
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            code = "upstream_timeout" if isinstance(exc, asyncio.TimeoutError) else "upstream_unavailable"
            raise UpstreamError(f"{self.vendor} unreachable: {type(exc).__name__}: {exc}", code=code,
                                retryable=True) from None
        try:
            answer = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            answer = None
        if status >= 400:
            raise _http_error(self.vendor, status, headers, raw, answer)
        if not isinstance(answer, dict):
            raise UpstreamError(f"{self.vendor} answered {path} with a body that is not a JSON object",
                                code="upstream_unavailable", retryable=True, status=status)
        return answer


class MidjourneyAdapter:
    """A plain Midjourney proxy: ``base_url`` is its root (``/mj`` is appended), the key goes in
    ``mj-api-secret``. The proxy cannot cancel a task, so ``cancel`` does nothing."""

    name = "midjourney"

    def __init__(self, base_url: str, key: str, *, timeout_s: float = 30.0, max_connections: int = 200,
                 **_ignored: Any) -> None:
        self.base_url = base_url.rstrip("/").removesuffix("/mj")
        self._pool = LazyPool({"mj-api-secret": key}, timeout_s, max_connections)
        self.tasks = MidjourneyTasks(f"{self.base_url}/mj", self._pool, self.name)

    async def close(self) -> None:
        await self._pool.close()

    async def submit(self, model: str, payload: dict[str, Any], *, callback_url: str | None = None,
                     spec: Mapping[str, Any] | None = None) -> Job:
        return await self.tasks.submit(payload, callback_url)

    async def status(self, job: Job) -> JobState:
        return await self.tasks.status(job)

    async def result(self, job: Job) -> dict[str, Any]:
        return await self.tasks.result(job)

    async def cancel(self, job: Job) -> None:
        return None  # the proxy has no cancel; the task runs out and nobody collects it

    async def verify_callback(self, headers: Mapping[str, str], body: bytes) -> str:
        return callback_task_id(body)

    def auth_headers_for(self, url: str) -> dict[str, str]:
        return {}  # image URLs are the proxy's (or Discord's CDN) public links


def callback_task_id(body: bytes) -> str:
    """The task id of an unsigned ``notifyHook`` post (see the module docstring for why that is enough)."""
    try:
        task = orjson.loads(body)
    except orjson.JSONDecodeError:
        task = None
    if not isinstance(task, dict) or not isinstance(task.get("id"), (str, int)) or not str(task["id"]):
        raise UpstreamError("callback without a Midjourney task id", code="bad_callback")
    return str(task["id"])


def _prompt(payload: Mapping[str, Any]) -> str:
    """Midjourney takes image prompts as URLs before the text and the aspect ratio as ``--ar``."""
    prompt = str(payload.get("prompt") or "")
    urls = payload.get("image_urls") or ([payload["image_url"]] if payload.get("image_url") else [])
    ratio = payload.get("aspect_ratio")
    if ratio and "--ar " not in prompt and "--aspect " not in prompt:
        prompt = f"{prompt} --ar {ratio}"
    return " ".join([*(str(url) for url in urls), prompt]) if urls else prompt


def _http_error(vendor: str, status: int, headers: Mapping[str, str], raw: bytes, answer: Any) -> UpstreamError:
    """An HTTP error (bad key, outage, hang) classified as OpenAI's, in the proxy's own words."""
    error = classify(status, headers, raw) or UpstreamError(f"HTTP {status}", retryable=True, status=status)
    description = answer.get("description") if isinstance(answer, dict) else None
    message = f"{vendor}: {description}" if description else error.message.replace("openai:", f"{vendor}:", 1)
    return UpstreamError(message, code=error.code, retryable=error.retryable, status=error.status,
                         field=error.field, retry_after=error.retry_after)
