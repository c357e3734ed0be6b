"""The relayed SSE response (api/openai.py ``MeteredStream``) as an ASGI app: a client that leaves
mid-stream stops the upstream read and settles the call once; a finished stream settles once too."""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator

from tidehub.api.openai import MeteredStream


class Upstream:
    """Chunks as an upstream stream would give them, counting what was read and how it was closed."""

    def __init__(self, count: int, stall_after: int | None = None) -> None:
        self.count, self.stall_after = count, stall_after
        self.read = 0
        self.closed = False

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            for i in range(self.count):
                if self.stall_after is not None and i >= self.stall_after:
                    await asyncio.Event().wait()  # an upstream that goes quiet
                self.read += 1
                yield b'data: {"content":"x"}\n\n'
                await asyncio.sleep(0)
        finally:
            self.closed = True


def run(upstream: Upstream, leave_after: int | None) -> tuple[list[dict[str, Any]], list[int]]:
    settled: list[int] = []
    sent: list[dict[str, Any]] = []
    gone = asyncio.Event()

    async def close() -> None:
        settled.append(upstream.read)

    async def receive() -> dict[str, Any]:
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        bodies = sum(1 for m in sent if m.get("body"))
        if leave_after is not None and bodies >= leave_after:
            gone.set()

    async def main() -> None:
        response = MeteredStream(upstream.chunks(), close)
        await asyncio.wait_for(response({"type": "http"}, receive, send), timeout=10)
        await response._settle()  # a second settle (say, a retry of the cleanup) charges nothing more

    asyncio.run(main())
    return sent, settled


def test_client_leaving_mid_stream_stops_the_upstream_and_settles_once() -> None:
    upstream = Upstream(1000)
    sent, settled = run(upstream, leave_after=3)
    assert len(settled) == 1 and upstream.closed
    assert 3 <= settled[0] < 1000  # what had been read when it left, not the whole answer
    assert sent[-1].get("more_body", True)  # never ended as if complete


def test_client_leaving_while_the_upstream_is_quiet_ends_the_response() -> None:
    upstream = Upstream(10, stall_after=2)
    _, settled = run(upstream, leave_after=2)
    assert settled == [2] and upstream.closed


def test_finished_stream_settles_once_and_ends_the_body() -> None:
    upstream = Upstream(5)
    sent, settled = run(upstream, leave_after=None)
    assert settled == [5]
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 200
    assert sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
