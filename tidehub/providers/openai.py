"""OpenAI (and OpenAI-compatible servers such as vLLM or Ollama): videos as engine tasks, and a relay.

Two faces over one aiohttp session:

- task-style, for the engine (like fal): Sora videos. ``submit`` creates ``POST /videos``, ``status``
  polls ``GET /videos/{id}``, ``result`` names ``/videos/{id}/content``, which needs this adapter's
  Authorization header to download (``auth_headers_for``);
- relay-style, core's ``RelayAdapter``: ``relay`` makes one call on a relay surface (the path, the
  multipart form, the transcript formats are this module's business) and ``relay_stream`` passes a
  chat's SSE events through, metering them. Beneath them ``call`` forwards one request and hands
  back OpenAI's own answer unchanged (raising only when nothing came back), ``stream`` reads an SSE
  body event by event, ``classify`` turns an error answer into an ``UpstreamError`` for retry
  decisions, and ``usage_of`` reads the usage chunk of a stream.

``base_url`` includes the version prefix: ``https://api.openai.com/v1``.
"""

from __future__ import annotations

import asyncio
import email.utils
import re
import time
from typing import Any, AsyncIterator, Mapping, Sequence

import aiohttp
import orjson
from yarl import URL

from tidehub.core.ports import Job, JobState, RelayAnswer, Upload, UpstreamError
from tidehub.providers.base import LazyPool, same_origin

#: Response headers ``call`` hands back (lower case).
PASSED_HEADERS = ("content-type", "retry-after", "retry-after-ms", "x-request-id")

#: Error codes (in an error body or a failed video) that mean the input was refused on content grounds.
_POLICY_WORDS = ("policy", "moderation", "safety", "content_filter")

#: The synchronous surfaces a task can run on: ``api`` in a catalog upstream spec -> path.
SYNC_APIS = {"chat": "/chat/completions", "embeddings": "/embeddings", "images": "/images/generations"}

#: The relay's surfaces (core's names) and the path of each.
RELAY_PATHS = {
    "chat": "/chat/completions",
    "embeddings": "/embeddings",
    "images": "/images/generations",
    "image-edits": "/images/edits",
    "transcriptions": "/audio/transcriptions",
    "translations": "/audio/translations",
}
#: The surfaces whose requests are multipart forms (with the uploaded files).
_FORM_SURFACES = ("image-edits", "transcriptions", "translations")
#: A stream's usage chunk, as OpenAI sends it last when ``stream_options.include_usage`` is set.
_USAGE_ONLY = re.compile(rb'"choices"\s*:\s*\[\s*\]')
_CUE_END = re.compile(r"(\d+):(\d{2}):(\d{2})[.,](\d{3})\s*$")

_VIDEO_STATES = {"queued": "queued", "in_progress": "running", "completed": "completed", "failed": "failed"}


class OpenAIAdapter:
    name = "openai"

    def __init__(self, base_url: str, key: str, *, timeout_s: float = 60.0, max_connections: int = 200,
                 **_ignored: Any) -> None:
        self.base_url = base_url.rstrip("/")
        self._base = URL(self.base_url)
        self._auth = {"Authorization": f"Bearer {key}"}
        # No session-wide Content-Type: multipart bodies set their own.
        self._http = LazyPool(self._auth, timeout_s, max_connections)
        # A stream may run for minutes: bound the wait between chunks, not the whole body.
        self.stream_timeout = aiohttp.ClientTimeout(total=None, connect=min(10.0, timeout_s), sock_read=timeout_s)

    async def close(self) -> None:
        await self._http.close()

    # --- task-style: the engine's interface ---------------------------------------------------------

    async def submit(self, model: str, payload: dict[str, Any], *, callback_url: str | None = None,
                     spec: Mapping[str, Any] | None = None) -> Job:
        """Videos are real upstream jobs; chat, embeddings and image generation answer at once, so
        the whole call happens here and the Job carries the answer (``status`` says completed)."""
        api = (spec or {}).get("api", "videos")
        if api in SYNC_APIS:
            body = {k: v for k, v in payload.items() if v is not None}
            body["model"] = model
            body.pop("stream", None)  # a task wants the whole answer
            answer = await self._json("POST", SYNC_APIS[api], body, input_fields=True)
            return Job(ref=str(answer.get("id") or f"{api}-{time.time_ns()}"), data={"api": api, "answer": answer})
        if api != "videos":
            raise UpstreamError(f"openai adapter has no api {api!r}", code="model_unavailable")
        body = {k: v for k, v in payload.items() if v is not None}
        body["model"] = model
        if isinstance(body.get("seconds"), (int, float)) and not isinstance(body["seconds"], bool):
            body["seconds"] = str(int(body["seconds"]))  # OpenAI wants "4" | "8" | "12"
        answer = await self._json("POST", "/videos", body, input_fields=True)
        video_id = answer.get("id")
        if not video_id:
            raise UpstreamError("openai answered a video submit without an id", retryable=True)
        return Job(ref=str(video_id), data={})

    async def status(self, job: Job) -> JobState:
        if "answer" in job.data:
            return JobState("completed")
        answer = await self._json("GET", f"/videos/{job.ref}")
        state = _VIDEO_STATES.get(answer.get("status"))  # type: ignore[arg-type]
        if state is None:
            raise UpstreamError(f"openai answered an unknown video status {answer.get('status')!r}", retryable=True)
        if state == "failed":
            return JobState("failed", error=_video_error(answer.get("error")))
        return JobState(state)  # type: ignore[arg-type]

    async def result(self, job: Job) -> dict[str, Any]:
        if "answer" in job.data:
            answer = job.data["answer"]
            return images_output(answer) if job.data.get("api") == "images" else answer
        return {"video": {"url": f"{self.base_url}/videos/{job.ref}/content", "content_type": "video/mp4"}}

    async def cancel(self, job: Job) -> None:
        if "answer" in job.data:
            return  # finished as it started
        try:
            await self._json("DELETE", f"/videos/{job.ref}")
        except UpstreamError as exc:
            # Already gone, or never known: nothing left to stop.
            if exc.status != 404:
                raise

    async def verify_callback(self, headers: Mapping[str, str], body: bytes) -> str:
        raise UpstreamError("openai channels take no callbacks; their videos are polled", code="bad_callback")

    def auth_headers_for(self, url: str) -> dict[str, str]:
        """The Authorization header a download of ``url`` needs: only for URLs under this adapter's base."""
        try:
            target = URL(url)
        except (ValueError, TypeError):
            return {}
        if not same_origin(target, self._base):
            return {}
        prefix = self._base.path.rstrip("/")
        if target.path == prefix or target.path.startswith(prefix + "/"):
            return dict(self._auth)
        return {}

    async def _json(self, method: str, path: str, body: dict[str, Any] | None = None, *,
                    input_fields: bool = False) -> dict[str, Any]:
        status, headers, raw = await self.call(path, body, method=method)
        error = classify(status, headers, raw)
        if error is not None:
            if input_fields and error.field and not error.field.startswith("input."):
                error.field = f"input.{error.field}"  # the engine's callers name catalog input fields
            raise error
        try:
            answer = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            raise UpstreamError(f"openai answered {path} with a body that is not JSON", code="upstream_unavailable",
                                retryable=True, status=status) from None
        return answer if isinstance(answer, dict) else {}

    # --- relay-style: core's RelayAdapter ------------------------------------------------------------

    async def relay(self, surface: str, model: str, body: Mapping[str, Any],
                    files: Sequence[Upload] = ()) -> RelayAnswer:
        path = RELAY_PATHS.get(surface)
        if path is None:
            raise UpstreamError(f"{self.name} has no relay surface {surface!r}", code="model_unavailable")
        if surface not in _FORM_SURFACES:
            return self._answer(*await self.call(path, {**body, "model": model}))
        wanted = str(body.get("response_format") or "json")
        sent = dict(body)
        audio = surface in ("transcriptions", "translations")
        if audio and wanted in ("json", "text"):
            # Ask for the length too (verbose_json), which the price needs, and answer as asked.
            sent["response_format"] = "verbose_json"
        answer = self._answer(*await self.call(path, form=_form({**sent, "model": model}, files)))
        if audio:
            answer.body, seconds = _transcript(answer.body, str(sent.get("response_format") or "json"), wanted)
            if seconds is not None:
                answer.measured = {"audio_seconds": seconds, "audio_minutes": seconds / 60}
            if wanted in ("text", "srt", "vtt"):
                answer.headers["content-type"] = "text/plain; charset=utf-8"
        return answer

    async def relay_stream(self, model: str, body: Mapping[str, Any]) -> "RelayedChat":
        options = body.get("stream_options") if isinstance(body.get("stream_options"), dict) else {}
        # Usage is asked for whatever the client wants: the charge depends on it.
        sent = {**body, "model": model, "stream_options": {**options, "include_usage": True}}
        return RelayedChat(await self.stream(RELAY_PATHS["chat"], sent), bool(options.get("include_usage")))

    def _answer(self, status: int, headers: dict[str, str], body: bytes) -> RelayAnswer:
        error = self.classify(status, headers, body)
        if error is not None:
            raise error
        return RelayAnswer(status, headers, body)

    # --- the wire beneath ---------------------------------------------------------------------------

    async def call(self, path: str, body: dict[str, Any] | None = None, *, form: aiohttp.FormData | None = None,
                   method: str = "POST") -> tuple[int, dict[str, str], bytes]:
        """Forward one request to ``{base}{path}``: status, selected headers (lower-case) and the raw body.

        Any HTTP answer is returned as is, errors included; only a failure to get one (connection,
        timeout, a body cut short) raises ``UpstreamError`` (retryable). A ``FormData`` can be sent
        once only: build a new one for another attempt.
        """
        kwargs: dict[str, Any] = {}
        if form is not None:
            kwargs["data"] = form
        elif body is not None:
            kwargs["json"] = body
        try:
            async with self._http().request(method, f"{self.base_url}{path}", **kwargs) as resp:
                raw = await resp.read()
                return resp.status, _selected(resp.headers), raw
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise _transport_error(exc) from None

    async def stream(self, path: str, body: dict[str, Any]) -> SSEStream:
        """POST ``body`` with ``stream: true``; once the upstream answered 200, its events to iterate.

        A non-200 answer raises the classified ``UpstreamError`` here, before anything was streamed,
        so the caller may still try another channel. Iterate the result (``async for event in s``)
        and close it when done (``async with`` or ``aclose``); exhausting it, an error or a
        cancellation closes the upstream response too.
        """
        body = {**body, "stream": True}
        try:
            resp = await self._http().post(f"{self.base_url}{path}", json=body, timeout=self.stream_timeout)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise _transport_error(exc) from None
        if resp.status != 200:
            try:
                raw = await resp.read()
            except (aiohttp.ClientError, asyncio.TimeoutError):
                raw = b""
            finally:
                resp.release()
            raise classify(resp.status, _selected(resp.headers), raw) or UpstreamError(
                f"openai answered a stream with HTTP {resp.status}", status=resp.status, retryable=True)
        return SSEStream(resp)

    @staticmethod
    def classify(status: int, headers: Mapping[str, str], body: bytes) -> UpstreamError | None:
        """See the module-level ``classify``."""
        return classify(status, headers, body)

    @staticmethod
    def usage_of(event: bytes) -> dict[str, Any] | None:
        """See the module-level ``usage_of``."""
        return usage_of(event)


class SSEStream:
    """An upstream SSE body as its events, each exactly the bytes received, terminating blank line included.

    Joined, the events are the body. Lines are split here, not by aiohttp, so an event of any size
    (a partial image in base64) passes.
    """

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self._resp = resp
        self._chunks = resp.content.iter_any()
        self._buffer = b""  # bytes not yet split into lines
        self._event = b""  # lines of the event being read
        self._done = False
        self.status = resp.status
        self.headers = _selected(resp.headers)

    def __aiter__(self) -> SSEStream:
        return self

    async def __anext__(self) -> bytes:
        try:
            while True:
                event = self._take_event()
                if event is not None:
                    return event
                if self._done:
                    tail, self._event, self._buffer = self._event + self._buffer, b"", b""
                    if tail.strip():
                        return tail  # the body ended without a final blank line
                    self.close()
                    raise StopAsyncIteration
                try:
                    chunk = await self._chunks.__anext__()
                except StopAsyncIteration:
                    self._done = True
                    continue
                self._buffer += chunk
        except StopAsyncIteration:
            raise
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            self.close()
            raise _transport_error(exc, "the stream broke off") from None
        except BaseException:
            self.close()  # cancelled (the client went away) or worse: let the connection go
            raise

    async def batches(self) -> AsyncIterator[list[bytes]]:
        """The events as they arrive, those of one network read together: a relay passes each
        batch on in one write rather than one write per event, and never waits to fill one."""
        async for first in self:
            yield [first, *self._take_all()]

    def _take_all(self) -> list[bytes]:
        """Every complete event already received (no waiting). Most streams end their lines with a
        bare LF: their events are cut at each blank line in one split, not line by line."""
        if self._event or b"\r" in self._buffer:
            events = []
            while (event := self._take_event()) is not None:
                events.append(event)
            return events
        *complete, self._buffer = self._buffer.split(b"\n\n")
        return [event + b"\n\n" for event in complete if event.strip()]

    def _take_event(self) -> bytes | None:
        """The next complete event already received, if any (no waiting)."""
        while True:
            newline = self._buffer.find(b"\n")
            if newline < 0:
                return None
            line, self._buffer = self._buffer[:newline + 1], self._buffer[newline + 1:]
            self._event += line
            if line in (b"\n", b"\r\n"):  # a blank line ends an event
                event, self._event = self._event, b""
                if event.strip():
                    return event

    async def aclose(self) -> None:
        self.close()

    async def __aenter__(self) -> SSEStream:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        self.close()

    def close(self) -> None:
        self._done = True
        self._buffer = self._event = b""  # nothing more comes out once closed
        if not self._resp.closed:
            # close, not release: an unread body must not go back into the pool.
            self._resp.close()


class RelayedChat:
    """A streamed chat as core's ``RelayStream``: the upstream's events passed on in batches, with
    the usage chunk (asked for on the client's behalf) kept out unless the client asked for it."""

    def __init__(self, upstream: SSEStream, client_wants_usage: bool) -> None:
        self._upstream = upstream
        self._client_wants_usage = client_wants_usage
        self.delivered = 0
        self.usage: dict[str, Any] | None = None

    def _passed_on(self, event: bytes) -> bytes:
        if b'"usage":{' in event or b'"usage": {' in event:
            self.usage = usage_of(event) or self.usage
            if not self._client_wants_usage and _USAGE_ONLY.search(event):
                return b""
        elif not self._client_wants_usage:
            # Asked for on the client's behalf: every other chunk then says "usage":null.
            event = event.replace(b',"usage":null', b"")
        return event

    async def chunks(self) -> AsyncIterator[bytes]:
        async for batch in self._upstream.batches():
            out = b"".join(batch)
            if b'"usage":{' in out or b'"usage": {' in out:
                out = b"".join(self._passed_on(event) for event in batch)
            elif not self._client_wants_usage:
                out = out.replace(b',"usage":null', b"")
            # Content chunks sent: about one token each (counted, not parsed: this is hot).
            self.delivered += out.count(b'"content":"') - out.count(b'"content":""')
            if out:
                yield out

    def close(self) -> None:
        self._upstream.close()


# --- module-level helpers (also reachable as OpenAIAdapter.classify / .usage_of) -----------------------


def classify(status: int, headers: Mapping[str, str], body: bytes) -> UpstreamError | None:
    """An OpenAI error answer as an ``UpstreamError`` (with ``retryable`` for the relay); None for a success.

    429 is a rate limit (retryable, ``retry_after`` from ``retry-after-ms`` or ``Retry-After``) unless
    its code is ``insufficient_quota`` (``upstream_quota``: this key is spent, another may not be);
    401/403 (``upstream_auth``) and 404 (``upstream_not_found``, e.g. ``model_not_found``) are
    retryable because another channel may serve; 5xx, 408 and 409 are retryable; 400/413/422 are
    ``invalid_input`` naming the ``param`` (``content_policy`` for a moderation refusal), permanent.
    """
    if status < 400:
        return None
    lower = {k.lower(): v for k, v in headers.items()}
    error = _error_object(body)
    message = str(error.get("message") or f"HTTP {status}")
    code = str(error.get("code") or "")
    kind = str(error.get("type") or "")
    param = error.get("param")
    field = str(param) if param else None
    retry_after = _retry_after(lower)
    text = f"openai: {message}"
    if status == 429:
        if code == "insufficient_quota" or kind == "insufficient_quota":
            return UpstreamError(text, code="upstream_quota", status=429, retryable=True)
        return UpstreamError(text, code="upstream_rate_limited", status=429, retryable=True, retry_after=retry_after)
    if status in (401, 403):
        return UpstreamError(text, code="upstream_auth", status=status, retryable=True, retry_after=retry_after)
    if status == 404:
        return UpstreamError(text, code="upstream_not_found", status=404, retryable=True, field=field)
    if status >= 500 or status in (408, 409):
        return UpstreamError(text, code="upstream_error", status=status, retryable=True, retry_after=retry_after)
    if status in (400, 413, 422):
        if _is_policy(code) or _is_policy(kind):
            return UpstreamError(text, code="content_policy", status=status, field=field)
        return UpstreamError(text, code="invalid_input", status=status, field=field)
    return UpstreamError(text, code="upstream_error", status=status, field=field)


def usage_of(event: bytes) -> dict[str, Any] | None:
    """The ``usage`` object of one SSE ``data:`` event, if it carries one; None for ``[DONE]`` and junk."""
    data = [line[5:].removeprefix(b" ") for line in event.splitlines() if line.startswith(b"data:")]
    if not data:
        return None
    payload = b"\n".join(data).strip()
    if not payload or payload == b"[DONE]":
        return None
    try:
        chunk = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    usage = chunk.get("usage") if isinstance(chunk, dict) else None
    return usage if isinstance(usage, dict) else None


def images_output(answer: Mapping[str, Any]) -> dict[str, Any]:
    """An OpenAI images answer as a Tidehub image output: ``{images: [{url, content_type}]}``.

    Base64 images become ``data:`` URLs, which the asset store turns into files like any other URL.
    """
    images = []
    for item in answer.get("data") or []:
        if not isinstance(item, dict):
            continue
        if item.get("url"):
            image = {"url": item["url"], "content_type": "image/png"}
        elif item.get("b64_json"):
            fmt = str(answer.get("output_format") or "png")
            image = {"url": f"data:image/{fmt};base64,{item['b64_json']}", "content_type": f"image/{fmt}"}
        else:
            continue
        if item.get("revised_prompt"):
            image["revised_prompt"] = item["revised_prompt"]
        images.append(image)
    output: dict[str, Any] = {"images": images}
    if isinstance(answer.get("usage"), dict):
        output["usage"] = answer["usage"]
    return output


def _form(fields: Mapping[str, Any], files: Sequence[Upload]) -> aiohttp.FormData:
    """A multipart body of the client's fields (a list is a repeated field) and files; a new one per
    attempt, since one can be sent once only."""
    data = aiohttp.FormData()
    for name, value in fields.items():
        for item in value if isinstance(value, list) else [value]:
            data.add_field(name, str(item))
    for upload in files:
        data.add_field(upload.name, upload.data, filename=upload.filename, content_type=upload.content_type)
    return data


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


def _selected(headers: Mapping[str, str]) -> dict[str, str]:
    return {name: headers[name] for name in PASSED_HEADERS if name in headers}


def _transport_error(exc: BaseException, what: str = "unreachable") -> UpstreamError:
    timeout = isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError))
    return UpstreamError(f"openai {what}: {type(exc).__name__}: {exc}",
                         code="upstream_timeout" if timeout else "upstream_unavailable", retryable=True)


def _error_object(body: bytes) -> dict[str, Any]:
    try:
        parsed = orjson.loads(body) if body else {}
    except orjson.JSONDecodeError:
        return {"message": body[:200].decode(errors="replace").strip()}
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
        return parsed["error"]
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), str):  # some compatible servers
        return {"message": parsed["error"]}
    if isinstance(parsed, dict):
        return {"message": parsed.get("message") or parsed.get("detail")}
    return {}


def _video_error(error: Any) -> UpstreamError:
    """A failed video: refused content is permanent, as is bad input; any other failure may pass on retry."""
    if not isinstance(error, dict):
        return UpstreamError("openai: the video failed", retryable=True)
    code = str(error.get("code") or "")
    message = f"openai: {error.get('message') or code or 'the video failed'}"
    if _is_policy(code):
        return UpstreamError(message, code="content_policy")
    if code in ("request_cancelled", "cancelled", "canceled"):
        return UpstreamError(message, code="canceled")
    if "invalid" in code:
        return UpstreamError(message, code="invalid_input")
    return UpstreamError(message, code=code or "upstream_error", retryable=True)


def _is_policy(code: str) -> bool:
    code = code.lower()
    return any(word in code for word in _POLICY_WORDS)


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait: ``retry-after-ms`` (OpenAI's own) first, then ``Retry-After`` (seconds or a date)."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
