"""The nexus adapter against the simulator's ``/nexus``: its video formats, images, the relay face, and
how nexus's error messages are read. (Midjourney through nexus: ``test_midjourney_adapter.py``.)"""

from __future__ import annotations

import base64
import io
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import av
import httpx
import orjson
import pytest
from PIL import Image

from tidehub.providers import ADAPTERS
from tidehub.core.ports import Job, UpstreamError
from tidehub.providers.nexus import NexusAdapter, refine
from tidehub.sim import CONTENT_POLICY_MARKER, FLAKY_MARKER, SimBehaviour, SimServer
from tidehub.sim.artifacts import render_music
from tidehub.sim.params import MusicSpec

from mediacheck import check_image, probe
from upstream_jobs import refused, run_to_end

KEY = "sim-key"
BUSY = "busy-key"  # every other valid request is refused: the group is "saturated"
DOWN = "down-key"  # an outage
BROKEN = "broken-key"  # every valid request fails with HTTP 500
HUNG = "hung-key"  # no request is answered
RETRY_AFTER_S = 2
CREATE = {"api": "video-create"}
VIDEOS = {"api": "videos"}
IMAGES = {"api": "images"}
CHAT = "/chat/completions"
HELLO = [{"role": "user", "content": "Tell me about tides and the moon."}]


@pytest.fixture(scope="module")
def sim() -> Iterator[SimServer]:
    channels = {BUSY: SimBehaviour(rate_limit_every=1, rate_limit_burst=1, retry_after_s=RETRY_AFTER_S),
                DOWN: SimBehaviour(outage=True), BROKEN: SimBehaviour(submit_error_rate=1.0),
                HUNG: SimBehaviour(hang_rate=1.0, hang_s=5.0)}
    with SimServer(time_scale=0.01, api_key=KEY, channels=channels, seed=13) as server:
        yield server


@pytest.fixture
async def nexus(sim: SimServer) -> AsyncIterator[NexusAdapter]:
    adapter = NexusAdapter(f"{sim.url}/nexus", KEY, timeout_s=20)
    yield adapter
    await adapter.close()


def sent(sim: SimServer, ref: str) -> dict[str, Any]:
    """What the simulated nexus received for a job (its id ends with the sim's job id)."""
    job = sim.runtime.board.get(str(uuid.UUID(hex=re.split(r"[-_]", ref)[-1])))
    assert job is not None, ref
    return dict(job.inputs)


def mp4_facts(data: bytes) -> dict[str, Any]:
    with av.open(io.BytesIO(data)) as container:
        video = next(s for s in container.streams if s.type == "video")
        return {"duration": container.duration / av.time_base, "size": (video.width, video.height),
                "kinds": sorted({s.type for s in container.streams})}


def test_registered_and_base_url() -> None:
    assert ADAPTERS["nexus"] is NexusAdapter
    for given in ("https://api.allapi.store", "https://api.allapi.store/v1/"):
        adapter = NexusAdapter(given, "secret", extra_option=1)
        assert (adapter.root, adapter.base_url) == ("https://api.allapi.store", "https://api.allapi.store/v1")
    assert adapter.auth_headers_for("https://api.allapi.store/v1/videos/video_1/download") == {
        "Authorization": "Bearer secret"}
    assert adapter.auth_headers_for("https://cdn.example.com/video.mp4") == {}


async def test_video_create_veo_from_fal_input(nexus: NexusAdapter, sim: SimServer) -> None:
    first, last = "https://example.com/first.png", "https://example.com/last.png"
    job = await nexus.submit("veo3.1", {
        "prompt": "A lighthouse at dusk", "aspect_ratio": "9:16", "duration": "8s", "resolution": "1080p",
        "generate_audio": False, "negative_prompt": "blur", "first_frame_url": first, "last_frame_url": last,
    }, spec={"model": "veo3.1", **CREATE})
    assert re.fullmatch(r"veo3\.1:\d{10}-[0-9a-f]{32}", job.ref) and job.data == {"api": "video-create"}
    inputs = sent(sim, job.ref)
    assert (inputs["duration"], inputs["aspect_ratio"], inputs["resolution"]) == (8, "9:16", "1080p")
    assert inputs["images"] == [first, last]
    assert "negative_prompt" not in inputs and "generate_audio" in inputs  # the sim's own: always with sound

    state, states = await run_to_end(nexus, job)
    assert state.state == "completed", state.error
    assert {s.state for s in states} <= {"queued", "running", "completed"}
    output = await nexus.result(job)
    url = output["video"]["url"]
    assert output["video"]["content_type"] == "video/mp4" and nexus.auth_headers_for(url) == {}  # a public link
    facts = probe(url)
    assert facts["size"] == (1080, 1920) and abs(facts["duration"] - 8) < 0.5 and facts["kinds"] == ["audio", "video"]


async def test_video_create_sora_from_openai_input(nexus: NexusAdapter, sim: SimServer) -> None:
    job = await nexus.submit("sora-2-all", {"prompt": "A paper boat in the rain", "seconds": "8", "size": "720x1280"},
                             spec=CREATE)
    inputs = sent(sim, job.ref)
    assert (inputs["duration"], inputs["aspect_ratio"]) == (8, "9:16")  # orientation: portrait
    state, _ = await run_to_end(nexus, job)
    assert state.state == "completed", state.error
    facts = probe((await nexus.result(job))["video"]["url"])
    assert facts["size"] == (720, 1280) and abs(facts["duration"] - 8) < 0.5


async def test_videos_in_openai_format_need_the_key_to_download(nexus: NexusAdapter, sim: SimServer) -> None:
    job = await nexus.submit("veo_3_1-fast", {"prompt": "Waves on a pier", "aspect_ratio": "16:9", "duration": "4s"},
                             spec=VIDEOS)
    assert job.ref.startswith("video_") and job.data == {"api": "videos"}
    inputs = sent(sim, job.ref)
    assert (inputs["size"], inputs["duration"]) == ("16x9", 4)
    state, _ = await run_to_end(nexus, job)
    assert state.state == "completed", state.error
    url = (await nexus.result(job))["video"]["url"]
    assert url == f"{sim.url}/nexus/v1/videos/{job.ref}/download"
    headers = nexus.auth_headers_for(url)
    assert headers == {"Authorization": f"Bearer {KEY}"}
    async with httpx.AsyncClient(timeout=20) as client:
        assert (await client.get(url)).status_code == 401
        video = await client.get(url, headers=headers)
    assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"
    facts = mp4_facts(video.content)
    assert facts["size"] == (1280, 720) and abs(facts["duration"] - 4) < 0.5

    # sora-2 on /v1/videos is OpenAI's own format, passed through.
    sora = await nexus.submit("sora-2", {"prompt": "A kite", "seconds": 4, "size": "1280x720"}, spec=VIDEOS)
    assert (await run_to_end(nexus, sora))[0].state == "completed"
    image = {"prompt": "x", "image_url": "https://example.com/a.png"}
    error = await refused(nexus.submit("veo_3_1-fast", image, spec=VIDEOS))
    assert (error.code, error.retryable) == ("model_unavailable", True)


@pytest.mark.parametrize("model, size", [("flux-dev", (1024, 768)), ("doubao-seedream-4-0-250828", (1024, 1024))])
async def test_images_flux_and_doubao(nexus: NexusAdapter, model: str, size: tuple[int, int]) -> None:
    payload = {"prompt": "A fox in the snow", "size": "1024x768"} if model == "flux-dev" else {"prompt": "A fox"}
    job = await nexus.submit(model, payload, spec=IMAGES)
    assert job.data["api"] == "images" and (await nexus.status(job)).state == "completed"
    output = await nexus.result(job)
    assert len(output["images"]) == 1
    assert check_image(output["images"][0]).size == size


async def test_images_dall_e_and_gpt_image(nexus: NexusAdapter) -> None:
    output = await nexus.result(await nexus.submit("dall-e-3", {"prompt": "A red kite", "quality": "hd"}, spec=IMAGES))
    image = output["images"][0]
    assert image["revised_prompt"] and check_image(image).size == (1024, 1024)

    output = await nexus.result(await nexus.submit("gpt-image-1", {"prompt": "A red kite"}, spec=IMAGES))
    url = output["images"][0]["url"]
    assert url.startswith("data:image/png;base64,") and output["usage"]["output_tokens"] > 0
    with Image.open(io.BytesIO(base64.b64decode(url.partition(",")[2]))) as decoded:
        assert decoded.format == "PNG" and decoded.size == (1024, 1024)


async def test_chat_and_embeddings_through_the_relay_face(nexus: NexusAdapter) -> None:
    status, headers, raw = await nexus.call(CHAT, {"model": "gpt-4o", "messages": HELLO})
    assert status == 200 and nexus.classify(status, headers, raw) is None
    text = orjson.loads(raw)["choices"][0]["message"]["content"]
    assert "tides" in text

    events = await nexus.stream(CHAT, {"model": "gpt-4o", "messages": HELLO, "stream_options": {"include_usage": True}})
    async with events:
        received = [event async for event in events]
    assert received[-1] == b"data: [DONE]\n\n"
    streamed = "".join(orjson.loads(e[6:])["choices"][0]["delta"].get("content") or "" for e in received[:-2])
    assert streamed == text and nexus.usage_of(received[-2])["completion_tokens"] > 0

    status, _, raw = await nexus.call("/embeddings", {"model": "text-embedding-3-small", "input": ["a", "b"],
                                                      "dimensions": 32})
    assert status == 200 and [len(d["embedding"]) for d in orjson.loads(raw)["data"]] == [32, 32]

    job = await nexus.submit("gpt-4o-mini", {"messages": HELLO}, spec={"api": "chat"})
    assert (await nexus.status(job)).state == "completed"
    assert (await nexus.result(job))["choices"][0]["message"]["content"]
    status, _, raw = await nexus.call("/models", method="GET")
    assert status == 200 and any(m["id"] == "gpt-4o" for m in orjson.loads(raw)["data"])


async def test_transcription_through_the_relay_face(nexus: NexusAdapter, tmp_path: Path) -> None:
    audio = tmp_path / "speech.wav"
    render_music(MusicSpec(seconds=1.5, container="wav", codec="pcm_s16le", sample_rate=16000, bit_rate=None,
                           seed=3), audio)
    form = aiohttp.FormData()
    form.add_field("model", "whisper-1")
    form.add_field("response_format", "verbose_json")
    form.add_field("file", audio.read_bytes(), filename="speech.wav", content_type="audio/wav")
    status, _, raw = await nexus.call("/audio/transcriptions", form=form)
    body = orjson.loads(raw)
    assert status == 200 and body["text"] and abs(body["duration"] - 1.5) < 0.05


async def test_saturated_group_is_retryable(sim: SimServer) -> None:
    busy = NexusAdapter(f"{sim.url}/nexus", BUSY)
    try:
        await busy.submit("flux-schnell", {"prompt": "a"}, spec=IMAGES)
        error = await refused(busy.submit("flux-schnell", {"prompt": "a"}, spec=IMAGES))
        assert (error.code, error.retryable, error.status, error.retry_after) == (
            "upstream_saturated", True, 429, RETRY_AFTER_S)
        assert "当前分组上游负载已饱和" in error.message and error.message.startswith("nexus: ")

        assert (await busy.call(CHAT, {"model": "gpt-4o", "messages": HELLO}))[0] == 200
        status, headers, raw = await busy.call(CHAT, {"model": "gpt-4o", "messages": HELLO})
        error = busy.classify(status, headers, raw)
        assert status == 429 and error is not None and (error.code, error.retryable) == ("upstream_saturated", True)
        await busy.call(CHAT, {"model": "gpt-4o", "messages": HELLO})
        error = await refused(busy.stream(CHAT, {"model": "gpt-4o", "messages": HELLO}))
        assert error.code == "upstream_saturated"
    finally:
        await busy.close()


async def test_model_not_found_may_be_served_elsewhere(nexus: NexusAdapter) -> None:
    error = await refused(nexus.submit("veo9-ultra", {"prompt": "waves", "duration": "8s"}, spec=CREATE))
    assert (error.code, error.retryable, error.field) == ("upstream_not_found", True, None)
    assert "model not found" in error.message

    status, headers, raw = await nexus.call(CHAT, {"model": "gpt-17", "messages": HELLO})
    assert status == 400 and "model not found" in orjson.loads(raw)["error"]["message"]  # passed through as is
    error = nexus.classify(status, headers, raw)
    assert error is not None and (error.code, error.retryable) == ("upstream_not_found", True)


async def test_content_policy_is_permanent(nexus: NexusAdapter) -> None:
    storm = f"A storm {CONTENT_POLICY_MARKER}"
    error = await refused(nexus.submit("flux-pro", {"prompt": storm}, spec=IMAGES))
    assert (error.code, error.retryable, error.field) == ("content_policy", False, "input.prompt")

    for model, payload, spec in (("veo3-fast", {"prompt": storm, "duration": "8s"}, CREATE),
                                 ("veo_3_1", {"prompt": storm}, VIDEOS)):
        state, _ = await run_to_end(nexus, await nexus.submit(model, payload, spec=spec))
        assert state.state == "failed" and state.error is not None, model
        assert (state.error.code, state.error.retryable) == ("content_policy", False), state.error.message
        assert "content policy violation" in state.error.message


async def test_a_timed_out_run_is_retryable(nexus: NexusAdapter) -> None:
    job = await nexus.submit("veo3.1-fast", {"prompt": f"Rain {FLAKY_MARKER} {uuid.uuid4()}"}, spec=CREATE)
    state, _ = await run_to_end(nexus, job)
    assert state.state == "failed" and state.error is not None
    assert (state.error.code, state.error.retryable) == ("upstream_timeout", True)
    assert state.error.message.startswith("nexus: timeout")


@pytest.mark.parametrize("model, payload, field", [
    ("veo3.1-fast", {"prompt": "waves", "duration": "4s"}, "input.duration"),  # nexus: 5-10 s
    ("sora-2-all", {"prompt": "waves", "seconds": "4"}, "input.seconds"),  # nexus: 5-20 s
    ("veo3.1", {"prompt": "waves", "image_url": "not a url"}, "input.image_url"),
    ("veo3.1", {"prompt": ""}, "input.prompt"),
])
async def test_invalid_input_names_the_catalog_field(nexus: NexusAdapter, model: str, payload: dict[str, Any],
                                                     field: str) -> None:
    error = await refused(nexus.submit(model, payload, spec=CREATE))
    assert (error.code, error.retryable, error.status) == ("invalid_input", False, 400)
    assert error.field == field, error.message


async def test_outage_server_error_hang_and_bad_key(sim: SimServer) -> None:
    down, broken = NexusAdapter(f"{sim.url}/nexus", DOWN), NexusAdapter(f"{sim.url}/nexus", BROKEN)
    hung = NexusAdapter(f"{sim.url}/nexus", HUNG, timeout_s=0.5)
    wrong = NexusAdapter(f"{sim.url}/nexus", "no-such-key")
    try:
        error = await refused(down.submit("veo3.1", {"prompt": "waves"}, spec=CREATE))
        assert (error.status, error.retryable) == (503, True)
        status, headers, raw = await down.call(CHAT, {"model": "gpt-4o", "messages": HELLO})
        error = down.classify(status, headers, raw)
        assert status == 503 and error is not None and error.retryable

        error = await refused(broken.submit("veo3.1", {"prompt": "waves"}, spec=CREATE))
        assert (error.code, error.status, error.retryable) == ("upstream_error", 500, True)
        assert "HTTP 500 Internal Server Error" in error.message

        error = await refused(hung.submit("veo3.1", {"prompt": "waves"}, spec=CREATE))
        assert (error.code, error.retryable) == ("upstream_timeout", True)

        error = await refused(wrong.submit("dall-e-3", {"prompt": "waves"}, spec=IMAGES))
        assert (error.code, error.retryable) == ("upstream_auth", True)
    finally:
        for adapter in (down, broken, hung, wrong):
            await adapter.close()


async def test_transport_failure_is_retryable() -> None:
    adapter = NexusAdapter("http://127.0.0.1:9", KEY, timeout_s=2)
    try:
        error = await refused(adapter.submit("veo3.1", {"prompt": "waves"}, spec=CREATE))
        assert error.retryable and error.code == "upstream_unavailable"
        assert error.message.startswith("nexus unreachable")
    finally:
        await adapter.close()


async def test_cancel_and_callbacks(nexus: NexusAdapter) -> None:
    await nexus.cancel(Job("veo3.1:1-0123456789abcdef0123456789abcdef", {"api": "video-create"}))  # no cancel there
    await nexus.cancel(Job("video_0123456789abcdef0123456789abcdef", {"api": "videos"}))  # unknown: nothing to stop
    assert await nexus.verify_callback({}, b'{"id": "1730000000000001", "status": "SUCCESS"}') == "1730000000000001"
    error = await refused(nexus.verify_callback({}, b"not json"))
    assert error.code == "bad_callback"
    error = await refused(nexus.submit("veo3.1", {"prompt": "waves"}, spec={"api": "luma"}))
    assert error.code == "model_unavailable"


def test_refine_reads_nexus_messages() -> None:
    def body(message: str) -> bytes:
        return orjson.dumps({"error": {"message": message, "type": "new_api_error", "param": "", "code": None}})

    saturated = NexusAdapter.classify(503, {"Retry-After": "7"}, body("当前分组上游负载已饱和，请稍后再试 (request id: 1)"))
    assert saturated is not None and (saturated.code, saturated.retryable, saturated.retry_after) == (
        "upstream_saturated", True, 7)
    policy = NexusAdapter.classify(400, {}, body("content policy violation"))
    assert policy is not None and (policy.code, policy.retryable) == ("content_policy", False)
    missing = NexusAdapter.classify(404, {}, body("model not found"))
    assert missing is not None and (missing.code, missing.retryable) == ("upstream_not_found", True)
    bad = NexusAdapter.classify(400, {}, body("Invalid 'timeout_s': expected a number"))
    assert bad is not None and (bad.code, bad.retryable) == ("invalid_input", False)  # "timeout" in a field name
    assert NexusAdapter.classify(200, {}, b"{}") is None
    plain = UpstreamError("nexus: something odd", code="upstream_error", retryable=True)
    assert refine(plain) is plain
