"""The task engine: moves tasks from queued to a terminal state.

Work lives in the database, never only in memory: a task needs attention when its
``next_check_at`` is due, and a worker leases it for the time of one step (submit, one poll,
finishing, telling the upstream to stop). A killed process's leases simply run out and another
worker, or the restarted one, takes the tasks up. Every state change is a compare-and-set on
(status, lease owner), so no step is ever applied twice.

Steps of many tasks run concurrently: the engine claims a batch of due tasks in one query and
handles each in its own coroutine, bounded by ``engine_concurrency``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import secrets
import socket
import time
from typing import Any

from tidehub.catalog import Catalog, Endpoint, upstream_payload
from tidehub.config import Settings
from tidehub.core.assets import AssetStore
from tidehub.core import context, metrics
from tidehub.core.billing import measure
from tidehub.core.routing import Route, Router
from tidehub.core.lifecycle import (
    ACTIVE, CANCELED, FAILED, QUEUED, RUNNING, SUCCEEDED, TERMINAL, TIMEOUT, finished, released,
)
from tidehub.core.ports import Job, JobState, TaskChanges, UpstreamError
from tidehub.store import Store
from tidehub.store.events import MAX_LOG_LINES, log_line

log = logging.getLogger("tidehub.engine")



class Engine:
    def __init__(
        self, store: Store, catalog: Catalog, router: Router, assets: AssetStore, settings: Settings,
        changes: TaskChanges | None = None,
    ) -> None:
        self.store = store
        self.catalog = catalog
        self.router = router
        self.assets = assets
        self.settings = settings
        # Told after every step, so that live event streams and waits look at the task at once.
        self.changes = changes
        self.owner = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.scale = settings.time_scale
        self._inflight: set[asyncio.Task[None]] = set()
        # Steps of tasks the upstream already runs (polls, fetching and copying results), by task:
        # a cancel stops them at once (``cancel_step``).
        self._polling: dict[str, asyncio.Task[None]] = {}
        # Tasks holding or running on each channel, as last counted: a cheap first filter for
        # routing; the database enforces the limit itself (Store.reserve_channel).
        self.running: dict[str, int] = {}
        self._wake = asyncio.Event()
        # Set while due tasks wait for a free step slot: a step that ends then wakes the dispatch
        # loop (once a few slots are free), rather than leaving its slot idle until the next tick.
        self._backlogged = False
        self._refill = max(1, min(settings.engine_batch, settings.engine_concurrency) // 8)
        self._stopping = False
        self._loops: list[asyncio.Task[None]] = []

    # -- life cycle ----------------------------------------------------------------------------

    def start(self) -> None:
        self._loops = [
            asyncio.create_task(self._dispatch_loop(), name="tidehub-dispatch"),
            asyncio.create_task(self._sweep_loop(), name="tidehub-sweep"),
            asyncio.create_task(self._channel_loop(), name="tidehub-channels"),
        ]

    @property
    def stopping(self) -> bool:
        return self._stopping

    def spawn(self, loop: Any, name: str) -> None:
        """Run another long-lived loop (webhook delivery) with the engine's life cycle."""
        self._loops.append(asyncio.create_task(loop, name=name))

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        for loop in self._loops:
            loop.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        # Steps in progress are abandoned, not awaited: their leases run out and the work resumes.
        for step in list(self._inflight):
            step.cancel()
        await asyncio.gather(*self._inflight, return_exceptions=True)

    def wake(self) -> None:
        self._wake.set()

    def cancel_step(self, task_id: str) -> None:
        """The task was cancelled (here or in another process): a poll or a result download of it
        in progress here stops now, and the next claim tells the upstream to stop. A submit in
        progress is left to finish: only its answer names the upstream job to cancel."""
        step = self._polling.pop(task_id, None)
        if step is not None and not step.done():
            log.info("task %s: cancelled; its step stops", task_id)
            step.cancel()
        self.wake()

    async def _dispatch_loop(self) -> None:
        tick = max(0.02, self.settings.engine_tick_s * min(1.0, self.scale * 4))
        while not self._stopping:
            free = self.settings.engine_concurrency - len(self._inflight)
            claimed = 0
            if free > 0:
                now = time.time()
                try:
                    batch = await self.store.call(
                        self.store.tasks.claim_due,
                        self.owner,
                        now,
                        now + self.settings.lease_s,
                        min(free, self.settings.engine_batch),
                    )
                except Exception:
                    log.exception("claiming due tasks failed")
                    batch = []
                claimed = len(batch)
                for task in batch:
                    step = asyncio.create_task(self._run_step(task))
                    self._inflight.add(step)
                    step.add_done_callback(self._step_done)
                    if task["status"] == RUNNING:
                        self._polling[task["id"]] = step
                        step.add_done_callback(lambda _, tid=task["id"]: self._polling.pop(tid, None))
            # Every slot asked for was filled (or none was free): more may be due.
            self._backlogged = free <= 0 or claimed >= min(free, self.settings.engine_batch)
            if claimed and self._backlogged:
                await asyncio.sleep(0)  # more may be due: claim again before sleeping
                continue
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=tick)
                # Under a burst of submits, one claim per few milliseconds picks up the lot,
                # rather than one claim query per submit.
                await asyncio.sleep(min(tick, 0.01))
            except asyncio.TimeoutError:
                pass

    def _step_done(self, step: asyncio.Task[None]) -> None:
        self._inflight.discard(step)
        if self._backlogged and self.settings.engine_concurrency - len(self._inflight) >= self._refill:
            self._backlogged = False
            self._wake.set()

    async def _channel_loop(self) -> None:
        """Every second: notice channel edits, recount running tasks, publish health."""
        while not self._stopping:
            try:
                await self.router.refresh()
                self.running = await self.store.call(self.store.channels.running_counts)
                now = time.time()
                rows = [
                    {"channel_id": cid, **health.snapshot(), "in_flight": self.running.get(cid, 0), "updated_at": now}
                    for cid, health in self.router.health.items()
                ]
                await self.store.call(self.store.channels.save_health, rows)
            except Exception:
                log.exception("channel upkeep failed")
            await asyncio.sleep(max(0.05, min(1.0, self.scale * 10)))

    async def _sweep_loop(self) -> None:
        while not self._stopping:
            try:
                removed = await self.assets.sweep()
                if removed:
                    log.info("swept %d expired files", removed)
                # An Idempotency-Key protects a retry for a day, then it may be used again.
                await self.store.call(self.store.idempotency.forget, time.time() - 86400)
                forgotten = await self.forget_records()
                if forgotten:
                    log.info("deleted %d task and call records past their retention", forgotten)
                # A task's events go when its files do.
                await self.store.call(self.store.events.forget, time.time() - self.assets.retention_s)
            except Exception:
                log.exception("sweeping expired files failed")
            await asyncio.sleep(self.settings.asset_sweep_interval_s)

    async def forget_records(self, batch: int = 500) -> int:
        """Delete the task rows past TIDEHUB_RECORD_RETENTION_DAYS, a batch per transaction so no
        write waits long behind it."""
        before = time.time() - self.settings.record_retention_days * 86400
        removed = 0
        while not self._stopping:
            done = await self.store.call(self.store.tasks.forget, before, batch)
            removed += done
            if done < batch:
                break
            await asyncio.sleep(0.01)  # let the writes queued meanwhile go first
        return removed

    # -- one step of one task ---------------------------------------------------------------

    async def _run_step(self, task: dict[str, Any]) -> None:
        """One step, run as a task of its own that nobody awaits: nothing may escape it unlogged."""
        # This step's log lines and upstream calls carry the task, its channel and the request
        # that submitted it (the step runs as an asyncio task of its own: the context is its own).
        context.current.set(context.WorkContext(task.get("request_id"), fields={
            "task_id": task["id"], "channel": self.router.name_of(task["channel_id"]) or None}))
        metrics.engine_steps.inc()
        try:
            await self._step(task)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("task %s: step failed; retrying later", task["id"])
            try:
                await self._reschedule(task, delay=self._backoff(task["attempts"]), attempts=task["attempts"] + 1)
            except Exception as exc:
                # The lease runs out and the next claim retries the step.
                log.error("task %s: rescheduling after the failed step failed too (%s: %s); its lease "
                          "will run out and the step is retried", task["id"], type(exc).__name__, exc)
        finally:
            metrics.engine_steps.dec()
            if self.changes is not None:
                self.changes.changed(task["id"])

    async def _step(self, task: dict[str, Any]) -> None:
        if task["status"] in TERMINAL:
            await self._stop_upstream(task)
            return
        if time.time() >= task["deadline_at"]:
            if await self.store.call(
                self.store.tasks.end_active, task["id"], TIMEOUT, "timeout",
                "the task did not finish within its time limit", time.time(),
            ):
                self._ended(task, TIMEOUT)
            self.wake()
            return
        if (task["upstream"] or {}).get("relay"):
            # A relayed call whose process died (its lease ran out): nothing was delivered in full.
            await self._fail(task, UpstreamError("the call was interrupted before it finished", code="interrupted"))
            return
        endpoint = self.catalog.endpoints.get(task["endpoint"])
        if endpoint is None:
            await self._fail(task, UpstreamError(f"endpoint {task['endpoint']} left the catalog",
                                                 code="model_unavailable"))
            return
        if task["status"] == QUEUED:
            await self._submit(task, endpoint)
        else:
            await self._poll(task, endpoint)

    async def _submit(self, task: dict[str, Any], endpoint: Endpoint) -> None:
        failed = task["failed_channels"] or []
        try:
            route = await self.router.choose(endpoint, exclude=failed, in_flight=self.running)
        except UpstreamError as exc:
            await self._fail(task, exc)  # no channel serves this model at all
            return
        if route is None:
            # Every channel is at its limit: wait in our own queue rather than hammer the upstream.
            await self._reschedule(task, delay=max(0.05, self.settings.poll_min_s * self.scale))
            return
        try:
            await self._submit_on(task, endpoint, route)
        finally:
            self.router.release(route)  # a probe that learnt nothing lets the next request probe

    async def _submit_on(self, task: dict[str, Any], endpoint: Endpoint, route: Route) -> None:
        channel = route.channel.id
        if not await self.store.call(self.store.tasks.reserve_channel, task["id"], self.owner, channel,
                                     route.channel.max_concurrency):
            # Another process filled the channel meanwhile: wait in our own queue.
            await self._reschedule(task, delay=max(0.05, self.settings.poll_min_s * self.scale))
            return
        self.running[channel] = self.running.get(channel, 0) + 1
        ctx = context.current.get()
        if ctx is not None:
            ctx.fields["channel"] = route.channel.name
        started = time.monotonic()
        callback = (f"{self.settings.base_url}/callbacks/{channel}/{task['id']}"
                    if self.settings.upstream_callbacks else None)
        try:
            job = await route.adapter.submit(route.model, upstream_payload(task["input"], route.spec),
                                             callback_url=callback, spec=route.spec)
        except UpstreamError as exc:
            self._observe(channel, exc, started)
            await self._retry_or_fail(task, exc, channel=channel)
            return
        self.router.record(channel, True, time.monotonic() - started)
        now = time.time()
        events: list[tuple[str, dict[str, Any]]] = [("status", {"status": RUNNING})]
        if job.data.get("queue_position") is not None:
            events.append(("queue", {"queue_position": job.data["queue_position"]}))
        applied = await self.store.call(
            self.store.tasks.update,
            task["id"],
            released(
                status=RUNNING,
                channel_id=channel,
                adapter=route.adapter.name,
                upstream_ref=job.ref,
                upstream=job.data,
                queue_position=job.data.get("queue_position"),
                logs_seen=0,
                started_at=now,
                updated_at=now,
                next_check_at=now + self._poll_interval(endpoint),
            ),
            status_in=(QUEUED,),
            lease_owner=self.owner,
            events=events,
        )
        if not applied:
            # Cancelled (or timed out) while the submit was on the wire: stop the upstream job too.
            await self.store.call(
                self.store.tasks.update,
                task["id"],
                released(channel_id=channel, adapter=route.adapter.name, upstream_ref=job.ref, upstream=job.data,
                         cancel_upstream=True, next_check_at=now),
                status_in=TERMINAL,
            )
            self.wake()

    def _observe(self, channel: str | None, exc: UpstreamError, started: float) -> None:
        """Only upstream trouble counts against a channel's health; a client's bad input does not."""
        metrics.child(metrics.upstream_errors, self.router.name_of(channel), exc.code).inc()
        if exc.retryable and exc.code != "upstream_rate_limited":
            self.router.record(channel, False, time.monotonic() - started)

    async def _poll(self, task: dict[str, Any], endpoint: Endpoint) -> None:
        channel = task["channel_id"]
        adapter = self.router.adapter(channel)
        job = Job(task["upstream_ref"], task["upstream"] or {})
        if adapter is None or not self.router.channels[channel].enabled:
            # The channel was disabled or removed: run the task elsewhere.
            await self._move(task, adapter, job, "its channel was disabled")
            return
        started = time.monotonic()
        try:
            state = await adapter.status(job)
            logs, events = self._new_logs(task, state)
            if state.state == "completed":
                output = await adapter.result(job)
                output, rows = await self.assets.mirror(task["id"], output, adapter.auth_headers_for)
                charge = endpoint.price.charge(task["input"], measure(endpoint.capability, output), task["held"])
                await self._complete(task, output, rows, charge, logs, events)
                return
        except UpstreamError as exc:
            self._observe(channel, exc, started)
            if exc.retryable and self.router.is_broken(channel):
                await self._move(task, adapter, job, f"its channel is failing ({exc.code})")
            else:
                await self._retry_or_fail(task, exc, polling=True)
            return
        self.router.record(channel, True, time.monotonic() - started)
        if state.state == "failed":
            if logs:
                # The upstream's last lines say why: keep them, whatever happens to the task next.
                await self.store.call(self.store.tasks.update, task["id"], logs, status_in=ACTIVE,
                                      lease_owner=self.owner, events=events)
            error = state.error or UpstreamError("the upstream run failed")
            if error.retryable:
                self.router.record(channel, False)
            await self._retry_or_fail(task, error, channel=channel)
            return
        progress = self._progress(task, endpoint, state)
        queue_position = state.queue_position if state.state == "queued" else None
        if progress != task["progress"]:
            events.append(("progress", {"progress": progress}))
        if queue_position != task["queue_position"] and queue_position is not None:
            events.append(("queue", {"queue_position": queue_position}))
        await self._reschedule(
            task,
            delay=self._poll_interval(endpoint, task),
            progress=progress,
            queue_position=queue_position,
            extra=logs or None,
            events=events,
        )

    def _new_logs(self, task: dict[str, Any], state: JobState) -> tuple[dict[str, Any], list[tuple[str, dict[str, Any]]]]:
        """The upstream's log lines not seen yet (it reports them all at every poll): the task's
        columns to write (nothing when there is nothing new) and their events. The task keeps its
        last MAX_LOG_LINES lines."""
        seen = task.get("logs_seen") or 0
        if len(state.logs) <= seen:
            return {}, []
        lines = [log_line(entry) for entry in state.logs[seen:]]
        kept = [*(task.get("logs") or []), *lines][-MAX_LOG_LINES:]
        return {"logs": kept, "logs_seen": len(state.logs)}, [("log", line) for line in lines[-MAX_LOG_LINES:]]

    async def _complete(self, task: dict[str, Any], output: Any, rows: list[dict[str, Any]], charge: int,
                        logs: dict[str, Any], events: list[tuple[str, dict[str, Any]]]) -> None:
        now = time.time()
        if task["progress"] != 100:
            events = [*events, ("progress", {"progress": 100})]
        done = await self.store.call(
            self.store.tasks.complete,
            task["id"],
            self.owner,
            finished(SUCCEEDED, now, output=output, progress=100, queue_position=None, **logs),
            rows,
            charge,
            events,
        )
        if done:
            self._ended(task, SUCCEEDED)
        else:
            # Cancelled or timed out meanwhile: the copies belong to nobody.
            await self.assets.discard(rows)

    async def _stop_upstream(self, task: dict[str, Any]) -> None:
        adapter = self.router.adapter(task["channel_id"])
        if task["cancel_upstream"] and adapter is not None and task["upstream_ref"]:
            try:
                await adapter.cancel(Job(task["upstream_ref"], task["upstream"] or {}))
            except UpstreamError as exc:
                if exc.retryable and task["attempts"] + 1 < self.settings.max_attempts:
                    await self._reschedule(task, delay=self._backoff(task["attempts"], exc.retry_after),
                                           attempts=task["attempts"] + 1, status_in=TERMINAL)
                    return
                log.warning("task %s: upstream cancel failed: %s", task["id"], exc.message)
        await self.store.call(
            self.store.tasks.update,
            task["id"],
            released(cancel_upstream=False, next_check_at=None),
            status_in=TERMINAL,
            lease_owner=self.owner,
        )

    async def _move(self, task: dict[str, Any], adapter: Any, job: Job, why: str) -> None:
        """Resubmit a running task on another channel; the old job is cancelled if it can be."""
        log.info("task %s: moving off channel %s: %s", task["id"], task["channel_id"], why)
        if adapter is not None:
            try:
                await adapter.cancel(job)
            except UpstreamError:
                pass  # it is failing anyway; its result, if any, will be ignored
        await self._reschedule(task, delay=0.0, extra=self._requeue(task, task["channel_id"]))

    def _has_alternative(self, task: dict[str, Any], channel: str) -> bool:
        endpoint = self.catalog.endpoints.get(task["endpoint"])
        excluded = set(task["failed_channels"] or []) | {channel}
        return endpoint is not None and any(c.id not in excluded for c, _ in self.router.serving(endpoint))

    def _requeue(self, task: dict[str, Any], channel: str | None) -> dict[str, Any]:
        failed = list(task["failed_channels"] or [])
        if channel and channel not in failed:
            failed.append(channel)
        return {"status": QUEUED, "upstream_ref": None, "upstream": None, "adapter": None, "channel_id": None,
                "failed_channels": failed, "started_at": None}

    async def _retry_or_fail(
        self, task: dict[str, Any], exc: UpstreamError, *, polling: bool = False, channel: str | None = None
    ) -> None:
        # A 429 is the upstream pacing us, not failing: it costs no attempt (the deadline bounds it).
        attempts = task["attempts"] + (0 if exc.code == "upstream_rate_limited" else 1)
        if not exc.retryable or attempts >= self.settings.max_attempts:
            await self._fail(task, exc)
            return
        delay = self._backoff(attempts, exc.retry_after)
        if channel is not None and self._has_alternative(task, channel):
            delay = 0.05 * self.scale  # another channel can take it now: fail over without waiting
        if polling:
            # The job is still the upstream's: ask again later.
            await self._reschedule(task, delay=delay, attempts=attempts)
            return
        # The submit or the run failed in a way another attempt may fix: start over, on another
        # channel if there is one (the failed one is excluded while another exists).
        log.info("task %s: retrying after %s (%s)", task["id"], exc.code, exc.message)
        await self._reschedule(task, delay=delay, attempts=attempts, extra=self._requeue(task, channel))

    async def _fail(self, task: dict[str, Any], exc: UpstreamError) -> None:
        now = time.time()
        status = CANCELED if exc.code == "canceled" else FAILED
        if await self.store.call(
            self.store.tasks.fail, task["id"], self.owner, finished(status, now, code=exc.code, message=exc.message),
        ) and not (task["upstream"] or {}).get("relay"):  # a relayed call's record is no task
            self._ended(task, status)

    def _ended(self, task: dict[str, Any], outcome: str) -> None:
        metrics.task_finished(task, outcome, self.router.name_of(task["channel_id"]))

    async def _reschedule(
        self,
        task: dict[str, Any],
        *,
        delay: float,
        attempts: int | None = None,
        progress: int | None = None,
        queue_position: int | None = None,
        status_in: tuple[str, ...] = ACTIVE,
        extra: dict[str, Any] | None = None,
        events: list[tuple[str, dict[str, Any]]] | None = None,
    ) -> None:
        now = time.time()
        events = list(events or ())
        if extra is not None and extra.get("status") == QUEUED and task["status"] != QUEUED:
            events.append(("status", {"status": QUEUED}))  # back in Tidehub's own queue, for another try
        if attempts is None and extra is None and status_in == ACTIVE:
            await self.store.call(self.store.tasks.reschedule, task["id"], self.owner, now + delay, now, progress,
                                  queue_position, events)
            return
        values = released(next_check_at=now + delay, updated_at=now, **(extra or {}))
        if attempts is not None:
            values["attempts"] = attempts
        if progress is not None:
            values["progress"] = progress
            values["queue_position"] = queue_position
        await self.store.call(
            self.store.tasks.update, task["id"], values, status_in=status_in, lease_owner=self.owner, events=events
        )

    # -- timing ------------------------------------------------------------------------------

    def _poll_interval(self, endpoint: Endpoint, task: dict[str, Any] | None = None) -> float:
        """When to ask the upstream again: halfway to the job's expected end while it is still
        far (so a 45 s video costs a handful of polls, not one every few seconds), then at a
        steady pace of a tenth of its typical duration. Both within the configured bounds."""
        s = self.settings
        expected = endpoint.timing["queue_s"] + endpoint.timing["run_s"]
        elapsed = (time.time() - task["started_at"]) / self.scale if task and task["started_at"] else 0.0
        remaining = expected - elapsed
        base = remaining / 2 if remaining > 2 * s.poll_min_s else expected / 10
        if s.upstream_callbacks:
            base *= 3  # the upstream calls back: polling is only the safety net
        base = min(s.poll_max_s, max(s.poll_min_s, base))
        return max(0.05, base * self.scale) * random.uniform(0.9, 1.1)

    def _backoff(self, attempts: int, retry_after: float | None = None) -> float:
        delay = min(60.0, 0.5 * 2**attempts) * self.scale * random.uniform(0.8, 1.2)
        return max(delay, retry_after or 0.0, 0.05)

    def _progress(self, task: dict[str, Any], endpoint: Endpoint, state: JobState) -> int:
        """fal reports no percentage: estimate one from the model's typical run time."""
        if state.state == "queued":
            return 0
        expected = (endpoint.timing["queue_s"] + endpoint.timing["run_s"]) * self.scale
        elapsed = time.time() - (task["started_at"] or time.time())
        return max(1, min(95, int(100 * elapsed / max(expected, 0.001))))
