"""Driving one upstream job through an adapter the way the engine does, with a deadline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Any

from tidehub.core.ports import Job, JobState, TaskAdapter, UpstreamError


async def run_to_end(adapter: TaskAdapter, job: Job, timeout: float = 20.0) -> tuple[JobState, list[JobState]]:
    """Poll ``status`` until the job completes or fails; the last state and every state seen."""
    deadline = time.monotonic() + timeout
    states: list[JobState] = []
    while True:
        states.append(await adapter.status(job))
        if states[-1].state in ("completed", "failed"):
            return states[-1], states
        if time.monotonic() > deadline:
            raise AssertionError(f"{job.ref} is still {states[-1].state} after {timeout} s")
        await asyncio.sleep(0.03)


async def refused(call: Awaitable[Any]) -> UpstreamError:
    """The ``UpstreamError`` an adapter call raises; the test fails if the call succeeds."""
    try:
        await call
    except UpstreamError as error:
        return error
    raise AssertionError("the upstream accepted what it should have refused")
