"""The relay's reading of an upstream SSE body (providers/openai.py): wherever the network cuts
it, the events come out whole, exactly as received, and the relayed chat passes on what the
client should see, metered."""

from __future__ import annotations

import random
from typing import Any, AsyncIterator

import orjson
import pytest

from tidehub.providers.openai import RelayedChat, SSEStream


class _Content:
    def __init__(self, reads: list[bytes]) -> None:
        self._reads = reads

    async def _iter(self) -> AsyncIterator[bytes]:
        for read in self._reads:
            yield read

    def iter_any(self) -> AsyncIterator[bytes]:
        return self._iter()


class _Response:
    """What SSEStream uses of aiohttp's response: the body's reads as given."""

    status = 200
    headers: dict[str, str] = {}

    def __init__(self, reads: list[bytes]) -> None:
        self.content = _Content(reads)
        self.closed = False

    def close(self) -> None:
        self.closed = True


def _chunk(content: str | None, *, usage: Any = "absent", choices: bool = True) -> dict[str, Any]:
    chunk: dict[str, Any] = {"id": "c", "object": "chat.completion.chunk",
                             "choices": [{"index": 0, "delta": {"content": content} if content is not None else {}}]
                             if choices else []}
    if usage != "absent":
        chunk["usage"] = usage
    return chunk


def _body(newline: bytes) -> tuple[bytes, list[bytes]]:
    """A streamed chat as an upstream asked for usage sends it: every chunk with "usage":null, then
    a usage-only chunk, then [DONE]. Returns the body and its events."""
    events = [b"data: " + orjson.dumps(_chunk(word, usage=None)) + newline * 2 for word in ["", "Tides", " rise", ","]]
    events.append(b": a comment line, which is an event of its own" + newline * 2)
    events.append(b"data: " + orjson.dumps(_chunk(None, usage=None)) + newline * 2)
    events.append(b"data: " + orjson.dumps(_chunk(None, usage={"prompt_tokens": 9, "completion_tokens": 3,
                                                              "total_tokens": 12}, choices=False)) + newline * 2)
    events.append(b"data: [DONE]" + newline * 2)
    return b"".join(events), events


def _cut(body: bytes, rng: random.Random) -> list[bytes]:
    cuts = sorted(rng.sample(range(1, len(body)), rng.randint(0, 12)))
    return [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)])]


async def _batches(reads: list[bytes]) -> list[list[bytes]]:
    return [batch async for batch in SSEStream(_Response(reads)).batches()]  # type: ignore[arg-type]


@pytest.mark.parametrize("newline", [b"\n", b"\r\n"])
async def test_events_come_out_whole_and_as_received_wherever_the_reads_cut(newline: bytes) -> None:
    body, events = _body(newline)
    rng = random.Random(7)
    for _ in range(200):
        batches = await _batches(_cut(body, rng))
        assert [event for batch in batches for event in batch] == events
    # One read holding everything is one batch: one write to the client.
    assert await _batches([body]) == [events]


async def test_blank_lines_between_events_are_not_events() -> None:
    reads = [b"\n\ndata: 1\n\n\n\n", b"\ndata: 2\n\n", b"data: 3", b"\n\n"]
    got = [event for batch in await _batches(reads) for event in batch]
    assert [e.strip() for e in got] == [b"data: 1", b"data: 2", b"data: 3"]
    assert b"".join(got).replace(b"\n", b"") == b"".join(reads).replace(b"\n", b"")


async def test_a_body_ending_without_a_blank_line_still_gives_its_last_event() -> None:
    got = [event for batch in await _batches([b"data: 1\n\ndata: [DON", b"E]\n"]) for event in batch]
    assert got == [b"data: 1\n\n", b"data: [DONE]\n"]


@pytest.mark.parametrize("wants_usage", [False, True])
@pytest.mark.parametrize("newline", [b"\n", b"\r\n"])
async def test_the_relayed_chat_meters_and_keeps_the_usage_chunk_out_unless_asked(wants_usage: bool,
                                                                                newline: bytes) -> None:
    body, _ = _body(newline)
    rng = random.Random(3)
    for _ in range(50):
        chat = RelayedChat(SSEStream(_Response(_cut(body, rng))), wants_usage)  # type: ignore[arg-type]
        out = b"".join([chunk async for chunk in chat.chunks()])
        assert chat.usage == {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}
        assert chat.delivered == 3  # "Tides", " rise", ","; the empty first delta is not a token
        assert out.endswith(b"data: [DONE]" + newline * 2)
        if wants_usage:
            assert out == body
        else:
            assert b'"usage"' not in out
            assert out.count(b"data: ") == body.count(b"data: ") - 1  # the usage-only chunk
