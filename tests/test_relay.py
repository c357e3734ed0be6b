"""The OpenAI-compatible relay, driven by the official ``openai`` SDK with only ``base_url`` and
``api_key`` set, under both prefixes; the simulator's OpenAI API is the upstream. Where the SDK
hides the wire (SSE framing, a client leaving mid-stream) plain HTTPX is used."""

from __future__ import annotations

import base64
import io
import math
import secrets
from typing import Any, Iterator

import av
import httpx
import openai
import orjson
import pytest
from PIL import Image

from mediacheck import wav
from conftest import GatewayServer, wait_for
from tidehub.catalog import load_catalog
from tidehub.sim import STREAM_CUT_MARKER

PREFIXES = ["/v1", "/api/relay/v1"]
CATALOG = load_catalog()
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the SDK marks its Sora methods deprecated


def sdk(gateway: GatewayServer, key: str, prefix: str = "/v1") -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + prefix, api_key=key, max_retries=0, timeout=30)


def records(gateway: GatewayServer, key: str, model: str, count: int = 1) -> list[dict[str, Any]]:
    """The key's account's usage records of ``model``, newest first, once there are ``count``
    (relayed calls are written in batches, a few milliseconds after they end)."""
    def listed() -> list[dict[str, Any]] | None:
        with gateway.client(key) as http:
            rows = [r for r in http.get("/ms/v1/usage/records").json()["data"] if r["model"] == model]
        return rows if len(rows) >= count else None

    return wait_for(listed, timeout=10, what=f"{count} usage record(s) of {model}")


def record(gateway: GatewayServer, key: str, model: str, count: int = 1) -> dict[str, Any]:
    """The newest usage record of ``model`` once there are ``count``."""
    return records(gateway, key, model, count)[0]


def settled(gateway: GatewayServer, key: str) -> dict[str, Any]:
    """The account once its credit blocks have been given back (the relay's idle time is short in tests)."""
    return wait_for(lambda: (b := balance(gateway, key))["held"] == 0 and b, timeout=10, what="blocks released")


def balance(gateway: GatewayServer, key: str) -> dict[str, Any]:
    with gateway.client(key) as http:
        return http.get("/ms/v1/account").json()


def tokens_price(model: str, prompt: float, completion: float) -> int:
    return CATALOG.endpoints[f"openai/{model}"].price.tokens(prompt, completion)


@pytest.fixture
def key(gateway: GatewayServer) -> str:
    return gateway.new_key()


@pytest.mark.parametrize("prefix", PREFIXES)
def test_chat_plain_is_charged_its_usage(gateway: GatewayServer, key: str, prefix: str) -> None:
    with sdk(gateway, key, prefix) as client:
        answer = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "你好"}],
                                                temperature=0.7, user="user-7")
    assert answer.object == "chat.completion" and answer.choices[0].message.content
    row = record(gateway, key, "gpt-4o")
    assert row["status"] == "succeeded" and row["user_identifier"] == "user-7"
    assert row["credits_captured"] == tokens_price("gpt-4o", answer.usage.prompt_tokens,
                                                   answer.usage.completion_tokens)
    assert row["credits_held"] >= row["credits_captured"]
    account = settled(gateway, key)
    assert account["spent"] == row["credits_captured"]


@pytest.mark.parametrize("prefix", PREFIXES)
def test_chat_stream_passes_chunks_through_and_meters_usage(gateway: GatewayServer, key: str, prefix: str) -> None:
    messages = [{"role": "user", "content": "Write about lighthouses and storms."}]
    with sdk(gateway, key, prefix) as client:
        whole = client.chat.completions.create(model="gpt-4o-mini", messages=messages)
        chunks = list(client.chat.completions.create(model="gpt-4o-mini", messages=messages, stream=True))
        with_usage = list(client.chat.completions.create(model="gpt-4o-mini", messages=messages, stream=True,
                                                         stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    # The usage chunk Tidehub asked for is not shown to a client that did not ask for it.
    assert all(c.choices for c in chunks) and all(c.usage is None for c in chunks)
    assert with_usage[-1].choices == [] and with_usage[-1].usage.completion_tokens == whole.usage.completion_tokens
    rows = records(gateway, key, "gpt-4o-mini", 3)
    assert {r["status"] for r in rows} == {"succeeded"}
    assert {r["credits_captured"] for r in rows} == {tokens_price("gpt-4o-mini", whole.usage.prompt_tokens,
                                                                 whole.usage.completion_tokens)}


def test_stream_wire_format_ends_with_done(gateway: GatewayServer, key: str) -> None:
    body = {"model": "gpt-4", "messages": [{"role": "user", "content": "你好"}], "stream": True}
    with httpx.stream("POST", f"{gateway.url}/api/relay/v1/chat/completions", json=body,
                      headers={"Authorization": f"Bearer {key}"}, timeout=30) as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in resp.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]" and '"usage"' not in "".join(lines)


def test_client_leaving_mid_stream_pays_for_what_it_received(two_channels: Any) -> None:
    gateway = two_channels({"time_scale": 1.0}, None)  # streams at a real pace: 20 ms a token
    key = gateway.new_key()
    # A long answer (gpt-4 repeats the question's words), read a few chunks of, then abandoned.
    question = "Tell me everything about " + " ".join(f"harbour{i}" for i in range(60))
    body = {"model": "gpt-4", "messages": [{"role": "user", "content": question}], "stream": True}
    received = 0
    with httpx.Client(timeout=30) as http:
        with http.stream("POST", f"{gateway.url}/v1/chat/completions", json=body,
                         headers={"Authorization": f"Bearer {key}"}) as resp:
            for line in resp.iter_lines():
                if '"content":"' in line and '"content":""' not in line:
                    received += 1
                if received == 5:
                    break
    row = wait_for(lambda: (r := record(gateway, key, "gpt-4"))["status"] != "running" and r, what="settlement")
    assert row["status"] == "canceled"
    usage = gateway.gateway.store.tasks.get(row["task_id"])["output"]["usage"]
    full = httpx.post(f"{gateway.url}/v1/chat/completions", json={**body, "stream": False},
                      headers={"Authorization": f"Bearer {key}"}, timeout=30).json()["usage"]
    # Charged for the chunks sent before the server noticed (at least those read, fewer than the
    # whole answer) and the prompt counted at 4 bytes a token, since no usage came.
    assert usage["estimated"] and received <= usage["completion_tokens"] < full["completion_tokens"]
    assert usage["prompt_tokens"] == len(orjson.dumps(body["messages"])) // 4
    assert row["credits_captured"] == tokens_price("gpt-4", usage["prompt_tokens"], usage["completion_tokens"])
    assert settled(gateway, key)["spent"] == row["credits_captured"] + records(gateway, key, "gpt-4", 2)[0]["credits_captured"]


def test_upstream_breaking_mid_stream_costs_nothing(gateway: GatewayServer, key: str) -> None:
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": f"a long story {STREAM_CUT_MARKER}"}],
            "stream": True}
    with httpx.stream("POST", f"{gateway.url}/v1/chat/completions", json=body,
                      headers={"Authorization": f"Bearer {key}"}, timeout=30) as resp:
        lines = [line for line in resp.iter_lines() if line]
    assert any('"content"' in line for line in lines)
    assert '"error"' in lines[-1] and "data: [DONE]" not in lines
    row = record(gateway, key, "gpt-4o")
    assert row["status"] == "failed" and row["credits_captured"] == 0
    with sdk(gateway, key) as client, pytest.raises(openai.APIError):
        for _ in client.chat.completions.create(model="gpt-4o", messages=body["messages"], stream=True):
            pass


def test_embeddings(gateway: GatewayServer, key: str) -> None:
    with sdk(gateway, key, "/api/relay/v1") as client:
        result = client.embeddings.create(model="text-embedding-3-small", input="你好世界")
        short = client.embeddings.create(model="text-embedding-3-large", input=["a", "b"], dimensions=64)
    assert len(result.data[0].embedding) == 1536
    assert len(short.data) == 2 and len(short.data[1].embedding) == 64
    assert math.isclose(math.hypot(*short.data[0].embedding), 1.0, rel_tol=1e-5)
    row = record(gateway, key, "text-embedding-3-small")
    assert row["status"] == "succeeded" and row["credits_captured"] == 1  # a few tokens: the 1-credit minimum


def test_image_generation_is_mirrored_and_priced(gateway: GatewayServer, key: str) -> None:
    with sdk(gateway, key) as client:
        result = client.images.generate(model="dall-e-3", prompt="a cute cat", n=1, size="1792x1024", quality="hd")
        b64 = client.images.generate(model="gpt-image-1", prompt="a boat", size="1024x1536", quality="low", n=2)
    url = result.data[0].url
    assert url.startswith(gateway.url + "/files/") and result.data[0].revised_prompt
    image = Image.open(io.BytesIO(httpx.get(url, timeout=30).content))
    assert image.size == (1792, 1024)
    assert record(gateway, key, "dall-e-3")["credits_captured"] == 36 * 2 * 1.5
    assert len(b64.data) == 2
    assert Image.open(io.BytesIO(base64.b64decode(b64.data[1].b64_json))).size == (1024, 1536)
    assert record(gateway, key, "gpt-image-1")["credits_captured"] == math.ceil(150 * 0.066 * 2)


def test_image_edit_multipart(gateway: GatewayServer, key: str) -> None:
    source = io.BytesIO()
    Image.new("RGB", (600, 400), (20, 120, 200)).save(source, format="PNG")
    with sdk(gateway, key) as client:
        result = client.images.edit(model="gpt-image-1", image=[("source.png", source.getvalue(), "image/png")],
                                    prompt="add a red boat", size="auto", quality="medium")
        assert Image.open(io.BytesIO(base64.b64decode(result.data[0].b64_json))).size == (1536, 1024)
        with pytest.raises(openai.BadRequestError) as caught:
            client.images.edit(model="gpt-image-1", image=("notes.txt", b"not an image", "text/plain"), prompt="x")
    assert caught.value.param == "image"
    rows = records(gateway, key, "gpt-image-1", 2)
    assert [(r["status"], r["credits_captured"]) for r in rows] == [("failed", 0), ("succeeded", math.ceil(150 * 0.25))]


def test_transcriptions_in_every_format_are_charged_by_length(gateway: GatewayServer, key: str) -> None:
    audio = ("speech.wav", wav(90), "audio/wav")  # 1.5 minutes: 5.4 x 1.5 = 8.1 -> 9 credits
    with sdk(gateway, key) as client:
        plain = client.audio.transcriptions.create(model="whisper-1", file=audio)
        assert plain.text
        text = client.audio.transcriptions.create(model="whisper-1", file=audio, response_format="text")
        assert isinstance(text, str) and text.strip() == plain.text
        srt = client.audio.transcriptions.create(model="whisper-1", file=audio, response_format="srt")
        assert srt.startswith("1\n00:00:00,000 --> ")
        vtt = client.audio.transcriptions.create(model="whisper-1", file=audio, response_format="vtt")
        assert vtt.startswith("WEBVTT")
        verbose = client.audio.transcriptions.create(model="whisper-1", file=audio, response_format="verbose_json",
                                                     timestamp_granularities=["word", "segment"], language="en")
        assert verbose.duration == pytest.approx(90, abs=0.1) and verbose.words and verbose.segments
        translated = client.audio.translations.create(model="whisper-1", file=audio)
        assert translated.text == plain.text
        with pytest.raises(openai.BadRequestError) as caught:
            client.audio.transcriptions.create(model="whisper-1", file=("notes.wav", b"not audio", "audio/wav"))
        assert caught.value.param == "file"
    rows = records(gateway, key, "whisper-1", 7)
    assert [r["credits_captured"] for r in rows if r["status"] == "succeeded"] == [9] * 6
    assert [r["credits_captured"] for r in rows if r["status"] == "failed"] == [0]


def test_videos_run_as_tasks(gateway: GatewayServer, key: str) -> None:
    with sdk(gateway, key, "/api/relay/v1") as client:
        video = client.videos.create(prompt="waves on a pier", model="sora-2", seconds="4", size="1280x720")
        assert video.status == "queued" and (video.seconds, video.size, video.model) == ("4", "1280x720", "sora-2")
        with pytest.raises(openai.NotFoundError) as caught:
            client.videos.download_content(video.id)
        assert caught.value.code == "video_not_ready"
        done = wait_for(lambda: (v := client.videos.retrieve(video.id)).status in ("completed", "failed") and v,
                        timeout=60, what="the video")
        assert done.status == "completed" and done.progress == 100
        content = client.videos.download_content(video.id).content
    with av.open(io.BytesIO(content)) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.width, stream.codec_context.height) == (1280, 720)
    # The same task through the MS dialect, charged per second.
    with gateway.client(key) as http:
        task = http.get(f"/ms/v1/tasks/{video.id}").json()
    assert task["status"] == "succeeded" and task["endpoint"] == "openai/sora-2"
    assert record(gateway, key, "sora-2")["credits_captured"] == 90 * 4


def test_models_list_and_retrieve(gateway: GatewayServer, key: str) -> None:
    with sdk(gateway, key) as client:
        names = {m.id for m in client.models.list()}
        assert {"gpt-4", "gpt-4o", "text-embedding-3-small", "dall-e-3", "gpt-image-1", "whisper-1",
                "sora-2"} <= names
        assert "nano-banana" not in names  # fal models are tasks, not relay calls
        assert client.models.retrieve("gpt-4o").id == "gpt-4o"
    limited = gateway.new_key(allowed_models=["gpt-4o"])
    with sdk(gateway, limited) as client:
        assert [m.id for m in client.models.list()] == ["gpt-4o"]
        with pytest.raises(openai.PermissionDeniedError) as caught:
            client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.code == "model_not_allowed"


def test_errors_in_openai_envelope(gateway: GatewayServer, key: str) -> None:
    messages = [{"role": "user", "content": "hi"}]
    with sdk(gateway, "sk-th-wrong") as stranger, pytest.raises(openai.AuthenticationError) as caught:
        stranger.chat.completions.create(model="gpt-4", messages=messages)
    assert caught.value.code == "invalid_api_key" and caught.value.type == "authentication_error"
    with sdk(gateway, key) as client:
        with pytest.raises(openai.NotFoundError) as caught:
            client.chat.completions.create(model="gpt-4x", messages=messages)
        assert caught.value.code == "model_not_found" and "gpt-4" in caught.value.message
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(model="gpt-4", messages=messages, temperature=5)
        assert caught.value.param == "temperature" and caught.value.type == "invalid_request_error"
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(model="gpt-4", messages=[])
        assert caught.value.param == "messages"
        with pytest.raises(openai.BadRequestError) as caught:
            client.videos.create(prompt="x", model="sora-2", seconds="5")
        assert caught.value.param == "seconds"
    poor = gateway.new_key(credits=2)
    with sdk(gateway, poor) as client, pytest.raises(openai.PermissionDeniedError) as caught:
        client.chat.completions.create(model="gpt-4", messages=messages)
    assert caught.value.code == "insufficient_credits"
    assert balance(gateway, poor)["balance"] == 2  # refused before anything was held
    resp = httpx.post(f"{gateway.url}/v1/chat/completions", content=b"{not json",
                      headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "body"


# -- channels: failover and upstream pacing -------------------------------------------------------

def _sim_channel(sim: Any, **knobs: Any) -> str:
    key = f"relay-{secrets.token_hex(4)}"
    assert httpx.put(f"{sim.base_url}/_sim/channels/{key}", json=knobs, timeout=10).status_code < 300
    return key


@pytest.fixture
def two_channels(make_gateway: Any, sim: Any) -> Iterator[Any]:
    def make(first: dict[str, Any], second: dict[str, Any] | None) -> GatewayServer:
        gateway = make_gateway(openai_key="", secret_key="relay-test-secret", more_upstreams=False)
        for priority, knobs in ((10, first), (0, second)):
            if knobs is not None:
                gateway.gateway.channels.add(f"openai-{priority}", adapter="openai", base_url=f"{sim.base_url}/v1",
                                             secret=_sim_channel(sim, **knobs), priority=priority)
        gateway.gateway.router.reload()
        return gateway
    yield make


def test_failover_hides_a_failing_channel(two_channels: Any) -> None:
    gateway = two_channels({"outage": True}, {})
    key = gateway.new_key()
    with sdk(gateway, key) as client:
        for _ in range(3):
            assert client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}]).choices
        chunks = list(client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}],
                                                     stream=True))
    assert chunks and chunks[-1].choices[0].finish_reason == "stop"
    names = {r["id"]: r["name"] for r in gateway.gateway.store.channels.list()}
    with gateway.client(key) as http:
        rows = http.get("/ms/v1/usage/records").json()["data"]
    assert {r["status"] for r in rows} == {"succeeded"}
    assert {names[gateway.gateway.store.tasks.get(r["task_id"])["channel_id"]] for r in rows} == {"openai-0"}


def test_upstream_rate_limit_with_no_alternative_is_a_429(two_channels: Any) -> None:
    gateway = two_channels({"rate_limit_every": 1, "rate_limit_burst": 1, "retry_after_s": 3}, None)
    key = gateway.new_key()
    messages = [{"role": "user", "content": "hi"}]
    with sdk(gateway, key) as client, pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=messages)  # passes; the next is refused
        client.chat.completions.create(model="gpt-4o", messages=messages)
    assert caught.value.response.headers["retry-after"] == "3"
    assert [r["credits_captured"] for r in records(gateway, key, "gpt-4o", 2)] == [0, 1]
    assert settled(gateway, key)["spent"] == 1


def test_chat_runs_as_an_ms_task(client: httpx.Client) -> None:
    resp = client.post("/ms/v1/run/openai/gpt-4o", json={"input": {"messages": [{"role": "user", "content": "hi"}]}})
    assert resp.status_code == 200, resp.text
    task_id = resp.json()["task_id"]
    task = wait_for(lambda: (t := client.get(f"/ms/v1/tasks/{task_id}").json())["status"] == "succeeded" and t,
                    what="chat task")
    usage = task["output"]["usage"]
    assert task["output"]["choices"][0]["message"]["content"]
    row = next(r for r in client.get("/ms/v1/usage/records").json()["data"] if r["task_id"] == task_id)
    assert row["credits_captured"] == tokens_price("gpt-4o", usage["prompt_tokens"], usage["completion_tokens"])
    listed = client.get("/ms/v1/endpoints", params={"capability": "chat"}).json()["data"]
    assert {"openai/gpt-4", "openai/gpt-4o"} <= {e["endpoint"] for e in listed}
    refused = client.post("/ms/v1/run/openai/whisper-1", json={"input": {}})
    assert refused.status_code == 422 and "relay" in refused.json()["error"]["message"]


def test_any_openai_compatible_base_url(make_gateway: Any, sim: Any) -> None:
    """A channel of the plain OpenAI adapter on another server's base URL (here the nexus
    aggregator's OpenAI-compatible /v1, as vLLM or Ollama would be) serves the relay."""
    gateway = make_gateway(openai_key="", secret_key="relay-test-secret", more_upstreams=False)
    gateway.gateway.channels.add("compatible", adapter="openai", base_url=f"{sim.base_url}/nexus/v1", secret="sim-key")
    gateway.gateway.router.reload()
    key = gateway.new_key()
    with sdk(gateway, key) as client:
        answer = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
        streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}], stream=True) if c.choices)
    assert streamed == answer.choices[0].message.content
    row = record(gateway, key, "gpt-4o", 2)
    assert row["channel"] == "openai" and row["credits_captured"] >= 1
