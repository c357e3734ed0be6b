"""Replicate predictions: submit, status (with logs), result, cancel, Standard Webhooks callbacks.

``base_url`` includes the version prefix: ``https://api.replicate.com/v1``. A model is named
``owner/name`` (run through ``/models/{owner}/{name}/predictions``, the model's latest version) or
``owner/name:version`` (``/predictions`` with that exact version). Status and cancel URLs are built
from the prediction id under ``base_url``, never taken from an answer, so the key is only ever sent
to the configured host.

Replicate's outputs are plain public URLs (a list, or one string); ``result`` turns them into
Tidehub's shapes: ``{images: [{url, content_type}]}``, ``{video: {url, content_type}}`` or
``{audio: {...}}``, with ``metrics.predict_time`` kept as ``metrics``.
"""

from __future__ import annotations

import asyncio
import email.utils
import re
import time
from collections import OrderedDict
from typing import Any, Mapping
from urllib.parse import urlsplit

import aiohttp
import orjson
from standardwebhooks.webhooks import Webhook

from tidehub.core.ports import Job, JobState, UpstreamError
from tidehub.providers.base import LazyPool

#: Words in a failed prediction's error that mean the input (or its result) was refused on content grounds.
_POLICY_WORDS = ("nsfw", "sensitive", "flagged", "safety", "content policy", "content_policy", "moderation")
#: Succeeded predictions kept between ``status`` and ``result``, so a finish costs one request, not two.
_KEEP_FINISHED = 1024
#: Least seconds between two fetches of the webhook secret after a signature did not match (a rotation).
_SECRET_REFRESH_S = 60.0
_VERSION_ID = re.compile(r"[0-9a-f]{64}")

_EXTENSION_TYPES = {
    "png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "webp": "image/webp", "gif": "image/gif",
    "mp4": "video/mp4", "mov": "video/quicktime", "webm": "video/webm",
    "mp3": "audio/mpeg", "wav": "audio/wav", "ogg": "audio/ogg", "flac": "audio/flac", "m4a": "audio/mp4",
}


class ReplicateAdapter:
    name = "replicate"
    #: Standard Webhooks' headers: a callback without one is refused before its body is read.
    callback_headers = ("webhook-id", "webhook-timestamp", "webhook-signature")

    def __init__(self, base_url: str, key: str, *, timeout_s: float = 30.0, max_connections: int = 200,
                 webhook_secret: str | None = None, **_ignored: Any) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = LazyPool({"Authorization": f"Bearer {key}", "Content-Type": "application/json"}, timeout_s,
                              max_connections)
        self._configured_secret = webhook_secret
        self._fetched_secret: str | None = None
        self._secret_at = 0.0
        self._secret_lock: asyncio.Lock | None = None
        self._finished: OrderedDict[str, dict[str, Any]] = OrderedDict()

    async def close(self) -> None:
        await self._http.close()

    # --- the engine's interface ---------------------------------------------------------------------

    async def submit(self, model: str, payload: dict[str, Any], *, callback_url: str | None = None,
                     spec: Mapping[str, Any] | None = None) -> Job:
        name, version = _split_model(model, (spec or {}).get("version"))
        body: dict[str, Any] = {"input": {k: v for k, v in payload.items() if v is not None}}
        if callback_url:
            body["webhook"] = callback_url
            body["webhook_events_filter"] = ["completed"]  # the engine only cares when it ends
        if version:
            body["version"] = version
            url = f"{self.base_url}/predictions"
        elif name.count("/") == 1 and all(name.split("/")):
            url = f"{self.base_url}/models/{name}/predictions"
        else:
            raise UpstreamError(f"replicate model {model!r} is not owner/name[:version]", code="model_unavailable")
        prediction = await self._request("POST", url, json=body)
        prediction_id = prediction.get("id")
        if not isinstance(prediction_id, str) or not prediction_id:
            raise UpstreamError("replicate answered a create without a prediction id", retryable=True)
        return Job(ref=prediction_id, data={"model": name or model, "version": version})

    async def status(self, job: Job) -> JobState:
        prediction = await self._request("GET", self._url(job.ref))
        status = prediction.get("status")
        logs = _logs(prediction.get("logs"))
        if status == "starting":
            return JobState("queued", logs=logs)
        if status == "processing":
            return JobState("running", logs=logs)
        if status == "succeeded":
            self._finished[job.ref] = prediction
            while len(self._finished) > _KEEP_FINISHED:
                self._finished.popitem(last=False)
            return JobState("completed", logs=logs)
        if status in ("failed", "canceled", "aborted"):
            return JobState("failed", logs=logs, error=_run_error(status, prediction.get("error")))
        raise UpstreamError(f"replicate answered an unknown status {status!r}", retryable=True)

    async def result(self, job: Job) -> dict[str, Any]:
        prediction = self._finished.pop(job.ref, None) or await self._request("GET", self._url(job.ref))
        if prediction.get("status") != "succeeded":
            raise UpstreamError(f"replicate prediction {job.ref} has not succeeded "
                                f"(status {prediction.get('status')!r})", retryable=True)
        return outputs(prediction)

    async def cancel(self, job: Job) -> None:
        self._finished.pop(job.ref, None)
        try:
            await self._request("POST", f"{self._url(job.ref)}/cancel")
        except UpstreamError as exc:
            # Forgotten (404) or already over (Replicate answers the prediction, some proxies 409/422).
            if exc.status not in (404, 409, 422):
                raise

    def auth_headers_for(self, url: str) -> dict[str, str]:
        return {}  # Replicate's output files are public URLs

    async def verify_callback(self, headers: Mapping[str, str], body: bytes) -> str:
        """Check a webhook's Standard Webhooks signature; return the prediction id it is about."""
        secret = self._configured_secret or await self._secret(refresh=False)
        verified = _verify(secret, headers, body)
        if verified is None and not self._configured_secret and time.monotonic() - self._secret_at > _SECRET_REFRESH_S:
            verified = _verify(await self._secret(refresh=True), headers, body)  # the secret may have rotated
        if verified is None:
            raise UpstreamError("callback signature does not match the Replicate webhook secret", code="bad_callback")
        prediction_id = verified.get("id") if isinstance(verified, dict) else None
        if not isinstance(prediction_id, str) or not prediction_id:
            raise UpstreamError("callback body names no prediction id", code="bad_callback")
        return prediction_id

    # --- plumbing -----------------------------------------------------------------------------------

    def _url(self, prediction_id: str) -> str:
        return f"{self.base_url}/predictions/{prediction_id}"

    async def _secret(self, *, refresh: bool) -> str:
        """The account's default webhook secret, fetched once (again after a rotation) and cached."""
        if self._fetched_secret is not None and not refresh:
            return self._fetched_secret
        if self._secret_lock is None:
            self._secret_lock = asyncio.Lock()
        async with self._secret_lock:
            if self._fetched_secret is not None and (not refresh or
                                                     time.monotonic() - self._secret_at <= _SECRET_REFRESH_S):
                return self._fetched_secret  # another caller fetched it meanwhile
            try:
                answer = await self._request("GET", f"{self.base_url}/webhooks/default/secret")
            except UpstreamError as exc:
                # Unreachable or failing (no answer, 5xx): the callback may be retried; a refusal is final.
                unreachable = exc.status is None or exc.status >= 500
                raise UpstreamError(f"cannot check the callback: fetching the webhook secret failed: {exc.message}",
                                    code="callback_keys_unavailable" if unreachable else "bad_callback",
                                    retryable=unreachable) from None
            key = answer.get("key")
            if not isinstance(key, str) or not key:
                raise UpstreamError("replicate answered no webhook secret", code="bad_callback")
            self._fetched_secret, self._secret_at = key, time.monotonic()
            return key

    async def _request(self, method: str, url: str, **kwargs: Any) -> dict[str, Any]:
        try:
            async with self._http().request(method, url, **kwargs) as resp:
                raw = await resp.read()
                if resp.status < 300:
                    answer = orjson.loads(raw) if raw else {}
                    return answer if isinstance(answer, dict) else {}
                raise http_error(resp.status, resp.headers, raw)
        except UpstreamError:
            raise
        except (asyncio.TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise UpstreamError(f"replicate timed out: {type(exc).__name__}: {exc}", code="upstream_timeout",
                                retryable=True) from None
        except (aiohttp.ClientError, orjson.JSONDecodeError) as exc:
            raise UpstreamError(f"replicate unreachable: {type(exc).__name__}: {exc}", code="upstream_unavailable",
                                retryable=True) from None


# --- answers into Tidehub's words -------------------------------------------------------------------------


def http_error(status: int, headers: Mapping[str, str], raw: bytes) -> UpstreamError:
    """A Replicate error answer (RFC 7807 ``{title, detail, status}``) as an ``UpstreamError``.

    401/403 and 404 are retryable because another channel (account) may serve; so is 422 "Invalid
    version or not permitted" (a private version). Other 400/422s are the caller's input, permanent,
    naming ``input.<field>`` where Replicate says which. 402 (out of credit) and 429 (``retry_after``
    from ``Retry-After``) are retryable, as are 5xx and 408/409.
    """
    try:
        body = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError:
        body = {"detail": raw[:200].decode(errors="replace").strip()}
    if not isinstance(body, dict):
        body = {"detail": str(body)}
    title = str(body.get("title") or "")
    detail = body.get("detail")
    detail_text = detail.strip() if isinstance(detail, str) else orjson.dumps(detail).decode() if detail else ""
    text = f"replicate: {detail_text or title or f'HTTP {status}'}"
    retry_after = _retry_after(headers.get("Retry-After") or headers.get("retry-after"))
    if status == 429:
        return UpstreamError(text, code="upstream_rate_limited", status=429, retryable=True, retry_after=retry_after)
    if status in (401, 403):
        return UpstreamError(text, code="upstream_auth", status=status, retryable=True)
    if status == 402:
        return UpstreamError(text, code="upstream_quota", status=402, retryable=True)
    if status == 404:
        return UpstreamError(text, code="upstream_not_found", status=404, retryable=True)
    if status in (400, 422):
        if "version" in title.lower() and "invalid" in title.lower():
            return UpstreamError(text, code="upstream_not_found", status=status, retryable=True)
        return UpstreamError(text, code="invalid_input", status=status, field=_invalid_field(body, detail_text))
    if status >= 500 or status in (408, 409):
        return UpstreamError(text, code="upstream_error", status=status, retryable=True, retry_after=retry_after)
    return UpstreamError(text, code="upstream_error", status=status)


def outputs(prediction: Mapping[str, Any]) -> dict[str, Any]:
    """A succeeded prediction's output in Tidehub's shapes, decided by each file's type.

    A video among the files makes a video output (the first one), else audio, else images. An output
    that is not file URLs (a language model's text) is passed as ``{"output": ...}``.
    """
    raw = prediction.get("output")
    items = raw if isinstance(raw, list) else [raw] if raw is not None else []
    files = [(url, _content_type(url)) for url in items if isinstance(url, str) and _is_file_url(url)]
    result: dict[str, Any]
    videos = [f for f in files if f[1].startswith("video/")]
    audios = [f for f in files if f[1].startswith("audio/")]
    if videos:
        result = {"video": {"url": videos[0][0], "content_type": videos[0][1]}}
    elif audios:
        result = {"audio": {"url": audios[0][0], "content_type": audios[0][1]}}
    elif files:
        result = {"images": [{"url": url, "content_type": kind} for url, kind in files]}
    else:
        result = {"output": raw}
    metrics = prediction.get("metrics")
    if isinstance(metrics, dict) and metrics.get("predict_time") is not None:
        result["metrics"] = {"predict_time": metrics["predict_time"]}
    return result


def _split_model(model: str, spec_version: Any) -> tuple[str, str | None]:
    """``owner/name:version`` -> (owner/name, version); a bare 64-hex id is a version on its own."""
    name, colon, version = model.partition(":")
    if colon:
        return name, version or None
    if _VERSION_ID.fullmatch(model):
        return "", model
    return model, str(spec_version) if spec_version else None


def _run_error(status: str, error: Any) -> UpstreamError:
    """A prediction that ended without output: refused content and cancellation are final; the rest may pass."""
    message = f"replicate: {error}" if error else f"replicate: the prediction {status}"
    if status == "canceled":
        return UpstreamError(message, code="canceled")
    if status == "aborted":
        return UpstreamError(message, code="upstream_aborted", retryable=True)
    lowered = str(error or "").lower()
    if any(word in lowered for word in _POLICY_WORDS):
        return UpstreamError(message, code="content_policy")
    return UpstreamError(message, code="upstream_error", retryable=True)


def _invalid_field(body: Mapping[str, Any], detail: str) -> str | None:
    """The first input field a validation error names, as ``input.<name>``.

    From ``invalid_fields`` (``{field: "input.num_outputs"}``, or ``{field: "input", description:
    "prompt is required"}`` for a missing one), else the ``- input.x: ...`` lines of ``detail``.
    """
    found: list[tuple[str, str]] = []
    for item in body.get("invalid_fields") or []:
        if isinstance(item, dict) and isinstance(item.get("field"), str):
            found.append((item["field"], str(item.get("description") or "")))
    found += re.findall(r"^-\s*([\w.\[\]()]+):\s*(.*)$", detail, flags=re.MULTILINE)
    for where, description in found:
        if where.startswith("input."):
            return where
        if where in ("input", "(root)") and (missing := re.match(r"(\w+) is required", description)):
            name = missing.group(1)
            return f"input.{name}" if where == "input" else name
    return None


def _verify(secret: str, headers: Mapping[str, str], body: bytes) -> Any:
    """The parsed body when the signature holds for ``secret``; None for anything wrong."""
    try:
        return Webhook(secret).verify(body, {k.lower(): v for k, v in headers.items()})
    except Exception:  # bad signature, stale timestamp, malformed headers or body, unusable secret
        return None


def _logs(logs: Any) -> list[dict[str, Any]]:
    if not isinstance(logs, str) or not logs:
        return []
    return [{"message": line, "level": "INFO"} for line in logs.splitlines() if line.strip()]


def _is_file_url(value: str) -> bool:
    return value.startswith(("https://", "http://", "data:"))


def _content_type(url: str) -> str:
    if url.startswith("data:"):
        return url[5:].split(";", 1)[0].split(",", 1)[0] or "application/octet-stream"
    path = urlsplit(url).path
    extension = path.rsplit(".", 1)[-1].lower() if "." in path.rsplit("/", 1)[-1] else ""
    return _EXTENSION_TYPES.get(extension, "image/png")  # an unnamed file from an image model is most likely


def _retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds or as an HTTP date."""
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
