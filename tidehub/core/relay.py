"""The OpenAI-compatible relay: one synchronous upstream call per client request, on the same keys,
credits, routing and usage records as tasks.

Every call's worst-case price is reserved before the upstream is asked (from a credit block, see
core/wallet.py) and the real charge is taken when the call ends: the upstream's own usage, or for
a stream the client left, what it had received. A call that fails costs nothing. Each call is
recorded as a settled task row, so usage records and statistics include it. Retries and failover
happen only before the first byte reaches the client; after that a broken upstream ends the stream
with an error (which the dialect renders in its own way).

Core keeps the admission (model, key, schema, credits), the failover, the metering and the billing;
the wire (paths, forms, SSE framing, transcript formats) is the relay adapter's, and the client's
words (error codes, paths in messages) are the dialect's.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import secrets
import socket
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator, Sequence, TypeVar

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
from tidehub.core.ports import RelayAnswer, RelayStream, Upload, UpstreamError, can_relay
from tidehub.store import Store

T = TypeVar("T")

def surface_of(endpoint: Endpoint) -> str | None:
    """Where in the relay a catalog entry is reachable (videos run as tasks, the rest as calls)."""
    capability = endpoint.capability
    if capability == "image":
        return "image-edits" if endpoint.mode == "image-edit" else "images"
    return {"chat": "chat", "embeddings": "embeddings", "transcribe": "transcriptions",
            "video": "videos"}.get(capability)


class UnknownModel(NotFound):
    """No model of that name on the surface; ``close`` are the names it may have meant."""

    def __init__(self, surface: str, model: str, close: list[str]) -> None:
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        super().__init__(f"The model {quoted(model)} does not exist or is not available for {surface}{hint}",
                         field="model", code="model_not_found")
        self.surface, self.model, self.close = surface, model, close


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


class _Passed:
    """A relayed stream's chunks as the client gets them, noting on the meter how they ended: an
    upstream that breaks off mid-stream ends them with a ``TidehubError`` (502) for the dialect
    to render. An iterator, not an async generator: nothing of it is left to close."""

    def __init__(self, chunks: AsyncIterator[bytes], meter: "StreamMeter") -> None:
        self._chunks = chunks
        self._meter = meter

    def __aiter__(self) -> "_Passed":
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self._chunks.__anext__()
        except StopAsyncIteration:
            self._meter.finished = True
            raise
        except UpstreamError as exc:
            self._meter.error = exc
            raise TidehubError("the upstream stream broke off; the partial answer is not charged",
                               code="upstream_error", status=502) from None


@dataclass
class StreamMeter:
    """What a relayed stream has passed on so far, read when it closes to settle the call."""

    upstream: RelayStream | None = None  # its content chunks sent (about one token each) and usage
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
            if surface != "videos" and not any(
                    can_relay(router.factories.get(kind)) and spec.get("api", surface) == surface
                    for kind, spec in endpoint.upstream.items()):
                # No OpenAI-speaking upstream serves it on this surface (nexus runs Midjourney through
                # its own task API, not /images/generations).
                continue
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
            raise UnknownModel(key, model, close)
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

    async def call(self, principal: Principal, surface: str, body: dict[str, Any]) -> RelayAnswer:
        """A JSON call (chat without streaming, embeddings, image generation)."""
        endpoint = self._admit(principal, surface, body)
        params = {k: v for k, v in body.items() if k != "model"}
        _check(endpoint, params)
        record = await self._open(principal, endpoint, endpoint.price.quote(params).credits, body)
        try:
            answer, route = await self._forward(
                endpoint, lambda r: r.adapter.relay(surface, r.model, body))  # type: ignore[attr-defined]
            payload = _json(answer.body)
            if surface == "images":
                # Upstream links expire within the hour: the client gets Tidehub's two-week copies.
                payload = await self._mirror(record, payload, route)
                answer.body = orjson.dumps(payload)
            measured = usage_tokens(payload.get("usage")) if surface in ("chat", "embeddings") else {}
            charge = endpoint.price.charge(params, measured, record.held)
        except BaseException as exc:
            self._settle(record, None, exc)
            raise
        self._settle(record, route, None, charge=charge, usage=payload.get("usage"))
        return answer

    async def call_form(self, principal: Principal, surface: str, fields: dict[str, Any],
                        files: Sequence[Upload]) -> RelayAnswer:
        """A call with uploaded files (image edits, transcriptions, translations): form fields come
        as text, typed by the model's schema to check and price them; the upload is sent again,
        whole, to each channel tried."""
        endpoint = self._admit(principal, surface, fields)
        params = _typed(endpoint, {k: v for k, v in fields.items() if k != "model" and not k.endswith("[]")})
        _check(endpoint, params)
        record = await self._open(principal, endpoint, endpoint.price.quote(params).credits, fields)
        try:
            answer, route = await self._forward(
                endpoint, lambda r: r.adapter.relay(surface, r.model, fields, files))  # type: ignore[attr-defined]
            if surface == "image-edits":
                answer.body = orjson.dumps(await self._mirror(record, _json(answer.body), route))
            charge = endpoint.price.charge(params, answer.measured, record.held)
        except BaseException as exc:
            self._settle(record, None, exc)
            raise
        self._settle(record, route, None, charge=charge)
        return answer

    async def stream(self, principal: Principal, body: dict[str, Any]) -> tuple[AsyncIterator[bytes], Callable[[], Awaitable[None]]]:
        """A streamed chat: the chunks to send, and what to call once the response is over, however
        it ended (it settles the call from what the client was sent). An upstream that breaks off
        mid-stream ends the chunks with a ``TidehubError`` (502) for the dialect to render."""
        endpoint = self._admit(principal, "chat", body)
        params = {k: v for k, v in body.items() if k != "model"}
        _check(endpoint, params)
        record = await self._open(principal, endpoint, endpoint.price.quote(params).credits, body)
        try:
            upstream, route = await self._forward(
                endpoint, lambda r: r.adapter.relay_stream(r.model, body), keep_slot=True)  # type: ignore[attr-defined]
        except BaseException as exc:
            self._settle(record, None, exc)
            raise
        meter = StreamMeter(upstream=upstream, record=record)

        async def close() -> None:
            self.in_flight[route.channel.id] -= 1
            upstream.close()
            self._settle_stream(meter, endpoint, params, route)

        return _Passed(upstream.chunks(), meter), close

    def _settle_stream(self, meter: StreamMeter, endpoint: Endpoint, params: dict[str, Any], route: Route) -> None:
        if meter.error is not None:
            self._settle(meter.record, route, meter.error)
            return
        assert meter.upstream is not None and meter.record is not None
        usage, delivered = meter.upstream.usage, meter.upstream.delivered
        measured = usage_tokens(usage)
        if not measured:
            # No usage came (the client left early, or the upstream ignores include_usage): the
            # prompt as English counts (4 characters a token) and one token per chunk delivered.
            prompt = len(orjson.dumps(params.get("messages"))) // 4
            measured = {"input_tokens": prompt, "output_tokens": delivered}
        charge = endpoint.price.charge(params, measured, meter.record.held)
        usage = usage or {"prompt_tokens": measured["input_tokens"],
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
        """Try channels until one answers (an adapter raises ``UpstreamError`` for an error answer).
        Returns the result and the route that gave it (with ``keep_slot``, its in-flight count
        stays up until the caller lowers it)."""
        failed: list[str] = []
        last: UpstreamError | None = None
        vendor = ""
        for _ in range(max(1, self.settings.relay_attempts)):
            try:
                route = await self.router.choose(endpoint, exclude=failed, in_flight=self._loads(), able=can_relay)
            except UpstreamError as exc:
                raise ServiceUnavailable(f"model {endpoint.model!r} is not available: no channel serves it",
                                         code="model_unavailable") from exc
            if route is None:
                break
            if route.channel.id in failed:  # only the channel that already failed this call is left
                self.router.release(route)  # picked all the same: a probe it was must not stay open
                break
            channel = route.channel.id
            self.in_flight[channel] += 1
            started = time.monotonic()
            kept = False
            try:
                result = await attempt(route)
                self.router.record(channel, True, time.monotonic() - started)
                kept = keep_slot
                return result, route
            except UpstreamError as exc:
                metrics.child(metrics.upstream_errors, route.channel.name, exc.code).inc()
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

    async def _mirror(self, call: Call, payload: dict[str, Any], route: Route) -> Any:
        """The answer pointing at Tidehub's copies of its files, each servable before the client sees
        its URL: clients download at once, so the asset rows are written now, not with the call's
        record in the wallet's next batch."""
        try:
            payload, rows = await self.assets.mirror(call.id, payload, route.adapter.auth_headers_for)
        except UpstreamError as exc:  # a result file that could not (or may not) be copied: the upstream's fault
            raise TidehubError(exc.message, code=exc.code, status=502) from None
        await self.assets.record(rows)
        return payload

    def _loads(self) -> dict[str, int]:
        running = self._running()
        if not self.in_flight:
            return running
        return {cid: running.get(cid, 0) + self.in_flight.get(cid, 0) for cid in {*running, *self.in_flight}}

    def _settle(self, call: Call, route: Route | None, failure: BaseException | None, *, charge: int = 0,
                usage: Any = None, status: str = SUCCEEDED) -> None:
        """The call's record, written with the wallet's next batch; a failure costs nothing."""
        if call.counted:
            call.counted = False
            self.tasks.limits.leave_call(call.principal)  # type: ignore[union-attr]
        row = self.tasks.call_row(call.principal, call.endpoint, call_id=call.id, user_identifier=call.user)
        now = time.time()
        row.update(status=status, progress=100, started_at=call.reservation.started, finished_at=now, updated_at=now,
                   next_check_at=None, output={"usage": _counts(usage)} if isinstance(usage, dict) else {})
        if route is not None:
            row.update(channel_id=route.channel.id, adapter=route.adapter.name)
        if failure is not None:
            charge = 0
            row.update(status=FAILED, progress=0, error_code=getattr(failure, "code", None) or "interrupted",
                       error_message=getattr(failure, "message", None) or "the call was interrupted")
        elif status == CANCELED:
            row.update(error_code="client_disconnected",
                       error_message="the client left before the answer was complete")
        self.wallet.record(call.reservation, row, charge)
        metrics.relay_in_flight.dec()
        model = call.endpoint.model
        metrics.child(metrics.relay_calls, model, route.channel.name if route is not None else "", row["status"]).inc()
        tokens = usage_tokens(usage) if failure is None else {}
        if tokens:
            metrics.child(metrics.relay_tokens, model, "input").inc(tokens["input_tokens"])
            metrics.child(metrics.relay_tokens, model, "output").inc(tokens["output_tokens"])

    async def close(self) -> None:
        await self.wallet.close()


def _counts(usage: dict[str, Any]) -> dict[str, Any]:
    """What a call's record keeps of the upstream's usage: its top-level counts (tokens, the
    estimate flag), not the nested breakdowns, which no charge or figure reads."""
    return {k: v for k, v in usage.items() if isinstance(v, (int, float, bool))}


def client_error(exc: UpstreamError, vendor: str) -> TidehubError:
    """An upstream refusal as the client should see it: its own words, not the vendor's name."""
    message = exc.message
    if vendor and message.startswith(f"{vendor}: "):
        message = message[len(vendor) + 2:]
    field = exc.field.removeprefix("input.") if exc.field else None
    if exc.code == "invalid_input":
        return InvalidInput(message, field=field)
    if exc.code == "content_policy":
        return TidehubError(message, field=field, code="content_policy", status=400)
    if exc.code in ("upstream_rate_limited", "upstream_quota"):
        return TidehubError("the upstream is rate limiting requests for this model; retry shortly",
                            code="upstream_rate_limited", status=429,
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
        raise InvalidInput(exc.message.removeprefix("input."), field=field, code=exc.code) from None


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
