"""`tidehub channels test`: one real request through one channel, timed, start to finish."""

from __future__ import annotations

import asyncio
import time

from tidehub.catalog import upstream_payload
from tidehub.core.channels import ChannelError, ChannelService
from tidehub.core.ports import Job


async def check_channel(service: ChannelService, name: str, slug: str, timeout: float) -> str:
    row = service.find(name)
    channel = next(c for c in service.load() if c.id == row["id"])
    endpoint = service.catalog.endpoint(slug)
    model = channel.upstream_model(endpoint)
    if model is None:
        raise ChannelError(f"channel {channel.name!r} does not serve {slug}")
    adapter = service.adapters[channel.adapter](channel.base_url, channel.secret)
    started = time.monotonic()
    try:
        spec = endpoint.upstream_for(channel.adapter) or {}
        job: Job = await adapter.submit(model, upstream_payload(endpoint.validate(endpoint.examples[0]), spec),
                                        spec=spec)
        submitted = time.monotonic() - started
        deadline = started + timeout
        while True:
            state = await adapter.status(job)
            if state.state == "completed":
                output = await adapter.result(job)
                break
            if state.state == "failed":
                raise ChannelError(f"the upstream run failed: {state.error.message if state.error else '?'}")
            if time.monotonic() > deadline:
                await adapter.cancel(job)
                raise ChannelError(f"no result within {timeout:.0f} s (the job was cancelled)")
            await asyncio.sleep(0.5)
    finally:
        await adapter.close()
    total = time.monotonic() - started
    keys = ", ".join(sorted(output)) if isinstance(output, dict) else type(output).__name__
    return (f"ok: {channel.name} ran {slug} as {model}: submit {submitted * 1000:.0f} ms, "
            f"result in {total:.1f} s (output: {keys})")
