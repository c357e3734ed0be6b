"""Hung requests: the ``hang_rate`` knob's answer is no answer, until the client gives up.

Shared by every vendor protocol of the sim; each renders the eventual timeout in its own envelope.
"""

from __future__ import annotations

import asyncio

from starlette.requests import Request

from tidehub.sim.channels import ChannelStats


async def hold(request: Request, stats: ChannelStats, limit_s: float, stopping: asyncio.Event) -> None:
    """Return when the client hangs up, the sim stops, or ``limit_s`` wall-clock seconds pass."""

    async def client_gone() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    stats.held += 1
    waiters = [asyncio.ensure_future(client_gone()), asyncio.ensure_future(stopping.wait())]
    try:
        await asyncio.wait(waiters, timeout=limit_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stats.held -= 1
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
