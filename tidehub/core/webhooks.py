"""Client webhooks: a signed POST of the final task to the ``webhook_url`` given at submit.

The delivery row is written in the same transaction as the task's terminal transition (an
outbox), so a killed process never loses a webhook it owed. A sender loop claims due deliveries,
signs them per Standard Webhooks (``webhook-id`` stable across retries, a per-account
``whsec_`` secret), and retries failures on a published schedule with jitter, honouring
``Retry-After``; a 410 answer disables that delivery. Every attempt is logged. Delivery never
blocks a task: the task is final before its webhook is sent.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import random
import secrets
import time
from datetime import datetime, timezone
from typing import Any, Callable

import aiohttp
import orjson
from standardwebhooks.webhooks import Webhook

from tidehub.core import context, metrics
from tidehub.core.audit import Actor, AuditLog
from tidehub.core.auth import Principal
from tidehub.errors import NotFound, quoted
from tidehub.core.ssrf import BlockedURL, URLGuard
from tidehub.store import Store

log = logging.getLogger("tidehub.webhooks")

# Seconds after the first attempt; Standard Webhooks' suggested schedule.
SCHEDULE = (0, 5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400)
EVENT = {"succeeded": "task.succeeded", "failed": "task.failed", "timeout": "task.timeout", "canceled": "task.canceled"}

Renderer = Callable[[dict[str, Any]], dict[str, Any]]


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


class WebhookService:
    """What an account can do with its webhooks: read or rotate its secret, see and redeliver."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def secret(self, principal: Principal, *, rotate: bool = False) -> str:
        return await self.store.call(self.store.webhooks.secret, principal.account_id, new_secret(), rotate=rotate)

    async def deliveries(self, principal: Principal, task_id: str | None) -> list[dict[str, Any]]:
        return await self.store.call(self.store.webhooks.deliveries, principal.account_id, task_id)

    async def redeliver(self, principal: Principal | None, delivery_id: str, *, actor: Actor | None = None) -> None:
        """Send a delivery again; ``principal`` None is an operator, for any account's delivery."""
        account_id = principal.account_id if principal is not None else None
        if not await self.store.call(self.store.webhooks.redeliver, account_id, delivery_id, time.time()):
            raise NotFound(f"no webhook delivery {quoted(delivery_id)}", field="delivery_id")
        await AuditLog(self.store).write(actor, "webhook.redeliver", delivery_id)


class WebhookSender:
    def __init__(self, store: Store, guard: URLGuard, *, time_scale: float = 1.0, timeout_s: float = 10.0) -> None:
        self.store = store
        self.guard = guard
        self.scale = time_scale
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        # Task id prefix (the dialect it came through) -> how that dialect shows a task.
        self.renderers: dict[str, Renderer] = {}
        self._session: aiohttp.ClientSession | None = None

    async def run(self, stopping: Callable[[], bool]) -> None:
        tick = max(0.02, min(1.0, self.scale * 10))
        while not stopping():
            now = time.time()
            try:
                batch = await self.store.call(self.store.webhooks.claim, now, now + 60, 50)
            except Exception:
                log.exception("claiming webhook deliveries failed")
                batch = []
            if batch:
                await asyncio.gather(*(self._deliver(d) for d in batch))
            else:
                await asyncio.sleep(tick)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def _deliver(self, delivery: dict[str, Any]) -> None:
        context.current.set(context.WorkContext(fields={"task_id": delivery["task_id"], "delivery_id": delivery["id"]}))
        attempt_no = delivery["attempts"] + 1
        started = time.time()
        status_code: int | None = None
        error: str | None = None
        retry_after: float | None = None
        try:
            body, headers = await self._message(delivery)
            if self._session is None or self._session.closed:
                self._session = self.guard.session(timeout=self.timeout, field="webhook_url")
            async with self._session.post(delivery["url"], data=body, headers=headers, allow_redirects=False) as resp:
                status_code = resp.status
                retry_after = _seconds(resp.headers.get("Retry-After"))
                if status_code >= 300:
                    error = f"HTTP {status_code}"
        except BlockedURL as exc:
            error = exc.message
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            error = f"{type(exc).__name__}: {exc}"[:500]
        except Exception as exc:  # a delivery must never take the sender down
            log.exception("webhook %s: unexpected failure", delivery["id"])
            error = f"internal: {type(exc).__name__}"
        if status_code is not None and 200 <= status_code < 300:
            status, next_at = "delivered", None
        elif status_code == 410:
            status, next_at = "disabled", None  # the receiver said: gone, stop
        elif attempt_no >= len(SCHEDULE):
            status, next_at = "failed", None
        else:
            delay = (SCHEDULE[attempt_no] - SCHEDULE[attempt_no - 1]) * self.scale * random.uniform(0.9, 1.1)
            status, next_at = "pending", time.time() + max(delay, retry_after or 0.0)
        metrics.child(metrics.webhook_deliveries, "retrying" if status == "pending" else status).inc()
        attempt = {"attempt": attempt_no, "at": started, "status_code": status_code, "error": error,
                   "duration_ms": round((time.time() - started) * 1000, 1)}
        await self.store.call(self.store.webhooks.record_attempt, delivery["id"], attempt, status, next_at)

    async def _message(self, delivery: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
        task = await self.store.call(self.store.tasks.get, delivery["task_id"])
        if task is None:
            raise NotFound("the task of this delivery is gone")
        render = self.renderers.get(task["id"].split("-", 1)[0]) or next(iter(self.renderers.values()))
        now = datetime.now(tz=timezone.utc)
        body = orjson.dumps({"type": EVENT.get(task["status"], "task.updated"),
                             "timestamp": now.isoformat().replace("+00:00", "Z"), "data": render(task)})
        # Read at each attempt, so a rotated secret signs the very next one.
        account = await self.store.call(self.store.accounts.get, delivery["account_id"])
        secret = (account or {}).get("webhook_secret") or await self.store.call(
            self.store.webhooks.secret, delivery["account_id"], new_secret())
        signature = Webhook(secret).sign(delivery["id"], now, body.decode())
        return body, {
            "content-type": "application/json",
            "webhook-id": delivery["id"],
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": signature,
            "user-agent": "Tidehub-Webhooks/1",
            # The request that submitted the task, so a receiver's logs meet the gateway's.
            "x-request-id": task.get("request_id") or delivery["id"],
        }


def _seconds(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None
