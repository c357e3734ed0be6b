"""fal.ai queue API: submit, status (with logs and queue position), result, cancel.

The status, result and cancel URLs are taken from the submit response, as fal advises: they drop
the model's subpath (``fal-ai/veo3.1/image-to-video`` is polled under ``fal-ai/veo3.1``). Only URLs
on the channel's own origin are taken: each call carries the channel's key, which must never go to
a host an answer names (a compromised or spoofed upstream could point it anywhere, internal
addresses included). Any other URL is replaced by the one built under the base URL.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import time
from typing import Any, Mapping

import aiohttp
import orjson
from yarl import URL
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from tidehub.core.ports import Job, JobState, UpstreamError
from tidehub.providers.base import LazyPool, same_origin

# fal infrastructure error types worth another attempt.
RETRYABLE_TYPES = frozenset(
    {
        "request_timeout",
        "startup_timeout",
        "runner_scheduling_failure",
        "runner_disconnected",
        "runner_connection_timeout",
        "runner_server_error",
        "internal_error",
    }
)


JWKS_URL = "https://rest.alpha.fal.ai/.well-known/jwks.json"
JWKS_TTL_S = 24 * 3600
# A signature no cached key matches may mean fal rotated its keys, so the JWKS is fetched again,
# but not more often than this: forged callbacks must not turn into a stream of fetches.
JWKS_MIN_REFRESH_S = 60.0
MAX_SKEW_S = 300
#: The headers every fal callback carries; one missing means no need to read the body.
CALLBACK_HEADERS = ("x-fal-webhook-request-id", "x-fal-webhook-user-id", "x-fal-webhook-timestamp",
                    "x-fal-webhook-signature")

log = logging.getLogger("tidehub.providers.fal")


class FalAdapter:
    name = "fal"
    callback_headers = CALLBACK_HEADERS

    def __init__(self, base_url: str, key: str, *, timeout_s: float = 30.0, max_connections: int = 200,
                 jwks_url: str = JWKS_URL) -> None:
        self.base_url = base_url.rstrip("/")
        self._origin = URL(self.base_url)
        self.jwks_url = jwks_url
        self._keys: list[Ed25519PublicKey] = []
        self._keys_at: float | None = None  # when the last fetch was tried (monotonic), whatever came of it
        self._keys_lock = asyncio.Lock()
        self._keys_missing = False  # the last fetch failed and no earlier keys are at hand
        self._http = LazyPool({"Authorization": f"Key {key}", "Content-Type": "application/json"}, timeout_s,
                              max_connections)

    async def close(self) -> None:
        await self._http.close()

    async def submit(self, model: str, payload: dict[str, Any], *, callback_url: str | None = None,
                     spec: Mapping[str, Any] | None = None) -> Job:
        params = {"fal_webhook": callback_url} if callback_url else None
        body = await self._request("POST", f"{self.base_url}/{model}", json=payload, params=params)
        request_id = body.get("request_id")
        if not request_id:
            raise UpstreamError("fal answered a submit without a request_id", retryable=True)
        app = "/".join(model.split("/")[:2])
        fallback = f"{self.base_url}/{app}/requests/{request_id}"
        return Job(
            ref=request_id,
            data={
                "status_url": self._own(body.get("status_url"), f"{fallback}/status"),
                "response_url": self._own(body.get("response_url"), fallback),
                "cancel_url": self._own(body.get("cancel_url"), f"{fallback}/cancel"),
                "queue_position": body.get("queue_position"),
            },
        )

    def _own(self, url: Any, fallback: str) -> str:
        """``url`` if it is on the channel's origin, else ``fallback``."""
        if not isinstance(url, str) or not url:
            return fallback
        if same_origin(url, self._origin):
            return url
        log.warning("fal answered a URL off the channel's origin (%s); polling under the base URL instead", url[:200])
        return fallback

    async def status(self, job: Job) -> JobState:
        body = await self._request("GET", job.data["status_url"], params={"logs": "1"})
        status = body.get("status")
        logs = body.get("logs") or []
        if status == "IN_QUEUE":
            return JobState("queued", queue_position=body.get("queue_position"), logs=logs)
        if status == "IN_PROGRESS":
            return JobState("running", logs=logs)
        if status == "COMPLETED":
            if body.get("error") or body.get("error_type"):
                return JobState("failed", logs=logs, error=_run_error(body))
            return JobState("completed", logs=logs)
        raise UpstreamError(f"fal answered an unknown status {status!r}", retryable=True)

    async def result(self, job: Job) -> dict[str, Any]:
        return await self._request("GET", job.data["response_url"])

    async def cancel(self, job: Job) -> None:
        try:
            await self._request("PUT", job.data["cancel_url"])
        except UpstreamError as exc:
            # Already finished (400) or forgotten (404): nothing left to stop.
            if exc.status not in (400, 404):
                raise

    def auth_headers_for(self, url: str) -> dict[str, str]:
        return {}  # fal's result files are public URLs

    async def verify_callback(self, headers: Mapping[str, str], body: bytes) -> str:
        """Check a fal webhook's ED25519 signature against fal's JWKS; return its request id."""
        try:
            request_id = headers["x-fal-webhook-request-id"]
            user_id = headers["x-fal-webhook-user-id"]
            timestamp = headers["x-fal-webhook-timestamp"]
            signature = bytes.fromhex(headers["x-fal-webhook-signature"])
            skew = abs(time.time() - int(timestamp))
        except (KeyError, ValueError, OverflowError):  # OverflowError: a timestamp no float holds
            raise UpstreamError("callback without a valid fal signature", code="bad_callback") from None
        if skew > MAX_SKEW_S:
            raise UpstreamError("callback timestamp too far from now", code="bad_callback")
        message = "\n".join([request_id, user_id, timestamp, hashlib.sha256(body).hexdigest()]).encode()
        keys = await self._jwks(False)
        if _verified(keys, signature, message):
            return request_id
        fresh = await self._jwks(True)  # fal may have rotated its keys (fetched again at most once a minute)
        if fresh is not keys and _verified(fresh, signature, message):
            return request_id
        raise UpstreamError("callback signature does not match fal's keys", code="bad_callback")

    async def _jwks(self, refresh: bool) -> list[Ed25519PublicKey]:
        """fal's keys, fetched at most once per ``JWKS_MIN_REFRESH_S`` however many callbacks ask,
        and by one of them at a time (the others wait for its answer)."""
        if self._stale(refresh):
            async with self._keys_lock:
                if self._stale(refresh):  # nobody fetched them while this one waited
                    self._keys_at = time.monotonic()
                    self._keys_missing = False
                    try:
                        self._keys = await self._fetch_keys()
                    except UpstreamError:
                        self._keys_missing = not self._keys
                        raise
        if self._keys_missing:
            raise _keys_unavailable()
        return self._keys

    def _stale(self, refresh: bool) -> bool:
        if self._keys_at is None:
            return True
        age = time.monotonic() - self._keys_at
        return age > JWKS_TTL_S or (refresh or not self._keys) and age > JWKS_MIN_REFRESH_S

    async def _fetch_keys(self) -> list[Ed25519PublicKey]:
        # A session of its own: the JWKS is public, and the channel's key is not for its host.
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
                async with session.get(self.jwks_url) as resp:
                    if resp.status != 200:
                        raise ValueError(f"HTTP {resp.status}")
                    doc = await resp.json(content_type=None)
            keys = []
            for jwk in doc.get("keys", []):
                if jwk.get("kty") == "OKP" and jwk.get("crv") == "Ed25519" and jwk.get("x"):
                    raw = base64.urlsafe_b64decode(jwk["x"] + "=" * (-len(jwk["x"]) % 4))
                    keys.append(Ed25519PublicKey.from_public_bytes(raw))
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, TypeError, AttributeError) as exc:
            log.warning("fal JWKS %s could not be fetched: %s: %s", self.jwks_url, type(exc).__name__, exc)
            raise _keys_unavailable() from None
        return keys

    async def _request(self, method: str, url: str, **kwargs: Any) -> dict[str, Any]:
        try:
            async with self._http().request(method, url, **kwargs) as resp:
                raw = await resp.read()
                if resp.status < 300:
                    return orjson.loads(raw) if raw else {}
                raise _http_error(resp.status, resp.headers, raw)
        except UpstreamError:
            raise
        except (aiohttp.ClientError, asyncio.TimeoutError, orjson.JSONDecodeError) as exc:
            raise UpstreamError(
                f"fal unreachable: {type(exc).__name__}: {exc}", code="upstream_unavailable", retryable=True
            ) from None


def _keys_unavailable() -> UpstreamError:
    return UpstreamError("cannot check fal callbacks right now: fal's signing keys are unreachable",
                         code="callback_keys_unavailable", retryable=True)


def _verified(keys: list[Ed25519PublicKey], signature: bytes, message: bytes) -> bool:
    for key in keys:
        try:
            key.verify(signature, message)
            return True
        except InvalidSignature:
            continue
    return False


def _http_error(status: int, headers: Any, raw: bytes) -> UpstreamError:
    try:
        body = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError:
        body = {"detail": raw[:200].decode(errors="replace")}
    if not isinstance(body, dict):
        body = {"detail": body}
    detail = body.get("detail")
    error_type = headers.get("X-Fal-Error-Type") or body.get("error_type")
    retry_after = _seconds(headers.get("Retry-After"))
    if status == 422:
        message, field = _validation_detail(detail)
        return UpstreamError(message, code="invalid_input", status=422, field=field)
    if status == 429:
        return UpstreamError("fal rate limit", code="upstream_rate_limited", status=429,
                             retryable=True, retry_after=retry_after)
    retryable = status >= 500 or status in (401, 403, 404, 408) or error_type in RETRYABLE_TYPES
    flag = headers.get("X-Fal-Retryable")
    if flag is not None:
        retryable = flag.lower() == "true"
    code = {401: "upstream_auth", 403: "upstream_auth", 404: "upstream_not_found"}.get(status, "upstream_error")
    text = detail if isinstance(detail, str) else orjson.dumps(detail).decode() if detail else f"HTTP {status}"
    return UpstreamError(f"fal: {text}", code=code, status=status, retryable=retryable, retry_after=retry_after)


def _run_error(body: dict[str, Any]) -> UpstreamError:
    error_type = body.get("error_type") or ""
    error = body.get("error")
    if isinstance(error, dict):
        error = error.get("message") or error.get("detail") or orjson.dumps(error).decode()
    message = str(error or error_type or "the upstream run failed")
    if error_type == "request_cancelled":
        return UpstreamError(message, code="canceled")
    if "content" in error_type or "policy" in error_type:
        return UpstreamError(message, code="content_policy")
    if error_type == "validation_error":
        return UpstreamError(message, code="invalid_input")
    return UpstreamError(message, code=error_type or "upstream_error", retryable=error_type in RETRYABLE_TYPES)


def _validation_detail(detail: Any) -> tuple[str, str | None]:
    if isinstance(detail, list) and detail and isinstance(detail[0], dict):
        first = detail[0]
        loc = [str(p) for p in first.get("loc", []) if p != "body"]
        field = "input." + ".".join(loc) if loc else None
        return f"{field or 'input'}: {first.get('msg', 'invalid')}", field
    return str(detail or "invalid input"), None


def _seconds(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None
