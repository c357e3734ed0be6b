"""Tasks: accept, read and cancel. The engine (engine.py) moves them through their life.

The statuses and the moves between them are core/lifecycle.py's.
"""

from __future__ import annotations

import bisect
import hashlib
import re
import time
from typing import Any, Callable

import orjson

from tidehub.catalog import Endpoint
from tidehub.config import Settings
from tidehub.core import context, ids, metrics
from tidehub.core.audit import Actor, AuditLog
from tidehub.core.auth import Principal
from tidehub.core.lifecycle import CANCELED, QUEUED, RUNNING, TERMINAL
from tidehub.core.ports import TaskChanges
from tidehub.core.limits import Limits, concurrency_refusal
from tidehub.errors import Conflict, Forbidden, InvalidInput, NotFound, quoted
from tidehub.core.ssrf import URLGuard
from tidehub.store import Store
from tidehub.store.base import DuplicateKey
from tidehub.store.tasks import QUEUE_POSITION_CAP

Task = dict[str, Any]

_REFUSALS = {
    "insufficient_credits": "not enough credits: this task costs {price} credits; top up or redeem a code",
    "key_spend_cap": "this API key has reached its spending cap ({price} more credits would exceed it)",
}

_UNSET_AT_SUBMIT = (
    "queue_position", "adapter", "upstream_ref", "upstream", "output", "error_code", "error_message",
    "lease_owner", "lease_until", "started_at", "finished_at",
)


class QueueHead:
    """Where a queued task stands in Tidehub's own queue: how many were submitted before it and
    still wait (0: it is next), up to QUEUE_POSITION_CAP ("that many or more").

    Every status read of a queued task wants it; a count per read was a fifth of a read's cost
    when many tasks wait. So one read of the queue's head serves every read for ``max_age``
    seconds: a position may lag the queue by that long, as a client polling it would see anyway.
    """

    def __init__(self, store: Store, max_age: float = 0.5) -> None:
        self.store = store
        self.max_age = max_age
        self._head: list[float] = []
        self._until = 0.0

    async def position(self, created_at: float) -> int:
        now = time.monotonic()
        if now >= self._until:
            self._head = await self.store.call(self.store.tasks.queue_head)
            self._until = now + self.max_age
        # Those submitted strictly before it (the task itself, if in the head, is not counted).
        return min(bisect.bisect_left(self._head, created_at), QUEUE_POSITION_CAP)


class TaskService:
    def __init__(self, store: Store, settings: Settings, guard: URLGuard,
                 wake: Callable[[], None] = lambda: None,
                 cancelled: Callable[[str], None] | None = None, changes: TaskChanges | None = None,
                 limits: Limits | None = None) -> None:
        self.store = store
        self.queue = QueueHead(store)
        self.limits = limits
        # Told when a cancel applied, so that live event streams and waits see it at once.
        self.changes = changes
        self.settings = settings
        self.guard = guard
        # Nudges the in-process engine so a new task is dispatched without waiting for a tick.
        self.wake = wake
        # Told each task this service cancelled, so that the step running it stops (in whichever
        # process runs it); without one, the engine is only woken.
        self.cancelled = cancelled or (lambda task_id: wake())
        # A result file of ours, passed on to the next task: the one local URL an upstream may get.
        self._own_file = re.compile(re.escape(settings.files_base_url) + r"/files/[\w-]+/\w[\w.-]*", re.ASCII)

    async def submit(
        self,
        principal: Principal,
        endpoint: Endpoint,
        input: Any,
        *,
        id_prefix: str,
        model_name: str | None = None,
        webhook_url: str | None = None,
        user_identifier: str | None = None,
        idempotency_key: str | None = None,
        actor: Actor | None = None,
    ) -> Task:
        """Validate, price, hold and write the task; nothing is written when any step refuses.
        With an idempotency key, a repeat of the same request returns the first task. ``actor``:
        someone other than the key's owner submits it (an operator in the console's playground),
        which the audit log records."""
        principal.check_model(model_name or endpoint.model, endpoint.slug, *endpoint.hub_ids)
        if endpoint.relay_only:
            raise InvalidInput(f"{endpoint.slug} takes uploaded files and runs only through the OpenAI-compatible "
                               f"relay (/v1/...), not as a task", field="endpoint")
        idempotency = None
        if idempotency_key is not None:
            digest = hashlib.sha256(orjson.dumps([endpoint.slug, model_name, input, webhook_url, user_identifier],
                                                 option=orjson.OPT_SORT_KEYS)).hexdigest()
            idempotency = (idempotency_key, digest)
            earlier = await self._earlier(principal, idempotency)
            if earlier is not None:
                return earlier
        data = endpoint.validate(input)
        media = [(f, url) for f, url in endpoint.media_urls(data) if not self._own_file.fullmatch(url)]
        if media:  # the upstream fetches these: no file://, no address of ours (core/ssrf.py)
            await self.guard.check_media(media)
        if webhook_url is not None:
            await self.guard.check(webhook_url, "webhook_url")
        quote = endpoint.price.quote(data)
        row = self._row(principal, endpoint, data, quote.credits, id_prefix, webhook_url=webhook_url,
                        user_identifier=user_identifier)
        row["request_id"] = context.request_id()
        bounds = self.limits.task_bounds(principal) if self.limits is not None else None
        try:
            refused = await self.store.call(self.store.tasks.open, row, idempotency, bounds)
        except DuplicateKey:
            if idempotency is None:
                raise
            earlier = await self._earlier(principal, idempotency)  # a concurrent twin won the race
            if earlier is None:
                raise
            return earlier
        if refused in ("key_concurrency", "account_concurrency"):
            assert principal.limits is not None
            raise concurrency_refusal(principal.limits, refused.partition("_")[0])
        if refused is not None:
            raise Forbidden(_REFUSALS[refused].format(price=quote.credits), code=refused)
        metrics.child(metrics.tasks_submitted, endpoint.model).inc()
        self.wake()
        if actor is not None:
            await AuditLog(self.store).write(actor, "task.submit", row["id"],
                                             {"account_id": principal.account_id, "model": endpoint.model,
                                              "held": quote.credits})
        return row

    async def open_call(self, principal: Principal, endpoint: Endpoint, held: int, *, owner: str,
                        mode: str | None = None) -> Task:
        """Credits held for the relay's calls (core/wallet.py): a task already running, leased by
        ``owner`` for ``lease_s`` (which the owner renews while it uses the credits), holding
        ``held``. Its owner settles it; if the owner dies, the engine releases the hold once the
        lease runs out."""
        row = self._row(principal, endpoint, {}, held, "relay")
        if mode is not None:
            row["mode"] = mode
        lease_until = row["created_at"] + self.settings.lease_s
        row.update(status=RUNNING, started_at=row["created_at"], lease_owner=owner, lease_until=lease_until,
                   next_check_at=lease_until, upstream={"relay": True})
        refused = await self.store.call(self.store.tasks.open, row, None)
        if refused is not None:
            raise Forbidden(_REFUSALS[refused].format(price=held), code=refused)
        return row

    def call_row(self, principal: Principal, endpoint: Endpoint, *, call_id: str | None = None,
                 user_identifier: str | None = None) -> Task:
        """The record of one finished relayed call, to fill in (status, charge, output) and write."""
        return {**self._row(principal, endpoint, {}, 0, "relay", user_identifier=user_identifier, task_id=call_id),
                "channel_id": None}

    def _row(self, principal: Principal, endpoint: Endpoint, data: dict[str, Any], held: int, id_prefix: str, *,
             webhook_url: str | None = None, user_identifier: str | None = None, task_id: str | None = None) -> Task:
        now = time.time()
        return {
            "id": task_id or ids.task_id(id_prefix),
            "account_id": principal.account_id,
            "key_id": principal.key_id,
            "model": endpoint.model,
            "endpoint": endpoint.slug,
            "capability": endpoint.capability,
            "mode": endpoint.mode,
            "input": data,
            "status": QUEUED,
            "progress": 0,
            "attempts": 0,
            "cancel_upstream": False,
            "webhook_url": webhook_url,
            "user_identifier": user_identifier,
            "held": held,
            "captured": 0,
            "next_check_at": now,
            "deadline_at": now + self.settings.deadline_for(endpoint.capability),
            "created_at": now,
            "updated_at": now,
            **dict.fromkeys(_UNSET_AT_SUBMIT),
        }

    async def _earlier(self, principal: Principal, idempotency: tuple[str, str]) -> Task | None:
        seen = await self.store.call(self.store.idempotency.get, principal.account_id, idempotency[0])
        if seen is None:
            return None
        if seen["request_hash"] != idempotency[1]:
            raise Conflict("this Idempotency-Key was already used with a different request",
                           code="idempotency_key_reused", field="Idempotency-Key")
        return await self.get(principal, seen["task_id"])

    async def get(self, principal: Principal, task_id: str) -> Task:
        task = await self.store.call(self.store.tasks.get, task_id, principal.account_id)
        if task is None:
            # The same answer whether the task is missing or another account's.
            raise NotFound(f"no task {quoted(task_id)}", field="task_id")
        if task["status"] == QUEUED:
            # Still in Tidehub's own queue (every channel busy, or not yet dispatched): its place.
            task["queue_position"] = await self.queue.position(task["created_at"])
        return task

    async def cancel(self, principal: Principal, task_id: str) -> Task:
        await self._cancel(await self.get(principal, task_id), principal.account_id, "cancelled by the client")
        # Whoever won a race with the engine, report the task as it now stands.
        return await self.get(principal, task_id)

    async def cancel_as_operator(self, task_id: str, *, actor: Actor | None = None) -> Task:
        """An operator cancels any account's task (from the console); the hold goes back as with a
        client's cancel."""
        task = await self.store.call(self.store.tasks.get, task_id)
        if task is None:
            raise NotFound(f"no task {task_id!r}", field="task_id")
        if await self._cancel(task, None, "cancelled by an operator"):
            await AuditLog(self.store).write(actor, "task.cancel", task_id, {"account_id": task["account_id"]})
        return await self.store.call(self.store.tasks.get, task_id)

    async def _cancel(self, task: Task, account_id: str | None, message: str) -> bool:
        if task["status"] in TERMINAL:
            if task["status"] == CANCELED:
                return False
            raise Conflict(f"task {quoted(task['id'])} is already {task['status']} and cannot be cancelled",
                           field="task_id", code="task_finished")
        applied = await self.store.call(
            self.store.tasks.end_active,
            task["id"],
            CANCELED,
            "canceled",
            message,
            time.time(),
            account_id=account_id,
        )
        if applied:
            metrics.task_finished(task, CANCELED)
            self.cancelled(task["id"])
            if self.changes is not None:
                self.changes.changed(task["id"])
        return applied
