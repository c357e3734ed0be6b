"""fal webhooks: the signed POST a request's ``fal_webhook`` URL receives when the request ends.

Signed as fal signs them (UPSTREAMS.md): ED25519 over
``request_id + "\\n" + user_id + "\\n" + timestamp + "\\n" + sha256_hex(raw_body)``, hex in
``X-Fal-Webhook-Signature``, verifiable against the JWKS the sim serves at
``/.well-known/jwks.json``. The key pair is made when the sim starts, so it only ever signs for
this run. The user id is the channel's (``sim-user-<n>``).

Every end is reported, cancellation included: ``{request_id, gateway_request_id, status: "OK",
payload: <output>, error: null}``, or ``status: "ERROR"`` with ``error: "Invalid status code: <http
status>"`` and ``payload: {"detail": [{loc, msg, type}, ...]}`` (``type`` is the fal error type, so
a receiver can tell ``runner_disconnected`` from ``content_policy_violation``).

Each delivery is its own task: a slow or dead receiver delays nothing but its own retries. A
delivery fails on a non-2xx answer (redirects are not followed), a connection error or a timeout,
and is retried after ``retry_delays_s`` (simulated seconds, scaled by the channel's time scale).
Each attempt is signed afresh with the current time, as receivers reject old timestamps.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import time
from collections.abc import Sequence
from typing import Any

import aiohttp
import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tidehub.sim.errors import RunFailure
from tidehub.sim.jobs import Job

log = logging.getLogger(__name__)

#: Seconds between attempts before scaling (fal: 10 retries over about 2 h; this is a shorter walk).
DEFAULT_RETRY_DELAYS_S = (5.0, 20.0, 60.0, 300.0, 1200.0)


class WebhookSigner:
    """The sim's ED25519 webhook key and its public half as a JWKS."""

    def __init__(self) -> None:
        self._key = Ed25519PrivateKey.generate()
        public = self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self._x = base64.urlsafe_b64encode(public).rstrip(b"=").decode()
        self.key_id = hashlib.sha256(public).hexdigest()[:16]

    def jwks(self) -> dict[str, Any]:
        return {"keys": [{"kty": "OKP", "crv": "Ed25519", "x": self._x, "kid": self.key_id, "use": "sig",
                          "alg": "EdDSA"}]}

    def headers(self, request_id: str, user_id: str, timestamp: int, body: bytes) -> dict[str, str]:
        message = "\n".join((request_id, user_id, str(timestamp), hashlib.sha256(body).hexdigest()))
        return {
            "Content-Type": "application/json",
            "X-Fal-Webhook-Request-Id": request_id,
            "X-Fal-Webhook-User-Id": user_id,
            "X-Fal-Webhook-Timestamp": str(timestamp),
            "X-Fal-Webhook-Signature": self._key.sign(message.encode()).hex(),
        }


def webhook_body(job: Job) -> dict[str, Any]:
    """fal's webhook body for a finished request: the output, or the error and its details."""
    body: dict[str, Any] = {"request_id": job.id, "gateway_request_id": job.id}
    if job.failure is None:
        body.update(status="OK", payload=job.output, error=None)
    else:
        body.update(status="ERROR", error=f"Invalid status code: {job.failure.http_status}",
                    payload={"detail": _detail_list(job.failure)})
    return body


def _detail_list(failure: RunFailure) -> list[dict[str, Any]]:
    if isinstance(failure.detail, list):
        return failure.detail
    return [{"loc": [], "msg": failure.detail, "type": failure.error_type}]


class WebhookSender:
    """Delivers fal webhooks in the background, with retries; owns its HTTP session."""

    def __init__(self, signer: WebhookSigner, retry_delays_s: Sequence[float] = DEFAULT_RETRY_DELAYS_S,
                 timeout_s: float = 10.0) -> None:
        self.signer = signer
        self._delays = tuple(retry_delays_s)
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._tasks: set[asyncio.Task[None]] = set()
        self._http: aiohttp.ClientSession | None = None

    @property
    def pending(self) -> int:
        return len(self._tasks)

    def deliver(self, job: Job) -> None:
        """Start delivering ``job``'s webhook; returns at once (must run on the sim's loop)."""
        if not job.webhook_url or job.channel is None:
            return
        task = asyncio.get_running_loop().create_task(self._deliver(job), name=f"sim-webhook-{job.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.close()

    async def _deliver(self, job: Job) -> None:
        channel = job.channel
        assert channel is not None and job.webhook_url is not None
        raw = orjson.dumps(webhook_body(job))
        for attempt in range(len(self._delays) + 1):
            if attempt:
                await asyncio.sleep(self._delays[attempt - 1] * channel.behaviour.scale)
            headers = self.signer.headers(job.id, channel.user_id, int(time.time()), raw)
            try:
                async with self._session().post(job.webhook_url, data=raw, headers=headers,
                                                allow_redirects=False) as response:
                    await response.read()
                    if 200 <= response.status < 300:
                        channel.stats.webhooks_sent += 1
                        return
                    reason = f"HTTP {response.status}"
            except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
                reason = f"{type(exc).__name__}: {exc}"
            channel.stats.webhooks_failed += 1
            log.debug("sim: webhook for %s to %s failed (attempt %d): %s", job.id, job.webhook_url, attempt + 1,
                      reason)
        channel.stats.webhooks_abandoned += 1
        log.info("sim: gave up delivering the webhook for %s to %s", job.id, job.webhook_url)

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(
                timeout=self._timeout, connector=aiohttp.TCPConnector(limit=256), trust_env=False
            )
        return self._http
