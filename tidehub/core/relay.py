"""The OpenAI-compatible relay: one synchronous upstream call per client request, on the same keys,
credits, routing and usage records as tasks.

Every call's worst-case price is reserved before the upstream is asked (from a credit block, see
core/wallet.py) and the real charge is taken when the call ends: the upstream's own usage, or for
a stream the client left, what it had received. A call that fails costs nothing. Each call is
recorded as a settled task row, so usage records and statistics include it. Retries and failover
happen only before the first byte reaches the client; after that a broken upstream ends the stream
with an error event.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import re
import secrets
import socket
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator, TypeVar

import aiohttp
import anyio
import orjson

from tidehub.catalog import Catalog, Endpoint
from tidehub.config import Settings
from tidehub.core import metrics
from tidehub.core.assets import AssetStore
from tidehub.core.auth import Principal
from tidehub.core.billing import usage_tokens
from tidehub.errors import QUOTE_LIMIT, InvalidInput, NotFound, ServiceUnavailable, TidehubError, quoted
from tidehub.core.routing import Route, Router
from tidehub.core.lifecycle import CANCELED, FAILED, SUCCEEDED
from tidehub.core.tasks import Task, TaskService
from tidehub.core.wallet import Reservation, Wallet
from tidehub.core.ports import UpstreamError, can_relay
from tidehub.store import Store

T = TypeVar("T")

#: The relay's surfaces and the upstream path of each (translations share whisper's entries).
PATHS = {
    "chat": "/chat/completions",
    "embeddings": "/embeddings",
    "images": "/images/generations",
    "image-edits": "/images/edits",
    "transcriptions": "/audio/transcriptions",
    "translations": "/audio/translations",
}

#: A stream's usage chunk, as OpenAI sends it last when ``stream_options.include_usage`` is set.
_USAGE_ONLY = re.compile(rb'"choices"\s*:\s*\[\s*\]')
_CUE_END = re.compile(r"(\d+):(\d{2}):(\d{2})[.,](\d{3})\s*$")


def surface_of(endpoint: Endpoint) -> str | None:
    """Where in the relay a catalog entry is reachable (videos run as tasks, the rest as calls)."""
    capability = endpoint.capability
    if capability == "image":
        return "image-edits" if endpoint.mode == "image-edit" else "images"
    return {"chat": "chat", "embeddings": "embeddings", "transcribe": "transcriptions",
            "video": "videos"}.get(capability)


@dataclass
class Answer:
    """The upstream's answer as the client gets it."""

    status: int
    headers: dict[str, str]
    body: bytes


@dataclass
class Upload:
    name: str
    filename: str
    content_type: str
    data: bytes


@dataclass
class Call:
    """One relayed call in progress: its credits and who makes it."""

    reservation: Reservation
    principal: Principal
    endpoint: Endpoint
    user: str | None
    # Counted against the key's concurrency limit (core/limits.py) until it is settled.
    counted: bool = False

    @property
    def id(self) -> str:
        return self.reservation.call_id

    @property
    def held(self) -> int:
        return self.reservation.amount


@dataclass
class StreamMeter:
    """What a relayed stream has passed on so far, read when it closes to settle the call."""

    delivered: int = 0  # content chunks the client was sent: about one token each
    usage: dict[str, Any] | None = None
    finished: bool = False
    error: UpstreamError | None = None
    record: Call | None = None


class Relay:
    def __init__(self, tasks: TaskService, store: Store, catalog: Catalog, router: Router, assets: AssetStore,
                 settings: Settings, running: Callable[[], dict[str, int]] = dict) -> None:
        self.tasks = tasks
        self.store = store
        self.router = router
        self.assets = assets
        self.settings = settings
        self.owner = f"relay-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        # Tasks each channel runs (the engine's count) plus the relay's calls in flight.
        self._running = running
        self.in_flight: dict[str, int] = defaultdict(int)
        self.wallet = Wallet(store, tasks, settings, self.owner)
        self.models: dict[tuple[str, str], Endpoint] = {}
        for endpoint in catalog.endpoints.values():
            surface = surface_of(endpoint)
            if surface is None:
                continue
            if surface == "videos" and "seconds" not in endpoint.input_schema.get("properties", {}):
                continue  # /videos takes OpenAI's video fields (prompt, seconds, size): Sora-shaped models only
            if surface != "videos" and not any(can_relay(router.factories.get(kind)) for kind in endpoint.upstream):
                continue  # no OpenAI-speaking upstream serves it
            self.models.setdefault((surface, endpoint.model), endpoint)

    # -- models --------------------------------------------------------------------------------

    def resolve(self, surface: str, model: Any) -> Endpoint:
        if model is None or model == "":
            raise InvalidInput("model: is required", field="model")
        if not isinstance(model, str):
            raise InvalidInput("model: must be a string", field="model")
        key = "transcriptions" if surface == "translations" else surface
        endpoint = self.models.get((key, model))
        if endpoint is None:
            names = [name for s, name in self.models if s == key]
            close = difflib.get_close_matches(model, names, n=3, cutoff=0.5) if len(model) <= QUOTE_LIMIT else []
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise NotFound(f"The model {quoted(model)} does not exist or is not available on "
                           f"{PATHS.get(key, '/videos')}{hint}", field="model", code="model_not_found")
        return endpoint

    def listed(self, principal: Principal) -> list[Endpoint]:
        """One entry per model name the key may use, in catalog order."""
        seen: dict[str, Endpoint] = {}
        for (_, name), endpoint in self.models.items():
            if name not in seen and principal.allows_model(name, endpoint.slug, *endpoint.hub_ids):
                seen[name] = endpoint
        return list(seen.values())

    # -- calls ---------------------------------------------------------------------------------

    async def submit_video(self, principal: Principal, fields: dict[str, Any]) -> Task:
        """``POST /videos``: a task like any other, for a model that takes OpenAI's video fields."""
        endpoint = self.resolve("videos", fields.get("model") or "sora-2")
        data = {k: v for k, v in fields.items() if k != "model"}
        if isinstance(data.get("seconds"), int) and not isinstance(data.get("seconds"), bool):
            data["seconds"] = str(data["seconds"])  # the SDK sends a string, a JSON client may not
        with top_level_fields():
            return await self.tasks.submit(principal, endpoint, data, id_prefix="video", model_name=endpoint.model)

    async def call(self, principal: Principal, surface: str, body: dict[str, Any]) -> Answer:
        """A JSON call (chat without streaming, embeddings, image generation)."""
        endpoint = self._admit(principal, surface, body)
        params = {k: v for k, v in body.items() if k != "model"}
        _check(endpoint, params)
        record = await self._open(principal, endpoint, endpoint.price.quote(params).credits, body)
        path = PATHS[surface]
        try:
            answer, route = await self._forward(
                endpoint, lambda r: r.adapter.call(path, {**body, "model": r.model}))  # type: ignore[attr-defined]
            payload = _json(answer.body)
            rows: list[dict[str, Any]] = []
            if surface == "images":
                # Upstream links expire within the hour: the client gets Tidehub's two-week copies.
                payload, rows = await self._mirror(record, payload, route)
                answer.body = orjson.dumps(payload)
            measured = usage_tokens(payload.get("usage")) if surface in ("chat", "embeddings") else {}
            charge = endpoint.price.charge(params, measured, record.held)
        except BaseException as exc:
            self._settle(record, None, exc)
            raise
        self._settle(record, route, None, charge=charge, usage=payload.get("usage"), rows=rows)
        return answer

    async def call_form(self, principal: Principal, surface: str, fields: dict[str, Any],
                        files: list[Upload]) -> Answer:
        """A multipart call (image edits, transcriptions, translations): the upload is sent again,
        whole, to each channel tried."""
        endpoint = self._admit(principal, surface, fields)
        params = _typed(endpoint, {k: v for k, v in fields.items() if k != "model" and not k.endswith("[]")})
        _check(endpoint, params)
        record = await self._open(principal, endpoint, endpoint.price.quote(params).credits, fields)
        wanted = str(fields.get("response_format") or "json")
        sent = dict(fields)
        audio = surface in ("transcriptions", "translations")
        if audio and wanted in ("json", "text"):
            # Ask for the length too (verbose_json), which the price needs, and answer as asked.
            sent["response_format"] = "verbose_json"

        def form(model: str) -> aiohttp.FormData:
            data = aiohttp.FormData()
            for name, value in {**sent, "model": model}.items():
                for item in value if isinstance(value, list) else [value]:
                    data.add_field(name, str(item))
            for upload in files:
                data.add_field(upload.name, upload.data, filename=upload.filename, content_type=upload.content_type)
            return data

        path = PATHS[surface]
        try:
            answer, route = await self._forward(
                endpoint, lambda r: r.adapter.call(path, form=form(r.model)))  # type: ignore[attr-defined]
            rows: list[dict[str, Any]] = []
            measured: dict[str, float] = {}
            if audio:
                answer.body, seconds = _transcript(answer.body, sent["response_format"], wanted)
                if seconds is not None:
                    measured = {"audio_seconds": seconds, "audio_minutes": seconds / 60}
                if wanted in ("text", "srt", "vtt"):
                    answer.headers["content-type"] = "text/plain; charset=utf-8"
            else:
                payload, rows = await self._mirror(record, _json(answer.body), route)
                answer.body = orjson.dumps(payload)
            charge = endpoint.price.charge(params, measured, record.held)
        except BaseException as exc:
            self._settle(record, None, exc)
            raise
        self._settle(record, route, None, charge=charge, rows=rows)
        return answer

    async def stream(self, principal: Principal, body: dict[str, Any]) -> tuple[AsyncIterator[bytes], Callable[[], Awaitable[None]]]:
        """A streamed chat: the events to send, and what to call once the response is over, however
        it ended (it settles the call from what the client was sent)."""
        endpoint = self._admit(principal, "chat", body)
        params = {k: v for k, v in body.items() if k != "model"}
        _check(endpoint, params)
        record = await self._open(principal, endpoint, endpoint.price.quote(params).credits, body)
        options = body.get("stream_options") if isinstance(body.get("stream_options"), dict) else {}
        client_wants_usage = bool(options.get("include_usage"))
        # Usage is asked for whatever the client wants: the charge depends on it.
        sent = {**body, "stream_options": {**options, "include_usage": True}}
        try:
            upstream, route = await self._forward(
                endpoint, lambda r: r.adapter.stream("/chat/completions", {**sent, "model": r.model}),  # type: ignore[attr-defined]
                keep_slot=True)
        except BaseException as exc:
            self._settle(record, None, exc)
            raise
        meter = StreamMeter(record=record)
        assert meter.record is not None

        def passed_on(event: bytes) -> bytes:
            if b'"usage":{' in event or b'"usage": {' in event:
                meter.usage = route.adapter.usage_of(event) or meter.usage  # type: ignore[attr-defined]
                if not client_wants_usage and _USAGE_ONLY.search(event):
                    return b""
            elif not client_wants_usage:
                # Asked for on the client's behalf: every other chunk then says "usage":null.
                event = event.replace(b',"usage":null', b"")
            return event

        async def events() -> AsyncIterator[bytes]:
            try:
                async for batch in upstream.batches():
                    out = b"".join(passed_on(event) for event in batch)
                    # Content chunks sent: about one token each (counted, not parsed: this is hot).
                    meter.delivered += out.count(b'"content":"') - out.count(b'"content":""')
                    if out:
                        yield out
                meter.finished = True
            except UpstreamError as exc:
                meter.error = exc
                yield b"data: " + orjson.dumps({"error": {
                    "message": "the upstream stream broke off; the partial answer is not charged",
                    "type": "server_error", "param": None, "code": "upstream_error"}}) + b"\n\n"

        async def close() -> None:
            self.in_flight[route.channel.id] -= 1
            with anyio.CancelScope(shield=True):
                await upstream.aclose()
            self._settle_stream(meter, endpoint, params, route)

        return events(), close

    def _settle_stream(self, meter: StreamMeter, endpoint: Endpoint, params: dict[str, Any], route: Route) -> None:
        if meter.error is not None:
            self._settle(meter.record, route, meter.error)
            return
        measured = usage_tokens(meter.usage)
        if not measured:
            # No usage came (the client left early, or the upstream ignores include_usage): the
            # prompt as English counts (4 characters a token) and one token per chunk delivered.
            prompt = len(orjson.dumps(params.get("messages"))) // 4
            measured = {"input_tokens": prompt, "output_tokens": meter.delivered}
        charge = endpoint.price.charge(params, measured, meter.record.held)
        usage = meter.usage or {"prompt_tokens": measured["input_tokens"],
                                "completion_tokens": measured["output_tokens"], "estimated": True}
        status = SUCCEEDED if meter.finished else CANCELED
        self._settle(meter.record, route, None, charge=charge, usage=usage, status=status)

    # -- the parts every call shares -------------------------------------------------------------

    def _admit(self, principal: Principal, surface: str, body: dict[str, Any]) -> Endpoint:
        endpoint = self.resolve(surface, body.get("model"))
        principal.check_model(endpoint.model, endpoint.slug, *endpoint.hub_ids)
        return endpoint

    async def _open(self, principal: Principal, endpoint: Endpoint, held: int, body: dict[str, Any]) -> Call:
        user = body.get("user")
        counted = self.tasks.limits is not None and await self.tasks.limits.enter_call(principal)
        try:
            reservation = await self.wallet.reserve(principal, endpoint, held)
        except BaseException:
            if counted:
                self.tasks.limits.leave_call(principal)  # type: ignore[union-attr]
            raise
        metrics.relay_in_flight.inc()
        return Call(reservation, principal, endpoint, user if isinstance(user, str) and user else None, counted)

    async def _forward(self, endpoint: Endpoint, attempt: Callable[[Route], Awaitable[Any]], *,
                       keep_slot: bool = False) -> tuple[Any, Route]:
        """Try channels until one answers; an answer's error is classified by its adapter. Returns
        the result and the route that gave it (with ``keep_slot``, its in-flight count stays up
        until the caller lowers it)."""
        failed: list[str] = []
        last: UpstreamError | None = None
        vendor = ""
        for _ in range(max(1, self.settings.relay_attempts)):
            try:
                route = self.router.pick(endpoint, exclude=failed, in_flight=self._loads(), able=can_relay)
            except UpstreamError as exc:
                raise ServiceUnavailable(f"model {endpoint.model!r} is not available: no channel serves it",
                                         code="model_unavailable") from exc
            if route is None or route.channel.id in failed:
                break
            channel = route.channel.id
            self.in_flight[channel] += 1
            started = time.monotonic()
            kept = False
            try:
                result = await attempt(route)
                error = route.adapter.classify(*result) if isinstance(result, tuple) else None  # type: ignore[attr-defined]
                if error is None:
                    self.router.record(channel, True, time.monotonic() - started)
                    kept = keep_slot
                    return (Answer(*result) if isinstance(result, tuple) else result), route
                raise error
            except UpstreamError as exc:
                metrics.upstream_errors.labels(route.channel.name, exc.code).inc()
                if exc.retryable and exc.code != "upstream_rate_limited":
                    self.router.record(channel, False, time.monotonic() - started)
                if not exc.retryable:
                    raise client_error(exc, route.adapter.name) from None
                failed.append(channel)
                last, vendor = exc, route.adapter.name
            finally:
                self.router.release(route)  # a probe cancelled or refused lets the next request probe
                if not kept:
                    self.in_flight[channel] -= 1
        if last is not None:
            raise client_error(last, vendor) from None
        raise ServiceUnavailable(f"every channel serving {endpoint.model!r} is busy; try again shortly",
                                 code="channels_busy", details={"retry_after": 1})

    async def _mirror(self, call: Call, payload: dict[str, Any], route: Route) -> tuple[Any, list[dict[str, Any]]]:
        try:
            return await self.assets.mirror(call.id, payload, route.adapter.auth_headers_for)
        except UpstreamError as exc:  # a result file that could not (or may not) be copied: the upstream's fault
            raise TidehubError(exc.message, code=exc.code, status=502) from None

    def _loads(self) -> dict[str, int]:
        running = self._running()
        if not self.in_flight:
            return running
        return {cid: running.get(cid, 0) + self.in_flight.get(cid, 0) for cid in {*running, *self.in_flight}}

    def _settle(self, call: Call, route: Route | None, failure: BaseException | None, *, charge: int = 0,
                usage: Any = None, rows: list[dict[str, Any]] | None = None, status: str = SUCCEEDED) -> None:
        """The call's record, written with the wallet's next batch; a failure costs nothing."""
        if call.counted:
            call.counted = False
            self.tasks.limits.leave_call(call.principal)  # type: ignore[union-attr]
        row = self.tasks.call_row(call.principal, call.endpoint, user_identifier=call.user)
        now = time.time()
        row.update(status=status, progress=100, started_at=call.reservation.started, finished_at=now, updated_at=now,
                   next_check_at=None, output={"usage": usage} if usage is not None else {})
        if route is not None:
            row.update(channel_id=route.channel.id, adapter=route.adapter.name)
        if failure is not None:
            charge = 0
            row.update(status=FAILED, progress=0, error_code=getattr(failure, "code", None) or "interrupted",
                       error_message=getattr(failure, "message", None) or "the call was interrupted")
        elif status == CANCELED:
            row.update(error_code="client_disconnected",
                       error_message="the client left before the answer was complete")
        self.wallet.record(call.reservation, row, charge, rows)
        metrics.relay_in_flight.dec()
        model = call.endpoint.model
        metrics.relay_calls.labels(model, route.channel.name if route is not None else "", row["status"]).inc()
        tokens = usage_tokens(usage) if failure is None else {}
        if tokens:
            metrics.relay_tokens.labels(model, "input").inc(tokens["input_tokens"])
            metrics.relay_tokens.labels(model, "output").inc(tokens["output_tokens"])

    async def close(self) -> None:
        await self.wallet.close()


def client_error(exc: UpstreamError, vendor: str) -> TidehubError:
    """An upstream refusal as the client should see it: its own words, not the vendor's name."""
    message = exc.message
    if vendor and message.startswith(f"{vendor}: "):
        message = message[len(vendor) + 2:]
    field = exc.field.removeprefix("input.") if exc.field else None
    if exc.code == "invalid_input":
        return InvalidInput(message, field=field, code="invalid_value")
    if exc.code == "content_policy":
        return TidehubError(message, field=field, code="content_policy_violation", status=400)
    if exc.code in ("upstream_rate_limited", "upstream_quota"):
        return TidehubError("the upstream is rate limiting requests for this model; retry shortly",
                            code="rate_limit_exceeded", status=429,
                            details={"retry_after": max(1, round(exc.retry_after or 1))})
    return TidehubError(f"every upstream attempt failed (last: {exc.code})", code="upstream_error", status=502)


def _check(endpoint: Endpoint, params: dict[str, Any]) -> None:
    with top_level_fields():
        endpoint.check(params)


@contextlib.contextmanager
def top_level_fields() -> Iterator[None]:
    """Input errors of a relayed body: its fields are top-level here, not under ``input`` as in a task."""
    try:
        yield
    except InvalidInput as exc:
        field = exc.field.removeprefix("input.") if exc.field else None
        raise InvalidInput(exc.message.removeprefix("input."), field=field, code="invalid_value") from None


def _json(body: bytes) -> dict[str, Any]:
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        payload = None
    if not isinstance(payload, dict):
        raise TidehubError("the upstream answered with something that is not a JSON object",
                           code="upstream_error", status=502)
    return payload


def _typed(endpoint: Endpoint, fields: dict[str, Any]) -> dict[str, Any]:
    """Form fields are text: numbers and booleans as the schema types them, for validation and price."""
    properties = endpoint.input_schema.get("properties", {})
    typed: dict[str, Any] = {}
    for name, value in fields.items():
        kind = (properties.get(name) or {}).get("type")
        try:
            if kind == "integer":
                value = int(value)
            elif kind == "number":
                value = float(value)
            elif kind == "boolean":
                value = str(value).lower() in ("1", "true", "yes")
        except (TypeError, ValueError):
            raise InvalidInput(f"{name}: must be {'an' if kind == 'integer' else 'a'} {kind}", field=name) from None
        typed[name] = value
    return typed


def _transcript(body: bytes, received: str, wanted: str) -> tuple[bytes, float | None]:
    """The transcript in the format the client asked for, and the audio's length when it shows."""
    if received == "verbose_json":
        try:
            verbose = orjson.loads(body)
        except orjson.JSONDecodeError:
            return body, None
        seconds = verbose.get("duration") if isinstance(verbose, dict) else None
        seconds = float(seconds) if isinstance(seconds, (int, float)) else None
        if wanted == "text":
            return (str(verbose.get("text", "")) + "\n").encode(), seconds
        if wanted == "json":
            short: dict[str, Any] = {"text": verbose.get("text", "")}
            if "usage" in verbose:
                short["usage"] = verbose["usage"]
            return orjson.dumps(short), seconds
        return body, seconds
    # srt / vtt: the last cue's end is the length, near enough.
    ends = [_CUE_END.search(line.split("-->")[1]) for line in body.decode(errors="replace").splitlines() if "-->" in line]
    found = [m for m in ends if m]
    if not found:
        return body, None
    h, m, s, ms = (int(x) for x in found[-1].groups())
    return body, h * 3600 + m * 60 + s + ms / 1000
