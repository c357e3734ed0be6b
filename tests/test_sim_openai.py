"""The simulator's OpenAI API (``/v1``), driven by the official ``openai`` SDK over real HTTP.

Only ``base_url`` and ``api_key`` are set on the client, as a relay gateway would; where the SDK hides
the wire (the SSE framing, a dropped stream) plain HTTPX looks at it directly.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Iterator

import av
import httpx
import openai
import pytest
from PIL import Image

from tidehub.sim import STREAM_CUT_MARKER, SimBehaviour, SimServer

from mediacheck import wav
from conftest import wait_for

KEY = "sim-key"
DOWN = "down-key"      # a channel in outage
BUSY = "busy-key"      # every other request is refused with 429
HUNG = "hung-key"      # no request is ever answered
RETRY_AFTER_S = 2

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the SDK marks its Sora methods deprecated


@pytest.fixture(scope="module")
def sim() -> Iterator[SimServer]:
    channels = {
        DOWN: SimBehaviour(outage=True),
        BUSY: SimBehaviour(rate_limit_every=1, rate_limit_burst=1, retry_after_s=RETRY_AFTER_S),
        HUNG: SimBehaviour(hang_rate=1.0),
    }
    with SimServer(time_scale=0.01, api_key=KEY, channels=channels, seed=7) as server:
        yield server


def client_for(sim: SimServer, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{sim.url}/v1", api_key=key, max_retries=0, timeout=30)


@pytest.fixture(scope="module")
def client(sim: SimServer) -> Iterator[openai.OpenAI]:
    with client_for(sim) as sdk:
        yield sdk


def test_models_list(client: openai.OpenAI) -> None:
    models = {model.id: model for model in client.models.list()}
    for name in ("gpt-4", "gpt-4o", "gpt-4o-mini", "gpt-5-mini", "text-embedding-3-small", "text-embedding-3-large",
                 "dall-e-3", "gpt-image-1", "whisper-1", "sora-2", "sora-2-pro"):
        assert models[name].object == "model"
        assert models[name].created > 0 and models[name].owned_by
    assert client.models.retrieve("gpt-4o").id == "gpt-4o"


def test_chat_completion_is_deterministic_and_counts_tokens(client: openai.OpenAI) -> None:
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Explain tides near the harbour, please."}]
    first = client.chat.completions.create(model="gpt-4o", messages=messages, temperature=0.7)
    again = client.chat.completions.create(model="gpt-4o", messages=messages)
    assert first.id.startswith("chatcmpl-") and first.object == "chat.completion" and first.model == "gpt-4o"
    choice = first.choices[0]
    assert choice.message.role == "assistant" and choice.finish_reason == "stop"
    assert "tides" in choice.message.content and "harbour" in choice.message.content
    assert again.choices[0].message.content == choice.message.content
    usage = first.usage
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.prompt_tokens > 10 and usage.completion_tokens > 10

    short = client.chat.completions.create(model="gpt-4o", messages=messages, max_tokens=5)
    assert short.choices[0].finish_reason == "length"
    assert short.usage.completion_tokens == 5
    assert choice.message.content.startswith(short.choices[0].message.content)


def test_chat_stream_through_the_sdk(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "Write about lighthouses and storms."}]
    whole = client.chat.completions.create(model="gpt-4o-mini", messages=messages)
    chunks = list(client.chat.completions.create(
        model="gpt-4o-mini", messages=messages, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content for c in chunks[1:] if c.choices and c.choices[0].delta.content]
    assert "".join(pieces) == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens == len(pieces) == whole.usage.completion_tokens
    assert last.usage.prompt_tokens == whole.usage.prompt_tokens
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)


def test_chat_stream_wire_format_and_cut(sim: SimServer) -> None:
    headers = {"Authorization": f"Bearer {KEY}"}
    body = {"model": "gpt-4", "messages": [{"role": "user", "content": "hello there"}], "stream": True}
    with httpx.stream("POST", f"{sim.url}/v1/chat/completions", json=body, headers=headers, timeout=10) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        events = [line for line in resp.iter_lines() if line]
    assert all(line.startswith("data: ") for line in events)
    assert events[-1] == "data: [DONE]"
    assert '"usage"' not in "".join(events)  # only with stream_options.include_usage

    body["messages"] = [{"role": "user", "content": f"tell a long story {STREAM_CUT_MARKER}"}]
    received: list[str] = []
    with pytest.raises(httpx.RemoteProtocolError):
        with httpx.stream("POST", f"{sim.url}/v1/chat/completions", json=body, headers=headers, timeout=10) as resp:
            assert resp.status_code == 200
            for line in resp.iter_lines():
                received.append(line)
    assert any('"content"' in line for line in received)
    assert "data: [DONE]" not in received


def test_embeddings_with_dimensions(client: openai.OpenAI) -> None:
    full = client.embeddings.create(model="text-embedding-3-small", input="the tide at sunset", encoding_format="float")
    assert len(full.data[0].embedding) == 1536
    assert full.usage.prompt_tokens == full.usage.total_tokens == 4
    short = client.embeddings.create(model="text-embedding-3-small", input=["the tide at sunset", "a quiet evening"],
                                     dimensions=256)  # the SDK asks for base64 and decodes it
    assert [item.index for item in short.data] == [0, 1]
    first = short.data[0].embedding
    assert len(first) == 256
    assert math.isclose(math.hypot(*first), 1.0, rel_tol=1e-5)
    prefix = full.data[0].embedding[:256]
    norm = math.hypot(*prefix)
    assert all(math.isclose(a, b / norm, abs_tol=1e-6) for a, b in zip(first, prefix))
    assert short.data[1].embedding != first
    large = client.embeddings.create(model="text-embedding-3-large", input=[[1, 2, 3]])
    assert len(large.data[0].embedding) == 3072 and large.usage.prompt_tokens == 3


def test_image_generation_url_and_b64(client: openai.OpenAI) -> None:
    result = client.images.generate(model="dall-e-3", prompt="a lighthouse", size="1792x1024")
    assert result.data[0].revised_prompt
    download = httpx.get(result.data[0].url, timeout=30)
    assert download.status_code == 200 and download.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(download.content)).size == (1792, 1024)

    b64 = client.images.generate(model="dall-e-3", prompt="a lighthouse", response_format="b64_json")
    assert Image.open(io.BytesIO(base64.b64decode(b64.data[0].b64_json))).size == (1024, 1024)

    gpt = client.images.generate(model="gpt-image-1", prompt="a boat", size="1024x1536", quality="low", n=2)
    assert len(gpt.data) == 2 and all(item.url is None for item in gpt.data)
    assert Image.open(io.BytesIO(base64.b64decode(gpt.data[1].b64_json))).size == (1024, 1536)
    assert gpt.usage.output_tokens == 2 * 408
    assert gpt.usage.total_tokens == gpt.usage.input_tokens + gpt.usage.output_tokens


def test_image_edit(client: openai.OpenAI) -> None:
    source = io.BytesIO()
    Image.new("RGB", (600, 400), (20, 120, 200)).save(source, format="PNG")
    result = client.images.edit(model="gpt-image-1", image=[("source.png", source.getvalue(), "image/png")],
                                prompt="add a red boat", size="auto", quality="medium")
    edited = Image.open(io.BytesIO(base64.b64decode(result.data[0].b64_json)))
    assert edited.size == (1536, 1024)  # "auto" follows the landscape input
    assert result.usage.input_tokens > 194
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.edit(model="gpt-image-1", image=("notes.txt", b"not an image", "text/plain"), prompt="x")
    assert caught.value.param == "image"


def test_transcription_formats(client: openai.OpenAI) -> None:
    audio = ("speech.wav", wav(2.5), "audio/wav")
    plain = client.audio.transcriptions.create(model="whisper-1", file=audio)
    assert plain.text and plain.text[0].isupper()
    text = client.audio.transcriptions.create(model="whisper-1", file=audio, response_format="text")
    assert isinstance(text, str) and text.strip() == plain.text
    srt = client.audio.transcriptions.create(model="whisper-1", file=audio, response_format="srt")
    assert srt.startswith("1\n00:00:00,000 --> 00:00:0")
    vtt = client.audio.transcriptions.create(model="whisper-1", file=audio, response_format="vtt")
    assert vtt.startswith("WEBVTT\n\n00:00:00.000 --> ")
    verbose = client.audio.transcriptions.create(model="whisper-1", file=audio, response_format="verbose_json",
                                                 timestamp_granularities=["word", "segment"], language="en")
    assert verbose.language == "english" and verbose.text == plain.text
    assert verbose.duration == pytest.approx(2.5, abs=0.05)
    assert verbose.words and verbose.segments
    assert [w.word for w in verbose.words] == plain.text.split()
    assert verbose.words[-1].end <= 2.5 + 0.01 and verbose.segments[-1].end == pytest.approx(2.5, abs=0.05)
    translated = client.audio.translations.create(model="whisper-1", file=audio, response_format="verbose_json")
    assert translated.text == plain.text
    with pytest.raises(openai.BadRequestError) as caught:
        client.audio.transcriptions.create(model="whisper-1", file=("notes.wav", b"not audio at all", "audio/wav"))
    assert caught.value.param == "file"


def test_video_lifecycle(client: openai.OpenAI) -> None:
    video = client.videos.create(prompt="waves on a pier", model="sora-2", seconds="4", size="1280x720")
    assert video.id.startswith("video_") and video.status == "queued" and video.progress == 0
    assert (video.seconds, video.size, video.model) == ("4", "1280x720", "sora-2")
    seen: set[str] = set()

    def finished() -> openai.types.Video | None:
        current = client.videos.retrieve(video.id)
        seen.add(current.status)
        return current if current.status in ("completed", "failed") else None

    done = wait_for(finished, timeout=20, interval=0.05, what="the video to complete")
    assert done.status == "completed" and done.progress == 100 and done.completed_at >= done.created_at
    assert "in_progress" in seen
    content = client.videos.download_content(video.id)
    with av.open(io.BytesIO(content.content)) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.width, stream.codec_context.height) == (1280, 720)
        assert container.duration / 1_000_000 == pytest.approx(4.0, abs=0.2)
    with pytest.raises(openai.NotFoundError):
        client.videos.retrieve("video_0123456789abcdef0123456789abcdef")


def test_video_failure_and_not_ready(client: openai.OpenAI) -> None:
    video = client.videos.create(prompt="[sim:content-policy] a storm", model="sora-2-pro", size="1792x1024")
    with pytest.raises(openai.NotFoundError) as caught:
        client.videos.download_content(video.id)
    assert caught.value.code == "video_not_ready"
    failed = wait_for(lambda: (v := client.videos.retrieve(video.id)).status == "failed" and v, timeout=20)
    assert failed.error.code == "content_policy_violation"


def test_error_envelopes(sim: SimServer, client: openai.OpenAI) -> None:
    with client_for(sim, "wrong-key") as stranger, pytest.raises(openai.AuthenticationError) as caught:
        stranger.models.list()
    assert caught.value.status_code == 401 and caught.value.code == "invalid_api_key"

    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-99", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.code == "model_not_found"

    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=openai.omit)
    assert caught.value.param == "messages" and caught.value.type == "invalid_request_error"

    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "robot", "content": "hi"}])
    assert caught.value.param == "messages[0].role"

    body = {"model": "text-embedding-3-small", "input": "x", "dimensions": 4000}
    raw = httpx.post(f"{sim.url}/v1/embeddings", json=body, headers={"Authorization": f"Bearer {KEY}"})
    assert raw.status_code == 400
    error = raw.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["param"] == "dimensions"


def test_outage_and_rate_limit(sim: SimServer) -> None:
    with client_for(sim, DOWN) as down, pytest.raises(openai.APIStatusError) as caught:
        down.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 503 and caught.value.type == "server_error"

    with client_for(sim, BUSY) as busy:
        busy.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
        with pytest.raises(openai.RateLimitError) as caught:
            busy.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
        assert caught.value.code == "rate_limit_exceeded"
        assert caught.value.response.headers["retry-after"] == str(RETRY_AFTER_S)
        busy.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    stats = sim.runtime.channels.get(BUSY).stats
    assert (stats.rate_limited, stats.accepted) == (1, 2)


def test_hung_channel_holds_until_the_client_gives_up(sim: SimServer) -> None:
    with openai.OpenAI(base_url=f"{sim.url}/v1", api_key=HUNG, max_retries=0, timeout=0.3) as hung:
        with pytest.raises(openai.APITimeoutError):
            hung.models.list()
    stats = sim.runtime.channels.get(HUNG).stats
    assert stats.hangs == 1
    wait_for(lambda: stats.held == 0, timeout=10, what="the held request to be let go")
