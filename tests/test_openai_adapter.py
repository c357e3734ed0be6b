"""The OpenAI adapter against the simulator's ``/v1``: the video task face and the relay face."""

from __future__ import annotations

import asyncio
import io
import math
import struct
import time
import wave
from collections.abc import AsyncIterator, Iterator

import aiohttp
import httpx
import orjson
import pytest

from tidehub.providers import ADAPTERS
from tidehub.core.ports import Job, UpstreamError
from tidehub.providers.openai import OpenAIAdapter, classify, usage_of
from tidehub.sim import STREAM_CUT_MARKER, SimBehaviour, SimServer

KEY = "sim-key"
BUSY = "busy-key"  # every other request is refused with 429
SLOW = "slow-key"  # real time: 0.3 s to a stream's first token, 0.02 s per token
RETRY_AFTER_S = 2
CHAT = "/chat/completions"
HELLO = [{"role": "user", "content": "Tell me about tides and the moon."}]


@pytest.fixture(scope="module")
def sim() -> Iterator[SimServer]:
    channels = {BUSY: SimBehaviour(rate_limit_every=1, rate_limit_burst=1, retry_after_s=RETRY_AFTER_S),
                SLOW: SimBehaviour(time_scale=1.0)}
    with SimServer(time_scale=0.01, api_key=KEY, channels=channels, seed=11) as server:
        yield server


@pytest.fixture
async def adapter(sim: SimServer) -> AsyncIterator[OpenAIAdapter]:
    upstream = OpenAIAdapter(f"{sim.url}/v1", KEY, timeout_s=10)
    yield upstream
    await upstream.close()


def test_registered() -> None:
    assert ADAPTERS["openai"] is OpenAIAdapter
    assert OpenAIAdapter("https://api.openai.com/v1/", "k", extra_option=1).base_url == "https://api.openai.com/v1"


async def test_video_task(adapter: OpenAIAdapter, sim: SimServer) -> None:
    job = await adapter.submit("sora-2", {"prompt": "waves on a pier", "seconds": 4, "size": "1280x720"})
    assert job.ref.startswith("video_") and job.data == {}
    states = []
    deadline = time.monotonic() + 10
    while True:
        state = await adapter.status(job)
        states.append(state.state)
        if state.state in ("completed", "failed") or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    assert states[-1] == "completed", states
    assert set(states) <= {"queued", "running", "completed"}

    output = await adapter.result(job)
    url = output["video"]["url"]
    assert url == f"{sim.url}/v1/videos/{job.ref}/content" and output["video"]["content_type"] == "video/mp4"
    headers = adapter.auth_headers_for(url)
    assert headers == {"Authorization": f"Bearer {KEY}"}
    async with httpx.AsyncClient(timeout=10) as client:
        assert (await client.get(url)).status_code == 401  # the URL alone is not enough
        video = await client.get(url, headers=headers)
    assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"
    assert video.content[4:8] == b"ftyp"  # an MP4


def test_auth_headers_only_for_the_base_url() -> None:
    upstream = OpenAIAdapter("https://api.openai.com/v1", "secret")
    assert upstream.auth_headers_for("https://api.openai.com/v1/videos/v1/content")
    assert upstream.auth_headers_for("HTTPS://API.openai.com/v1/videos/v1/content")
    for other in ("https://api.openai.com.evil.example/v1/videos/x", "https://api.openai.com/v10/x",
                  "http://api.openai.com/v1/videos/x", "https://api.openai.com:8443/v1/x",
                  "https://cdn.example.com/video.mp4", "not a url"):
        assert upstream.auth_headers_for(other) == {}, other


async def test_video_refused_and_bad_input(adapter: OpenAIAdapter) -> None:
    job = await adapter.submit("sora-2", {"prompt": "[sim:content-policy] a storm", "seconds": "4"})
    deadline = time.monotonic() + 10
    while (state := await adapter.status(job)).state not in ("completed", "failed"):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    assert state.state == "failed" and state.error is not None
    assert state.error.code == "content_policy" and not state.error.retryable

    with pytest.raises(UpstreamError) as caught:
        await adapter.submit("sora-2", {"prompt": "waves", "seconds": "5"})
    assert (caught.value.code, caught.value.status, caught.value.retryable) == ("invalid_input", 400, False)
    assert caught.value.field == "input.seconds"
    with pytest.raises(UpstreamError) as caught:
        await adapter.submit("sora-9", {"prompt": "waves"})
    assert (caught.value.code, caught.value.retryable) == ("upstream_not_found", True)


async def test_cancel_and_callbacks(adapter: OpenAIAdapter) -> None:
    await adapter.cancel(Job("video_0123456789abcdef0123456789abcdef"))  # unknown: nothing to stop
    with pytest.raises(UpstreamError) as caught:
        await adapter.verify_callback({}, b"{}")
    assert caught.value.code == "bad_callback"


async def test_chat_call_and_unknown_model(adapter: OpenAIAdapter) -> None:
    status, headers, raw = await adapter.call(CHAT, {"model": "gpt-4o", "messages": HELLO})
    assert status == 200 and headers["content-type"].startswith("application/json")
    body = orjson.loads(raw)
    assert body["choices"][0]["message"]["content"]
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    assert classify(status, headers, raw) is None

    status, headers, raw = await adapter.call(CHAT, {"model": "gpt-17", "messages": HELLO})
    assert status == 404 and orjson.loads(raw)["error"]["code"] == "model_not_found"  # passed through as is
    error = adapter.classify(status, headers, raw)
    # Another channel may well serve the model: worth trying elsewhere.
    assert error is not None and (error.code, error.retryable, error.status) == ("upstream_not_found", True, 404)

    status, headers, raw = await adapter.call(CHAT, {"model": "gpt-4o", "messages": []})
    error = classify(status, headers, raw)
    assert error is not None and (error.code, error.retryable, error.field) == ("invalid_input", False, "messages")

    status, _, raw = await adapter.call("/models", method="GET")
    assert status == 200 and any(m["id"] == "gpt-4o" for m in orjson.loads(raw)["data"])


async def test_stream(adapter: OpenAIAdapter) -> None:
    body = {"model": "gpt-4o-mini", "messages": HELLO, "stream_options": {"include_usage": True}}
    events = await adapter.stream(CHAT, body)
    async with events:
        received = [event async for event in events]
    assert all(e.startswith(b"data: ") and e.endswith(b"\n\n") for e in received)
    assert received[-1] == b"data: [DONE]\n\n"
    usages = [u for e in received if (u := usage_of(e)) is not None]
    assert len(usages) == 1 and usages[0]["completion_tokens"] > 0
    assert usage_of(received[-2]) == usages[0]
    text = "".join(orjson.loads(e[6:])["choices"][0]["delta"].get("content") or ""
                   for e in received[:-2])
    status, _, raw = await adapter.call(CHAT, {"model": "gpt-4o-mini", "messages": HELLO})
    assert text == orjson.loads(raw)["choices"][0]["message"]["content"]

    plain = await adapter.stream(CHAT, {"model": "gpt-4o-mini", "messages": HELLO})
    assert not any(usage_of(e) for e in [e async for e in plain])

    with pytest.raises(UpstreamError) as caught:
        await adapter.stream(CHAT, {"model": "gpt-17", "messages": HELLO})
    assert caught.value.code == "upstream_not_found"


async def test_stream_closed_early_and_cut(adapter: OpenAIAdapter, sim: SimServer) -> None:
    slow = OpenAIAdapter(f"{sim.url}/v1", SLOW, timeout_s=10)
    try:
        events = await slow.stream(CHAT, {"model": "gpt-4", "messages": HELLO})
        first = await anext(events)
        assert first.startswith(b"data: ")
        await asyncio.wait_for(events.aclose(), 2)
        assert events._resp.closed
        with pytest.raises(StopAsyncIteration):
            await anext(events)

        # A consumer cancelled mid-read (the client went away) closes the upstream response too.
        events = await slow.stream(CHAT, {"model": "gpt-4", "messages": HELLO})
        reader = asyncio.create_task(anext(events))
        await asyncio.sleep(0.05)  # blocked in a read: the first token is 0.3 s away
        reader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reader
        assert events._resp.closed

        # The pool is still fine afterwards.
        status, _, _ = await asyncio.wait_for(slow.call(CHAT, {"model": "gpt-4", "messages": HELLO}), 5)
        assert status == 200
    finally:
        await slow.close()

    cut = await adapter.stream(CHAT, {"model": "gpt-4", "messages": [
        {"role": "user", "content": f"a long story {STREAM_CUT_MARKER}"}]})
    with pytest.raises(UpstreamError) as caught:
        async for _ in cut:
            pass
    assert caught.value.retryable and caught.value.code == "upstream_unavailable"


async def test_embeddings_and_transcription(adapter: OpenAIAdapter) -> None:
    status, _, raw = await adapter.call("/embeddings", {"model": "text-embedding-3-small", "input": ["a", "b"],
                                                        "dimensions": 64})
    body = orjson.loads(raw)
    assert status == 200 and [len(d["embedding"]) for d in body["data"]] == [64, 64]
    assert body["usage"]["prompt_tokens"] > 0

    form = aiohttp.FormData()
    form.add_field("model", "whisper-1")
    form.add_field("response_format", "verbose_json")
    form.add_field("file", _wav(1.5), filename="speech.wav", content_type="audio/wav")
    status, headers, raw = await adapter.call("/audio/transcriptions", form=form)
    body = orjson.loads(raw)
    assert status == 200 and body["text"] and body["duration"] == pytest.approx(1.5, abs=0.05)


async def test_outage_rate_limit_and_wrong_key(sim: SimServer) -> None:
    down_key = "down-key"
    async with httpx.AsyncClient() as control:
        answer = await control.put(f"{sim.url}/_sim/channels/{down_key}", json={"outage": True})
        assert answer.status_code in (200, 201)
    down = OpenAIAdapter(f"{sim.url}/v1", down_key)
    busy = OpenAIAdapter(f"{sim.url}/v1", BUSY)
    wrong = OpenAIAdapter(f"{sim.url}/v1", "no-such-key")
    try:
        status, headers, raw = await down.call(CHAT, {"model": "gpt-4o", "messages": HELLO})
        assert status == 503 and orjson.loads(raw)["error"]["type"] == "server_error"
        error = classify(status, headers, raw)
        assert error is not None and error.retryable and error.status == 503

        assert (await busy.call(CHAT, {"model": "gpt-4o", "messages": HELLO}))[0] == 200
        status, headers, raw = await busy.call(CHAT, {"model": "gpt-4o", "messages": HELLO})
        assert status == 429 and headers["retry-after"] == str(RETRY_AFTER_S)
        error = classify(status, headers, raw)
        assert error is not None and (error.code, error.retryable) == ("upstream_rate_limited", True)
        assert error.retry_after == RETRY_AFTER_S
        with pytest.raises(UpstreamError) as caught:  # the next is let through, then the burst again
            await busy.call(CHAT, {"model": "gpt-4o", "messages": HELLO})
            await busy.stream(CHAT, {"model": "gpt-4o", "messages": HELLO})
        assert caught.value.code == "upstream_rate_limited" and caught.value.retry_after == RETRY_AFTER_S

        status, headers, raw = await wrong.call(CHAT, {"model": "gpt-4o", "messages": HELLO})
        error = classify(status, headers, raw)
        assert status == 401 and error is not None and (error.code, error.retryable) == ("upstream_auth", True)
    finally:
        for upstream in (down, busy, wrong):
            await upstream.close()


async def test_transport_failure_is_retryable() -> None:
    upstream = OpenAIAdapter("http://127.0.0.1:9/v1", KEY, timeout_s=2)
    try:
        with pytest.raises(UpstreamError) as caught:
            await upstream.call(CHAT, {"model": "gpt-4o", "messages": HELLO})
        assert caught.value.retryable and caught.value.code == "upstream_unavailable"
        with pytest.raises(UpstreamError):
            await upstream.stream(CHAT, {"model": "gpt-4o", "messages": HELLO})
    finally:
        await upstream.close()


def test_classify_and_usage_of_edges() -> None:
    quota = orjson.dumps({"error": {"message": "You exceeded your current quota", "type": "insufficient_quota",
                                    "param": None, "code": "insufficient_quota"}})
    error = classify(429, {"Retry-After": "20"}, quota)
    assert error is not None and (error.code, error.retryable) == ("upstream_quota", True)
    policy = orjson.dumps({"error": {"message": "blocked", "type": "invalid_request_error", "param": "prompt",
                                     "code": "moderation_blocked"}})
    error = classify(400, {}, policy)
    assert error is not None and (error.code, error.retryable, error.field) == ("content_policy", False, "prompt")
    error = classify(502, {}, b"<html>Bad gateway</html>")
    assert error is not None and error.retryable and "Bad gateway" in error.message
    error = classify(429, {"retry-after-ms": "1500", "retry-after": "2"}, b"")
    assert error is not None and error.retry_after == 1.5

    assert usage_of(b"data: [DONE]\n\n") is None
    assert usage_of(b"data: {not json\n\n") is None
    assert usage_of(b": keep-alive\n\n") is None
    assert usage_of(b'data: {"choices":[],"usage":null}') is None
    assert usage_of(b'data:{"choices":[],"usage":{"total_tokens":3}}\r\n\r\n') == {"total_tokens": 3}


def _wav(seconds: float, rate: int = 16000) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        frames = (int(8000 * math.sin(2 * math.pi * 440 * i / rate)) for i in range(int(seconds * rate)))
        out.writeframes(b"".join(struct.pack("<h", sample) for sample in frames))
    return buffer.getvalue()
