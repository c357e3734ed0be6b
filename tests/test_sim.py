"""The upstream simulator, exercised as the gateway's fal adapter will: over real HTTP.

A private catalog (written to a temp dir below) pins the timings so the phases are observable at a
small time scale, independent of the shipped catalog's figures.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import av
import pytest
import yaml
from PIL import Image

from tidehub.sim import SimServer, SimSettings
from tidehub.sim.settings import BUILTIN_CATALOG_DIR
from simcatalog import PROMPT_ONLY, sim_endpoint

TIME_SCALE = 0.02
KEY = {"Authorization": "Key sim-key"}
T = TypeVar("T")

CATALOG = {
    "vendor": "test",
    "endpoints": [
        sim_endpoint("fal-ai/nano-banana-2", "image", 40, 20, {
            "type": "object",
            "required": ["prompt"],
            "properties": {
                "prompt": {"type": "string"},
                "num_images": {"type": "integer", "default": 1},
                "resolution": {"type": "string", "default": "1K"},
                "aspect_ratio": {"type": "string", "default": "auto"},
                "output_format": {"type": "string", "default": "png"},
            },
        }),
        sim_endpoint("openai/gpt-image-2", "image", 1, 2, {
            "type": "object",
            "required": ["prompt"],
            "properties": {
                "prompt": {"type": "string"},
                "image_size": {"default": "landscape_4_3", "oneOf": [{"type": "string"}, {"type": "object"}]},
                "output_format": {"type": "string"},
            },
        }),
        sim_endpoint("fal-ai/veo3.1/fast/image-to-video", "video", 1, 5, {
            "type": "object",
            "required": ["prompt", "image_url"],
            "properties": {
                "prompt": {"type": "string"},
                "image_url": {"type": "string"},
                "duration": {"type": "string", "default": "8s"},
                "resolution": {"type": "string", "default": "720p"},
                "generate_audio": {"type": "boolean", "default": True},
            },
        }),
        sim_endpoint("fal-ai/kling-video/v3/pro/text-to-video", "video", 1, 5, {
            "type": "object",
            "anyOf": [{"required": ["prompt"]}, {"required": ["multi_prompt"]}],
            "properties": {
                "prompt": {"type": "string"},
                "multi_prompt": {"type": "array"},
                "duration": {"type": "string", "default": "5"},
                "aspect_ratio": {"type": "string", "default": "16:9"},
                "generate_audio": {"type": "boolean", "default": True},
            },
        }),
        sim_endpoint("fal-ai/wan/v2.7/text-to-video", "video", 1, 5, PROMPT_ONLY),
        # Never leaves the queue within a test: for cancelling queued requests.
        sim_endpoint("fal-ai/veo3.1", "video", 50_000, 50_000, PROMPT_ONLY),
        sim_endpoint("fal-ai/elevenlabs/music", "audio", 1, 2, {
            "type": "object",
            "anyOf": [{"required": ["prompt"]}, {"required": ["composition_plan"]}],
            "properties": {
                "prompt": {"type": "string"},
                "music_length_ms": {"type": "integer"},
                "output_format": {"type": "string", "default": "mp3_44100_128"},
            },
        }),
        sim_endpoint("fal-ai/wizper", "transcribe", 1, 2, {
            "type": "object",
            "required": ["audio_url"],
            "properties": {
                "audio_url": {"type": "string"}, "chunk_level": {"type": "string"}, "language": {"type": "string"},
            },
        }),
        {   # The Tidehub field `timestamps` travels to fal as `chunk_level`.
            **sim_endpoint("fal-ai/whisper", "transcribe", 1, 2, {
                "type": "object",
                "required": ["audio_url"],
                "properties": {"audio_url": {"type": "string"}, "timestamps": {"type": "string", "default": "segment"}},
            }),
            "upstream": {"fal": {"model": "fal-ai/whisper", "rename": {"timestamps": "chunk_level"}}},
        },
    ],
}


@pytest.fixture(scope="module")
def catalog_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("sim-catalog")
    (directory / "test.yaml").write_text(yaml.safe_dump(CATALOG))
    return directory


@pytest.fixture(scope="module")
def sim(catalog_dir: Path) -> Iterator[SimServer]:
    settings = SimSettings(
        port=0, time_scale=TIME_SCALE, catalog_dirs=[catalog_dir], include_builtin_catalog=False, seed=7
    )
    with SimServer(settings) as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(headers=KEY) as session:
        yield session


async def eventually(check: Callable[[], Awaitable[T | None]], timeout: float = 20.0, what: str = "condition") -> T:
    """Poll ``check`` until it returns something truthy; fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def submit(http: aiohttp.ClientSession, sim: SimServer, model: str, body: dict[str, Any]) -> dict[str, Any]:
    async with http.post(f"{sim.url}/{model}", json=body) as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def wait_completed(
    http: aiohttp.ClientSession, submitted: dict[str, Any], timeout: float = 30.0
) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        async with http.get(submitted["status_url"]) as response:
            body = await response.json()
            if body["status"] == "COMPLETED":
                assert response.status == 200
                return body
            assert response.status == 202
            return None

    return await eventually(check, timeout, f"{submitted['request_id']} to complete")


async def run(http: aiohttp.ClientSession, sim: SimServer, model: str, body: dict[str, Any]) -> dict[str, Any]:
    """Submit, wait for completion, return the result JSON."""
    submitted = await submit(http, sim, model, body)
    await wait_completed(http, submitted)
    async with http.get(submitted["response_url"]) as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def download(http: aiohttp.ClientSession, url: str) -> tuple[bytes, str]:
    async with http.get(url) as response:
        assert response.status == 200
        return await response.read(), response.headers["Content-Type"]


def probe(data: bytes) -> av.container.InputContainer:
    return av.open(io.BytesIO(data))


# --- lifecycle -------------------------------------------------------------------------------------

async def test_image_request_goes_through_queue_run_and_completion(sim: SimServer, http: aiohttp.ClientSession) -> None:
    body = {
        "prompt": "a lighthouse", "resolution": "2K", "aspect_ratio": "16:9", "num_images": 2, "output_format": "webp"
    }
    submitted = await submit(http, sim, "fal-ai/nano-banana-2", body)
    assert submitted["status"] == "IN_QUEUE"
    assert isinstance(submitted["queue_position"], int)
    base = f"{sim.url}/fal-ai/nano-banana-2/requests/{submitted['request_id']}"
    urls = (submitted["response_url"], submitted["status_url"], submitted["cancel_url"])
    assert urls == (base, f"{base}/status", f"{base}/cancel")

    seen: list[str] = []

    async def completed() -> dict[str, Any] | None:
        async with http.get(submitted["status_url"], params={"logs": "1"}) as response:
            status = await response.json()
        if not seen or seen[-1] != status["status"]:
            seen.append(status["status"])
        if status["status"] == "IN_QUEUE":
            assert response.status == 202 and status["queue_position"] >= 0
        if status["status"] == "IN_PROGRESS":
            assert response.status == 202 and status["response_url"] == base
            assert all({"message", "level", "source", "timestamp"} <= set(log) for log in status["logs"])
        return status if status["status"] == "COMPLETED" else None

    status = await eventually(completed, what="the image request to complete")
    assert seen == ["IN_QUEUE", "IN_PROGRESS", "COMPLETED"]
    assert status["metrics"]["inference_time"] > 0 and "error" not in status
    assert status["logs"][-1]["message"].startswith("Completed")

    async with http.get(submitted["response_url"]) as response:
        assert response.status == 200
        result = await response.json()
    assert len(result["images"]) == 2 and "description" in result
    for image in result["images"]:
        data, content_type = await download(http, image["url"])
        decoded = Image.open(io.BytesIO(data))
        assert (decoded.format, content_type) == ("WEBP", "image/webp")
        assert decoded.size == (image["width"], image["height"]) == (2728, 1536)  # 2K total pixels at 16:9
        assert image["content_type"] == "image/webp" and image["url"].endswith(image["file_name"])


async def test_result_before_completion_is_refused(sim: SimServer, http: aiohttp.ClientSession) -> None:
    submitted = await submit(http, sim, "fal-ai/veo3.1", {"prompt": "slow"})
    async with http.get(submitted["response_url"]) as response:
        assert response.status == 400
        assert await response.json() == {"detail": "Request is still in progress"}


async def test_queue_position_counts_requests_ahead_and_falls(sim: SimServer, http: aiohttp.ClientSession) -> None:
    sim.runtime.behaviour.jitter = 0.0  # equal queue times: each request leaves right after the one before
    try:
        batch = [await submit(http, sim, "fal-ai/nano-banana-2", {"prompt": f"queue {i}"}) for i in range(4)]
    finally:
        sim.runtime.behaviour.jitter = 0.3
    positions = [item["queue_position"] for item in batch]
    assert positions == sorted(positions) and positions[-1] >= 1

    async def fell() -> bool:
        async with http.get(batch[-1]["status_url"]) as response:
            status = await response.json()
        return status["status"] != "IN_QUEUE" or status["queue_position"] < positions[-1]

    await eventually(fell, what="the last request's queue position to fall")


# --- media ------------------------------------------------------------------------------------------

async def test_gpt_image_sizes_and_formats(sim: SimServer, http: aiohttp.ClientSession) -> None:
    body = {"prompt": "poster", "image_size": "portrait_16_9", "output_format": "jpeg"}
    preset = await run(http, sim, "openai/gpt-image-2", body)
    data, content_type = await download(http, preset["images"][0]["url"])
    assert content_type == "image/jpeg"
    assert Image.open(io.BytesIO(data)).size == (576, 1024)

    body = {"prompt": "poster", "image_size": {"width": 1536, "height": 640}}
    custom = await run(http, sim, "openai/gpt-image-2", body)
    data, content_type = await download(http, custom["images"][0]["url"])
    decoded = Image.open(io.BytesIO(data))
    assert (decoded.format, content_type, decoded.size) == ("PNG", "image/png", (1536, 640))

    default = await run(http, sim, "openai/gpt-image-2", {"prompt": "poster"})
    assert (default["images"][0]["width"], default["images"][0]["height"]) == (1024, 768)


async def test_video_has_requested_duration_size_and_audio(sim: SimServer, http: aiohttp.ClientSession) -> None:
    submitted = await submit(http, sim, "fal-ai/veo3.1/fast/image-to-video",
                             {"prompt": "waves", "image_url": "https://example.com/a.png", "duration": "4s"})
    assert submitted["status_url"].startswith(f"{sim.url}/fal-ai/veo3.1/requests/")  # subpath dropped
    await wait_completed(http, submitted)
    async with http.get(submitted["response_url"]) as response:
        video = (await response.json())["video"]
    data, content_type = await download(http, video["url"])
    assert content_type == video["content_type"] == "video/mp4" and video["file_size"] == len(data)
    with probe(data) as container:
        assert abs(container.duration / 1e6 - 4) < 0.5
        stream = container.streams.video[0]
        assert (stream.codec_context.name, stream.width, stream.height) == ("h264", 1280, 720)
        assert len(container.streams.audio) == 1  # veo generates audio by default

    silent = await run(http, sim, "fal-ai/kling-video/v3/pro/text-to-video",
                       {"prompt": "city", "duration": "3", "aspect_ratio": "9:16", "generate_audio": False})
    data, _ = await download(http, silent["video"]["url"])
    with probe(data) as container:
        assert abs(container.duration / 1e6 - 3) < 0.5
        assert (container.streams.video[0].width, container.streams.video[0].height) == (720, 1280)
        assert len(container.streams.audio) == 0

    wan = await run(http, sim, "fal-ai/wan/v2.7/text-to-video", {"prompt": "forest", "duration": 2, "seed": 42})
    assert wan["seed"] == 42
    assert (wan["video"]["duration"], wan["video"]["fps"]) == (2, wan["video"]["num_frames"] // 2)


async def test_music_length_and_format(sim: SimServer, http: aiohttp.ClientSession) -> None:
    mp3 = await run(http, sim, "fal-ai/elevenlabs/music", {"prompt": "sea shanty", "music_length_ms": 4000})
    data, content_type = await download(http, mp3["audio"]["url"])
    assert content_type == "audio/mpeg"
    with probe(data) as container:
        assert container.streams.audio[0].codec_context.name.startswith("mp3")
        assert abs(container.duration / 1e6 - 4) < 0.5

    wav = await run(http, sim, "fal-ai/elevenlabs/music",
                    {"prompt": "sea shanty", "music_length_ms": 3000, "output_format": "pcm_16000"})
    data, content_type = await download(http, wav["audio"]["url"])
    assert content_type == "audio/wav"
    with probe(data) as container:
        assert container.streams.audio[0].sample_rate == 16000
        assert abs(container.duration / 1e6 - 3) < 0.5


async def test_transcription_of_a_local_file_uses_its_real_duration(
    sim: SimServer, http: aiohttp.ClientSession
) -> None:
    music = await run(http, sim, "fal-ai/elevenlabs/music", {"prompt": "speech-like", "music_length_ms": 7000})
    transcript = await run(http, sim, "fal-ai/wizper", {"audio_url": music["audio"]["url"], "chunk_level": "word"})
    assert transcript["languages"] == ["en"] and transcript["text"]
    words = transcript["chunks"]
    assert len(words) == len(transcript["text"].split())
    assert all(len(chunk["text"].split()) == 1 for chunk in words)
    starts = [chunk["timestamp"][0] for chunk in words]
    assert starts == sorted(starts)
    assert abs(words[-1]["timestamp"][1] - 7.0) < 0.5


async def test_transcription_of_a_remote_file_is_plausible_and_stable(
    sim: SimServer, http: aiohttp.ClientSession
) -> None:
    body = {"audio_url": "https://example.com/interview.mp3", "chunk_level": "segment"}
    first = await run(http, sim, "fal-ai/whisper", body)
    assert 5 <= first["chunks"][-1]["timestamp"][1] <= 30.5
    assert all(chunk["text"].strip().endswith(".") for chunk in first["chunks"])
    assert await run(http, sim, "fal-ai/whisper", body) == first


async def test_unreachable_local_audio_fails_the_run(sim: SimServer, http: aiohttp.ClientSession) -> None:
    submitted = await submit(http, sim, "fal-ai/wizper", {"audio_url": f"{sim.url}/files/nope/missing.mp3"})
    status = await wait_completed(http, submitted)
    assert status["error_type"] == "file_download_error" and status["error"]
    async with http.get(submitted["response_url"]) as response:
        assert response.status == 422
        assert response.headers["X-Fal-Error-Type"] == "file_download_error"
        body = await response.json()
    assert body["detail"][0]["loc"] == ["body", "audio_url"]


# --- errors -------------------------------------------------------------------------------------

async def test_bad_or_missing_key_is_401(sim: SimServer) -> None:
    async with aiohttp.ClientSession() as anonymous:
        for headers in ({}, {"Authorization": "Key wrong"}, {"Authorization": "Bearer sim-key"}):
            submit_url = f"{sim.url}/fal-ai/nano-banana-2"
            async with anonymous.post(submit_url, json={"prompt": "x"}, headers=headers) as response:
                assert response.status == 401
                assert "detail" in await response.json()
            async with anonymous.get(f"{sim.url}/fal-ai/nano-banana-2/requests/x/status", headers=headers) as response:
                assert response.status == 401


async def test_unknown_model_and_request_are_404(sim: SimServer, http: aiohttp.ClientSession) -> None:
    async with http.post(f"{sim.url}/fal-ai/no-such-model", json={"prompt": "x"}) as response:
        assert response.status == 404
    for suffix in ("/status", "", "/cancel"):
        method = http.put if suffix == "/cancel" else http.get
        unknown = f"{sim.url}/fal-ai/nano-banana-2/requests/00000000-0000-0000-0000-000000000000{suffix}"
        async with method(unknown) as response:
            assert response.status == 404
    submitted = await submit(http, sim, "fal-ai/nano-banana-2", {"prompt": "x"})
    async with http.get(f"{sim.url}/fal-ai/veo3.1/requests/{submitted['request_id']}/status") as response:
        assert response.status == 404  # a request id is only known under its own app


async def test_invalid_input_is_422_with_field_location(sim: SimServer, http: aiohttp.ClientSession) -> None:
    async def detail(model: str, body: Any) -> list[dict[str, Any]]:
        async with http.post(f"{sim.url}/{model}", json=body) as response:
            assert response.status == 422
            return (await response.json())["detail"]

    assert await detail("fal-ai/nano-banana-2", {"num_images": 1}) == [
        {"loc": ["body", "prompt"], "msg": "field required", "type": "missing"}
    ]
    wrong_type = await detail("fal-ai/nano-banana-2", {"prompt": "x", "num_images": "two"})
    assert wrong_type[0]["loc"] == ["body", "num_images"] and wrong_type[0]["type"] == "int_type"
    neither = await detail("fal-ai/kling-video/v3/pro/text-to-video", {"duration": "5"})
    assert neither[0]["loc"] == ["body", "prompt"] and neither[0]["type"] == "missing"
    await detail("fal-ai/nano-banana-2", ["not", "an", "object"])
    # The sim checks fal's field names: the renamed Tidehub field arrives as `chunk_level`.
    renamed = await submit(http, sim, "fal-ai/whisper", {"audio_url": "https://e.com/a.wav", "chunk_level": "word"})
    assert renamed["status"] == "IN_QUEUE"


# --- cancel -------------------------------------------------------------------------------------

async def test_cancel_while_queued_ends_without_output(sim: SimServer, http: aiohttp.ClientSession) -> None:
    submitted = await submit(http, sim, "fal-ai/veo3.1", {"prompt": "never runs"})
    async with http.put(submitted["cancel_url"]) as response:
        assert (response.status, await response.json()) == (202, {"status": "CANCELLATION_REQUESTED"})
    status = await wait_completed(http, submitted, timeout=5)
    assert status["error_type"] == "request_cancelled"
    async with http.get(submitted["response_url"]) as response:
        assert response.status == 400
        assert response.headers["X-Fal-Error-Type"] == "request_cancelled"
        assert (await response.json())["error_type"] == "request_cancelled"
    job = sim.runtime.board.get(submitted["request_id"])
    assert job is not None and job.output is None and job.production is None
    async with http.put(submitted["cancel_url"]) as response:
        assert (response.status, await response.json()) == (400, {"status": "ALREADY_COMPLETED"})


async def test_cancel_after_completion_is_refused(sim: SimServer, http: aiohttp.ClientSession) -> None:
    submitted = await submit(http, sim, "openai/gpt-image-2", {"prompt": "done"})
    await wait_completed(http, submitted)
    async with http.put(submitted["cancel_url"]) as response:
        assert (response.status, await response.json()) == (400, {"status": "ALREADY_COMPLETED"})
    async with http.get(submitted["response_url"]) as response:
        assert response.status == 200 and (await response.json())["images"]


# --- files --------------------------------------------------------------------------------------

async def test_identical_requests_share_one_rendered_file(sim: SimServer, http: aiohttp.ClientSession) -> None:
    body = {"prompt": "the same picture", "output_format": "png"}
    batch = await asyncio.gather(*(submit(http, sim, "fal-ai/nano-banana-2", body) for _ in range(25)))
    results = []
    for submitted in batch:
        await wait_completed(http, submitted)
        async with http.get(submitted["response_url"]) as response:
            results.append((await response.json())["images"][0])
    assert len({image["url"] for image in results}) == len(results)  # each request has its own link
    # Every link resolves to the same stored file object: rendered once (a re-render makes a new one).
    stored = [sim.runtime.files.lookup(*image["url"].rsplit("/", 2)[1:]) for image in results]
    assert all(file is not None for file in stored) and len({id(file) for file in stored}) == 1
    contents = {(await download(http, image["url"]))[0] for image in results[:3]}
    assert len(contents) == 1


async def test_files_expire(catalog_dir: Path, http: aiohttp.ClientSession) -> None:
    settings = SimSettings(
        port=0, time_scale=TIME_SCALE, file_ttl_s=0.5, catalog_dirs=[catalog_dir], include_builtin_catalog=False
    )
    with SimServer(settings) as short_lived:
        result = await run(http, short_lived, "openai/gpt-image-2", {"prompt": "ephemeral"})
        url = result["images"][0]["url"]
        path = short_lived.runtime.files.lookup(*url.rsplit("/", 2)[1:]).path
        assert path.exists()

        async def gone() -> bool:
            async with http.get(url) as response:
                return response.status == 404

        await eventually(gone, timeout=10, what="the file link to expire")
        await eventually(lambda: _async(not path.exists()), timeout=10, what="the expired file to be deleted")


async def _async(value: T) -> T:
    return value


# --- the shipped catalog ----------------------------------------------------------------------------

def _shipped_examples() -> list[tuple[str, dict[str, Any]]]:
    cases = []
    for path in sorted(BUILTIN_CATALOG_DIR.glob("*.yaml")):
        for endpoint in (yaml.safe_load(path.read_text()) or {}).get("endpoints") or []:
            fal = (endpoint.get("upstream") or {}).get("fal")
            if fal is None:
                continue  # served by other upstreams, whose simulators have their own tests
            rename = fal.get("rename") or {}
            for example in endpoint.get("examples") or []:
                cases.append((fal["model"], {rename.get(k, k): v for k, v in example.items()}))
    return cases


async def test_shipped_catalog_examples_are_accepted(http: aiohttp.ClientSession) -> None:
    cases = _shipped_examples()
    assert len(cases) >= 36, "every shipped catalog endpoint has at least one example"
    # Real-time timings: nothing completes during the test, only submission is checked.
    with SimServer(SimSettings(port=0, time_scale=1.0)) as shipped:
        for fal_id, body in cases:
            submitted = await submit(http, shipped, fal_id, body)
            app_path = "/".join(fal_id.split("/")[:2])
            assert submitted["status_url"] == f"{shipped.url}/{app_path}/requests/{submitted['request_id']}/status"
