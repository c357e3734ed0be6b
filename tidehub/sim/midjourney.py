"""The Midjourney proxy's ``/mj`` task API (midjourney-proxy style), mountable under any prefix.

Two mounts share this code: the plain proxy (``/mj-proxy/mj/...``, key in the ``mj-api-secret``
header) and nexus's (``/nexus/mj/...``, ``Authorization: Bearer``). A proxy answers its refusals
with HTTP 200 and a ``code``: 1 submitted, 22 queued, 23 queue full, 24 banned prompt, 4 validation,
3 unknown task, 9 failure. Only trouble below the proxy (unknown key, outage, hang) is an HTTP error.

The knobs act as on the other surfaces: a 429 burst is code 23, ``submit_error_rate`` is code 9,
``[sim:content-policy]`` in the prompt is code 24 at submit, and a planned run failure (the
``[sim:flaky]`` marker, ``run_failure_rate``) is a task that ends in FAILURE.

An imagine renders four quadrants on the shared ``JobBoard`` and shows them as one PNG grid of
2x2; ``U1``..``U4`` upscale one quadrant (the same pixels, alone), ``V1``..``V4`` and reroll draw a
new grid. ``notifyHook`` receives the task JSON, unsigned, when its run starts and when it ends.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Literal

import aiohttp
import orjson
from PIL import Image
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tidehub.sim.channels import CONTENT_POLICY_MARKER, Channel, Channels
from tidehub.sim.errors import RunFailure
from tidehub.sim.fal import json_response
from tidehub.sim.files import FileStore
from tidehub.sim.hangs import hold
from tidehub.sim.jobs import Job, JobBoard, Phase
from tidehub.sim.models import SimModel

log = logging.getLogger(__name__)

# midjourney-proxy's ReturnCode values.
SUBMITTED, NOT_FOUND, VALIDATION_ERROR, FAILURE, IN_QUEUE, QUEUE_REJECTED, BANNED_PROMPT = 1, 3, 4, 9, 22, 23, 24

IMAGINE = SimModel(fal_id="midjourney/imagine", capability="image", mode="text-to-image", slug="midjourney",
                   queue_s=2.0, run_s=30.0)
UPSCALE = SimModel(fal_id="midjourney/upscale", capability="image", mode="upscale", slug="midjourney-upscale",
                   queue_s=0.5, run_s=5.0)
_ACTIONS = {"upsample": "UPSCALE", "variation": "VARIATION", "reroll": "REROLL"}
_SEED_MASK = 0x7FFFFFFF

Handler = Callable[[Request, Channel], Awaitable[Response]]
Fault = Literal["hang", "outage"]


async def disturbance(request: Request, channel: Channel, stopping: asyncio.Event) -> Fault | None:
    """Apply the knobs that act on every request (latency, hangs, outage); which one hit, if any.

    A hang returns only once the request was held until the client gave up (or the sim stops), so
    the caller just renders its timeout answer.
    """
    behaviour = channel.behaviour
    if behaviour.latency_s:
        await asyncio.sleep(behaviour.latency_s)
    if channel.chance(behaviour.hang_rate):
        channel.stats.hangs += 1
        await hold(request, channel.stats, behaviour.hang_s, stopping)
        return "hang"
    if behaviour.outage:
        channel.stats.outage_errors += 1
        return "outage"
    return None


class MidjourneyAPI:
    """The ``{prefix}/mj`` routes; jobs, files and channels are the sim's shared ones."""

    def __init__(self, prefix: str, auth: Literal["bearer", "secret"], channels: Channels, board: JobBoard,
                 files: FileStore, stopping: asyncio.Event | None = None, notify_timeout_s: float = 10.0) -> None:
        self._prefix = prefix.rstrip("/")
        self._auth = auth
        self._channels = channels
        self._board = board
        self._files = files
        self._stopping = stopping if stopping is not None else asyncio.Event()
        self._notify_timeout = aiohttp.ClientTimeout(total=notify_timeout_s)
        self._notifications: set[asyncio.Task[None]] = set()
        self._http: aiohttp.ClientSession | None = None

    def routes(self) -> list[Route]:
        base = f"{self._prefix}/mj"
        return [
            Route(f"{base}/submit/imagine", self._endpoint(self.imagine, creates=True), methods=["POST"]),
            Route(f"{base}/submit/action", self._endpoint(self.action, creates=True), methods=["POST"]),
            Route(f"{base}/task/{{task_id}}/fetch", self._endpoint(self.fetch, creates=False), methods=["GET"]),
        ]

    async def aclose(self) -> None:
        tasks = list(self._notifications)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.close()

    # --- the common path of every request ----------------------------------------------------------

    def _endpoint(self, handler: Handler, *, creates: bool) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            channel = self._channel(request)
            if channel is None:
                header = "mj-api-secret: <key>" if self._auth == "secret" else "Authorization: Bearer <key>"
                return _reply(FAILURE, f"invalid or missing key: send '{header}'", status=401)
            if creates:
                channel.stats.submits += 1
            else:
                channel.stats.status_polls += 1
            if channel.behaviour.disturbs_requests:
                fault = await disturbance(request, channel, self._stopping)
                if fault == "hang":
                    return _reply(FAILURE, "timeout", status=504)
                if fault == "outage":
                    return _reply(FAILURE, "服务暂不可用，请稍后再试", status=503)
            return await handler(request, channel)

        return endpoint

    def _channel(self, request: Request) -> Channel | None:
        if self._auth == "secret":
            key = request.headers.get("mj-api-secret", "")
        else:
            scheme, _, key = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer":
                return None
        key = key.strip()
        return self._channels.get(key) if key else None

    # --- endpoints ---------------------------------------------------------------------------------

    async def imagine(self, request: Request, channel: Channel) -> Response:
        body = await _json_object(request)
        if body is None:
            return _reply(VALIDATION_ERROR, "the body must be a JSON object")
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            return _reply(VALIDATION_ERROR, "prompt不能为空")
        images = body.get("base64Array") or []
        if not isinstance(images, list) or not all(isinstance(i, str) and i.startswith("data:image/") for i in images):
            return _reply(VALIDATION_ERROR, "base64Array: each item must be a data:image/...;base64,... URL")
        hook, refused = _notify_hook(body)
        if refused is not None:
            return refused
        if CONTENT_POLICY_MARKER in prompt:
            return _reply(BANNED_PROMPT, "可能包含敏感词",
                          properties={"promptEn": prompt, "bannedWord": CONTENT_POLICY_MARKER})
        inputs = _grid_inputs(prompt, "IMAGINE", secrets.randbits(31))
        inputs.update(state=body.get("state"), images=len(images))
        return self._start(channel, IMAGINE, inputs, hook)

    async def action(self, request: Request, channel: Channel) -> Response:
        body = await _json_object(request)
        if body is None:
            return _reply(VALIDATION_ERROR, "the body must be a JSON object")
        task_id, custom_id = body.get("taskId"), body.get("customId")
        if not isinstance(task_id, str) or not task_id:
            return _reply(VALIDATION_ERROR, "taskId不能为空")
        if not isinstance(custom_id, str) or not custom_id:
            return _reply(VALIDATION_ERROR, "customId不能为空")
        hook, refused = _notify_hook(body)
        if refused is not None:
            return refused
        parent = self._find(task_id, channel)
        if parent is None:
            return _reply(NOT_FOUND, "关联任务不存在或已失效")
        # MJ::JOB::<kind>::<index>::<hash of the parent>[::SOLO]
        parts = custom_id.split("::")
        if (len(parts) < 5 or parts[:2] != ["MJ", "JOB"] or parts[2] not in _ACTIONS or not parts[3].isdigit()
                or parts[4] != _task_id(parent)):
            return _reply(VALIDATION_ERROR, "customId: not a button of this task")
        kind, index = parts[2], int(parts[3])
        if (self._board.phase(parent) is not Phase.DONE or parent.failure is not None
                or parent.inputs["action"] == "UPSCALE" or (kind == "upsample" and not 1 <= index <= 4)):
            return _reply(VALIDATION_ERROR, "关联任务状态错误")
        prompt = parent.inputs["prompt"]
        if kind == "upsample":
            # The quadrant's own spec: the same seed, size and format render the same pixels.
            inputs = _grid_inputs(prompt, "UPSCALE", (parent.inputs["seed"] + index - 1) & _SEED_MASK, count=1)
            model = UPSCALE
        else:
            inputs = _grid_inputs(prompt, _ACTIONS[kind], secrets.randbits(31))
            model = IMAGINE
        inputs.update(state=body.get("state"), customId=custom_id, parent=task_id, index=index)
        return self._start(channel, model, inputs, hook)

    async def fetch(self, request: Request, channel: Channel) -> Response:
        job = self._find(request.path_params["task_id"], channel)
        if job is None:
            return _reply(NOT_FOUND, "任务不存在", status=404)
        return json_response(await self._view(job))

    # --- jobs --------------------------------------------------------------------------------------

    def _start(self, channel: Channel, model: SimModel, inputs: dict[str, Any], hook: str | None) -> Response:
        """A valid submit: refused by the knobs (codes 23 and 9), or a task on the board (codes 1 and 22)."""
        if channel.rate_limited():
            channel.stats.rate_limited += 1
            return _reply(QUEUE_REJECTED, "队列已满，请稍后尝试")
        if channel.chance(channel.behaviour.submit_error_rate):
            channel.stats.submit_errors += 1
            return _reply(FAILURE, "提交失败，请稍后重试")
        job, ahead = self._board.submit(model, inputs, channel=channel, failure=channel.plan_failure(inputs))
        channel.count_accepted()
        if hook and channel.behaviour.webhooks:
            task = asyncio.get_running_loop().create_task(self._notify_changes(job, hook))
            self._notifications.add(task)
            task.add_done_callback(self._notifications.discard)
        if ahead:
            return _reply(IN_QUEUE, f"排队中，前面还有{ahead}个任务", result=_task_id(job),
                          properties={"numberOfQueues": ahead})
        return _reply(SUBMITTED, "提交成功", result=_task_id(job))

    def _find(self, task_id: str, channel: Channel) -> Job | None:
        try:
            job = self._board.get(str(uuid.UUID(hex=task_id)))
        except ValueError:
            return None
        if job is None or job.channel is not channel or job.model not in (IMAGINE, UPSCALE):
            return None
        return job

    async def _view(self, job: Job) -> dict[str, Any]:
        """The task as ``/fetch`` shows it (and ``notifyHook`` receives it)."""
        inputs = job.inputs
        action = inputs["action"]
        command = f"/up U{inputs['index']}" if action == "UPSCALE" else f"/imagine {inputs['prompt']}"
        view: dict[str, Any] = {
            "id": _task_id(job), "action": action, "customId": inputs.get("customId", ""),
            "botType": "MID_JOURNEY", "prompt": inputs["prompt"], "promptEn": inputs["prompt"],
            "description": command, "state": inputs.get("state"), "submitTime": _ms(job.submitted_at),
            "startTime": None, "finishTime": None, "imageUrl": None, "status": "SUBMITTED", "progress": "0%",
            "failReason": None, "buttons": [], "properties": {"finalPrompt": inputs["prompt"]},
        }
        phase = self._board.phase(job)
        if phase is Phase.QUEUED:
            # NOT_START: still in the proxy's own queue; SUBMITTED: handed to Discord, not started.
            view["status"] = "NOT_START" if self._board.queue_position(job) else "SUBMITTED"
            return view
        view["startTime"] = _ms(job.starts_at)
        if phase is Phase.RUNNING:
            done = (self._board.now() - job.starts_at) / max(job.ends_at - job.starts_at, 1e-9)
            view.update(status="IN_PROGRESS", progress=f"{int(min(max(done, 0.0), 0.99) * 100)}%")
            return view
        view["finishTime"] = _ms(job.finished_at or job.ends_at)
        if job.failure is not None:
            view.update(status="FAILURE", failReason=_fail_reason(job.failure))
            return view
        view.update(status="SUCCESS", progress="100%", imageUrl=await self._image_url(job), buttons=_buttons(job))
        return view

    async def _image_url(self, job: Job) -> str | None:
        """One image, or the grid of a job's four quadrants (composed once, on first sight)."""
        output = job.output or {}
        images = output.get("images") or []
        if len(images) == 1:
            return images[0]["url"]
        if "grid_url" not in output:
            paths = [self._files.path_for_url(image["url"]) for image in images]
            if not paths or any(path is None for path in paths):
                return None  # the quadrants' links expired
            found = [path for path in paths if path is not None]
            key = hashlib.sha256("|".join(path.name for path in found).encode()).hexdigest()[:32]
            grid = await self._files.obtain(f"mj-grid-{key}", ".png", "image/png",
                                            lambda target: _compose_grid(found, target))
            output["grid_url"] = self._files.publish(grid, f"grid-{key[:12]}.png")
        return output["grid_url"]

    # --- notifyHook --------------------------------------------------------------------------------

    async def _notify_changes(self, job: Job, hook: str) -> None:
        """Post the task when its run starts and when it ends (one attempt each, as the proxy does)."""
        board = self._board
        await asyncio.sleep(max(0.0, job.starts_at - board.now()))
        if board.phase(job) is Phase.RUNNING:
            await self._post(job, hook)
        while board.phase(job) is not Phase.DONE:
            await asyncio.sleep(max(job.ends_at - board.now(), 0.02))
        await self._post(job, hook)

    async def _post(self, job: Job, hook: str) -> None:
        body = orjson.dumps(await self._view(job))
        try:
            async with self._session().post(hook, data=body, headers={"Content-Type": "application/json"},
                                            allow_redirects=False) as response:
                await response.read()
                delivered = 200 <= response.status < 300
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            log.debug("sim: notifyHook %s failed: %s", hook, exc)
            delivered = False
        if job.channel is not None:
            if delivered:
                job.channel.stats.webhooks_sent += 1
            else:
                job.channel.stats.webhooks_failed += 1

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(timeout=self._notify_timeout, trust_env=False)
        return self._http


def _grid_inputs(prompt: str, action: str, seed: int, count: int = 4) -> dict[str, Any]:
    """What the output maker renders: ``count`` quadrants of 1K, in the prompt's ``--ar`` if it has one."""
    return {"action": action, "prompt": prompt, "seed": seed, "num_images": count, "resolution": "1K",
            "aspect_ratio": _aspect_ratio(prompt), "output_format": "png"}


def _aspect_ratio(prompt: str) -> str:
    words = prompt.split()
    for flag, value in zip(words, words[1:]):
        if flag in ("--ar", "--aspect") and ":" in value:
            return value
    return "1:1"


def _compose_grid(quadrants: list[Path], target: Path) -> None:
    """Four images as one 2x2 PNG, in reading order (U1 top left .. U4 bottom right)."""
    tiles = [Image.open(path).convert("RGB") for path in quadrants[:4]]
    width, height = tiles[0].size
    grid = Image.new("RGB", (width * 2, height * 2))
    for index, tile in enumerate(tiles):
        grid.paste(tile, ((index % 2) * width, (index // 2) * height))
    grid.save(target, format="PNG", compress_level=1)


def _buttons(job: Job) -> list[dict[str, Any]]:
    if job.inputs["action"] == "UPSCALE":
        return []
    own = _task_id(job)

    def button(kind: str, index: int, label: str, emoji: str = "", solo: bool = False) -> dict[str, Any]:
        custom_id = f"MJ::JOB::{kind}::{index}::{own}" + ("::SOLO" if solo else "")
        return {"customId": custom_id, "emoji": emoji, "label": label, "type": 2, "style": 2}

    return [*(button("upsample", n, f"U{n}") for n in range(1, 5)), button("reroll", 0, "", "🔄", solo=True),
            *(button("variation", n, f"V{n}") for n in range(1, 5))]


def _fail_reason(failure: RunFailure) -> str:
    if failure.error_type == "content_policy_violation":
        return "[Banned prompt detected] the job was blocked by Midjourney's moderation"
    if failure.error_type == "runner_disconnected":
        return "timeout: the job did not finish in time"
    return failure.message


def _notify_hook(body: dict[str, Any]) -> tuple[str | None, Response | None]:
    hook = body.get("notifyHook")
    if hook is None or hook == "":
        return None, None
    if not isinstance(hook, str) or not hook.startswith(("http://", "https://")):
        return None, _reply(VALIDATION_ERROR, "notifyHook: must be an http(s) URL")
    return hook, None


async def _json_object(request: Request) -> dict[str, Any] | None:
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        return None
    return body if isinstance(body, dict) else None


def _reply(code: int, description: str, *, result: str | None = None, properties: dict[str, Any] | None = None,
           status: int = 200) -> Response:
    return json_response({"code": code, "description": description, "result": result,
                          "properties": properties or {}}, status)


def _task_id(job: Job) -> str:
    return uuid.UUID(job.id).hex


def _ms(at: float) -> int:
    return int(at * 1000)
