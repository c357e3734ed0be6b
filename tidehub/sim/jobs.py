"""The lifecycle of every accepted request, computed from timestamps.

A waiting request is just a few numbers: when it leaves the queue and when its run ends. Status is
worked out from the clock when asked, so ten thousand requests in flight cost memory, not tasks.
Work only starts when a run ends: one scheduler task wakes at the next due run and starts making
its output (in a thread pool), and a poll that notices a due run starts it too, in case the
scheduler is behind. The output is made once; the request stays "in progress" until it exists.

Each channel (upstream account) has its own FIFO queue per model, and optionally a cap on how
many of its runs overlap (``max_concurrent``): a capped channel's request starts no earlier than
the moment one of its run slots falls free, all still worked out once, at submit time.

Vendor-neutral on purpose: the fal routes render this state in fal's words, and a later Replicate
or OpenAI simulator can render the same jobs in theirs.
"""

from __future__ import annotations

import asyncio
import enum
import heapq
import itertools
import logging
import random
import time
import uuid
from bisect import bisect_left, bisect_right, insort
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from tidehub.sim import params
from tidehub.sim.behaviour import SimBehaviour
from tidehub.sim.errors import RunFailure
from tidehub.sim.models import SimModel
from tidehub.sim.outputs import OutputMaker

if TYPE_CHECKING:
    from tidehub.sim.channels import Channel

log = logging.getLogger(__name__)


class Phase(enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"


class Job:
    """One accepted request: its input, its planned times and, once finished, its outcome."""

    __slots__ = (
        "id", "model", "inputs", "submitted_at", "starts_at", "ends_at", "webhook_url", "priority",
        "timeout_s", "output", "failure", "finished_at", "production", "channel", "planned_failure",
    )

    def __init__(self, model: SimModel, inputs: Mapping[str, Any], submitted_at: float, starts_at: float,
                 ends_at: float, webhook_url: str | None, priority: str, timeout_s: float | None,
                 channel: Channel | None = None, planned_failure: RunFailure | None = None) -> None:
        self.id = str(uuid.uuid4())
        self.model = model
        self.inputs = inputs
        self.submitted_at = submitted_at
        self.starts_at = starts_at
        self.ends_at = ends_at
        self.webhook_url = webhook_url
        self.priority = priority
        self.timeout_s = timeout_s
        self.output: dict[str, Any] | None = None
        self.failure: RunFailure | None = None
        self.finished_at: float | None = None
        self.production: asyncio.Task[None] | None = None
        self.channel = channel
        #: Decided at submit (a fault knob or a prompt marker): the run ends in this error, no output.
        self.planned_failure = planned_failure

    @property
    def finished(self) -> bool:
        return self.finished_at is not None

    @property
    def cancelled(self) -> bool:
        return self.failure is not None and self.failure.error_type == "request_cancelled"


class _Lane:
    """One model's FIFO queue, as the sorted times at which its requests leave it."""

    __slots__ = ("exits", "head")

    def __init__(self) -> None:
        self.exits: list[float] = []
        self.head = 0

    def admit(self, now: float, wanted_exit: float) -> float:
        """Queue a request; it cannot leave before the one ahead of it (first in, first out)."""
        self._drop_gone(now)
        if self.head < len(self.exits):
            wanted_exit = max(wanted_exit, self.exits[-1] + 1e-6)
        self.exits.append(wanted_exit)
        return wanted_exit

    def ahead_of(self, exit_at: float, now: float) -> int:
        self._drop_gone(now)
        return bisect_left(self.exits, exit_at, self.head) - self.head

    def insert(self, now: float, exit_at: float) -> None:
        """Record a departure without the FIFO rule (a channel's queue spans several models)."""
        self._drop_gone(now)
        insort(self.exits, exit_at, lo=self.head)

    def _drop_gone(self, now: float) -> None:
        self.head = bisect_right(self.exits, now, self.head)
        if self.head > 1024 and self.head * 2 > len(self.exits):
            del self.exits[: self.head]
            self.head = 0


class _RunSlots:
    """A channel's ``max_concurrent`` runs, each slot known by the time it next falls free.

    A request takes the slot that frees first and starts no earlier than that, so at most ``size``
    planned runs overlap. Cancelled runs keep their slot until their planned end (conservative).
    """

    __slots__ = ("free_at", "starts")

    def __init__(self, size: int, now: float, busy_until: Iterable[float]) -> None:
        self.free_at: list[float] = []
        self.starts = _Lane()
        self.resize(size, now, busy_until)

    @property
    def size(self) -> int:
        return len(self.free_at)

    def resize(self, size: int, now: float, busy_until: Iterable[float] = ()) -> None:
        """Keep the slots that stay busy longest (the honest choice when the cap shrinks)."""
        times = heapq.nlargest(size, [*self.free_at, *busy_until])
        self.free_at = times + [now] * (size - len(times))
        heapq.heapify(self.free_at)

    def earliest_start(self, wanted: float) -> float:
        return max(wanted, self.free_at[0])

    def occupy(self, now: float, starts_at: float, ends_at: float) -> None:
        heapq.heapreplace(self.free_at, ends_at)
        self.starts.insert(now, starts_at)


class JobBoard:
    """All jobs of one sim, their per-model queues, and the scheduler that finishes them."""

    def __init__(
        self,
        behaviour: SimBehaviour,
        maker: OutputMaker,
        retention_s: float = 3600.0,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        on_finish: Callable[[Job], None] | None = None,
    ) -> None:
        self.behaviour = behaviour
        self._maker = maker
        self._retention_s = retention_s
        self._clock = clock
        self._rng = rng or random.Random()
        self._on_finish = on_finish
        self._jobs: dict[str, Job] = {}
        self._lanes: dict[tuple[str, str], _Lane] = {}
        self._slots: dict[str, _RunSlots] = {}
        self._due: list[tuple[float, int, Job]] = []
        self._sequence = itertools.count()
        self._wake: asyncio.Event | None = None
        self._finished_order: deque[tuple[float, str]] = deque()

    def submit(self, model: SimModel, inputs: Mapping[str, Any], *, webhook_url: str | None = None,
               priority: str = "normal", timeout_s: float | None = None, channel: Channel | None = None,
               failure: RunFailure | None = None) -> tuple[Job, int]:
        """Accept a request; returns the job and how many requests are queued ahead of it.

        ``failure``, when given, is how the run will end instead of producing an output.
        """
        now = self._clock()
        behaviour = channel.behaviour if channel is not None else self.behaviour
        effective = params.with_defaults(model, inputs)
        timing = behaviour.timing(model.queue_s, model.run_s, params.work_factor(model, effective), self._rng)
        lane = self._lanes.setdefault(_lane_key(channel, model), _Lane())
        slots = self._run_slots(channel, now)
        wanted = now + timing.queue_s
        if slots is not None:
            wanted = slots.earliest_start(wanted)
        starts_at = lane.admit(now, wanted)
        ends_at = starts_at + timing.run_s
        if slots is not None:
            slots.occupy(now, starts_at, ends_at)
        job = Job(model, inputs, now, starts_at, ends_at, webhook_url, priority, timeout_s, channel, failure)
        self._jobs[job.id] = job
        heapq.heappush(self._due, (job.ends_at, next(self._sequence), job))
        if self._wake is not None and self._due[0][2] is job:
            self._wake.set()
        ahead = lane.ahead_of(starts_at, now)
        if slots is not None:
            ahead = max(ahead, slots.starts.ahead_of(starts_at, now))
        return job, ahead

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def phase(self, job: Job) -> Phase:
        """Where the job is now; starts its output if its run is over and nobody has yet."""
        if job.finished:
            return Phase.DONE
        now = self._clock()
        if now < job.starts_at:
            return Phase.QUEUED
        if now >= job.ends_at:
            self._start_production(job)
        return Phase.DONE if job.finished else Phase.RUNNING

    def queue_position(self, job: Job) -> int:
        now = self._clock()
        lane = self._lanes.get(_lane_key(job.channel, job.model))
        ahead = lane.ahead_of(job.starts_at, now) if lane else 0
        if job.channel is not None and (slots := self._slots.get(job.channel.key)) is not None:
            ahead = max(ahead, slots.starts.ahead_of(job.starts_at, now))
        return ahead

    def cancel(self, job: Job) -> bool:
        """Cancel a job that has not finished; False when it already had."""
        if job.finished:
            return False
        if job.production is not None:
            job.production.cancel()
        self._finish(job, failure=RunFailure.cancelled())
        return True

    def now(self) -> float:
        return self._clock()

    @property
    def count(self) -> int:
        return len(self._jobs)

    async def run_scheduler(self) -> None:
        """Start each job's output as its run ends; sleeps until the next one is due."""
        self._wake = asyncio.Event()
        while True:
            now = self._clock()
            while self._due and self._due[0][0] <= now:
                _, _, job = heapq.heappop(self._due)
                if not job.finished:
                    self._start_production(job)
            delay = self._due[0][0] - now if self._due else None
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=delay)
            except TimeoutError:
                pass

    def forget_old(self) -> int:
        """Drop jobs that finished more than ``retention_s`` ago; returns how many."""
        cutoff = self._clock() - self._retention_s
        dropped = 0
        while self._finished_order and self._finished_order[0][0] <= cutoff:
            _, job_id = self._finished_order.popleft()
            if self._jobs.pop(job_id, None) is not None:
                dropped += 1
        return dropped

    async def aclose(self) -> None:
        tasks = [job.production for job in self._jobs.values() if job.production and not job.production.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _run_slots(self, channel: Channel | None, now: float) -> _RunSlots | None:
        """The channel's run slots, following its ``max_concurrent`` knob (None when uncapped)."""
        if channel is None:
            return None
        cap = channel.behaviour.max_concurrent
        slots = self._slots.get(channel.key)
        if not cap:
            if slots is not None:
                del self._slots[channel.key]
            return None
        if slots is None:  # newly capped: the channel's planned runs already hold slots
            busy = [job for job in self._jobs.values()
                    if job.channel is channel and not job.finished and job.ends_at > now]
            slots = self._slots[channel.key] = _RunSlots(cap, now, [job.ends_at for job in busy])
            for job in busy:
                if job.starts_at > now:
                    slots.starts.insert(now, job.starts_at)
        elif slots.size != cap:
            slots.resize(cap, now)
        return slots

    def _start_production(self, job: Job) -> None:
        if job.planned_failure is not None:
            self._finish(job, failure=job.planned_failure)
        elif job.production is None and not job.finished:
            job.production = asyncio.get_running_loop().create_task(self._produce(job), name=f"sim-output-{job.id}")

    async def _produce(self, job: Job) -> None:
        try:
            output = await self._maker.make(job.model, job.inputs)
        except RunFailure as failure:
            self._finish(job, failure=failure)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("sim: making the output of %s (%s) failed", job.id, job.model.fal_id)
            self._finish(job, failure=RunFailure.internal())
        else:
            self._finish(job, output=output)

    def _finish(self, job: Job, *, output: dict[str, Any] | None = None, failure: RunFailure | None = None) -> None:
        if job.finished:
            return
        job.output, job.failure = output, failure
        job.finished_at = self._clock()
        self._finished_order.append((job.finished_at, job.id))
        if self._on_finish is not None:
            try:
                self._on_finish(job)
            except Exception:  # a broken observer must not leave the job half-finished
                log.exception("sim: the finish hook failed for %s", job.id)


def _lane_key(channel: Channel | None, model: SimModel) -> tuple[str, str]:
    return (channel.key if channel is not None else "", model.fal_id)
