"""The Replicate adapter against the simulator's ``/replicate/v1``, over real HTTP on 127.0.0.1.

Submit, poll and fetch real files; the version form; cancel; how every kind of refusal is
classified; and signed webhooks delivered to a real receiver and checked by ``verify_callback``.
"""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import orjson
import pytest

from tidehub.providers import ADAPTERS
from tidehub.core.ports import Job, JobState, UpstreamError
from tidehub.providers.replicate import ReplicateAdapter, http_error, outputs
from tidehub.sim import CONTENT_POLICY_MARKER, FLAKY_MARKER, SimBehaviour, SimServer

from mediacheck import check_image, probe
from receivers import Receiver

KEY = "sim-key"
BUSY = "busy-key"        # every other create is refused with 429
DOWN = "down-key"        # every request is answered 503
BROKEN = "broken-key"    # every valid create is answered 500
FAILING = "failing-key"  # every run fails (retryably)
HUNG = "hung-key"        # no request is answered until the client gives up
RETRY_AFTER_S = 2
SCHNELL = "black-forest-labs/flux-schnell"
VIDEO = "minimax/video-01"


@pytest.fixture(scope="module")
def sim() -> Iterator[SimServer]:
    channels = {
        BUSY: SimBehaviour(rate_limit_every=1, rate_limit_burst=1, retry_after_s=RETRY_AFTER_S),
        DOWN: SimBehaviour(outage=True),
        BROKEN: SimBehaviour(submit_error_rate=1.0),
        FAILING: SimBehaviour(run_failure_rate=1.0),
        HUNG: SimBehaviour(hang_rate=1.0, hang_s=5),
    }
    with SimServer(time_scale=0.01, api_key=KEY, channels=channels, seed=5) as server:
        yield server


def base(sim: SimServer) -> str:
    return f"{sim.url}/replicate/v1"


@pytest.fixture
async def adapter(sim: SimServer) -> AsyncIterator[ReplicateAdapter]:
    upstream = ReplicateAdapter(base(sim), KEY, timeout_s=10)
    yield upstream
    await upstream.close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    made = Receiver()
    yield made
    made.stop()


async def run_to_end(adapter: ReplicateAdapter, job: Job, timeout: float = 20) -> tuple[JobState, list[str]]:
    """Poll until the prediction ends; the last state and every state seen."""
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while True:
        state = await adapter.status(job)
        seen.append(state.state)
        if state.state in ("completed", "failed"):
            return state, seen
        assert time.monotonic() < deadline, f"{job.ref} still {state.state} after {timeout}s"
        await asyncio.sleep(0.03)


async def eventually(check: Callable[[], Any], timeout: float = 10, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.03)
    return value


async def raw(sim: SimServer, method: str, path: str, key: str = KEY, **kwargs: Any) -> httpx.Response:
    async with httpx.AsyncClient(base_url=base(sim), timeout=10,
                                 headers={"Authorization": f"Bearer {key}"}) as client:
        return await client.request(method, path, **kwargs)


def test_registered() -> None:
    assert ADAPTERS["replicate"] is ReplicateAdapter
    upstream = ReplicateAdapter("https://api.replicate.com/v1/", "r8_x", extra_option=1)
    assert upstream.base_url == "https://api.replicate.com/v1"
    assert upstream.auth_headers_for("https://replicate.delivery/xezq/out-0.webp") == {}


# --- the happy paths ---------------------------------------------------------------------------------


async def test_image_prediction_with_real_files(adapter: ReplicateAdapter) -> None:
    job = await adapter.submit(SCHNELL, {"prompt": "a lighthouse at dusk", "num_outputs": 2, "aspect_ratio": "16:9",
                                         "output_format": "png", "seed": None})
    assert job.ref and len(job.ref) == 26 and job.data["model"] == SCHNELL
    state, seen = await run_to_end(adapter, job)
    assert state.state == "completed", state.error
    assert set(seen) <= {"queued", "running", "completed"}
    assert state.logs and state.logs[0]["message"].startswith("Using seed:")

    output = await adapter.result(job)
    assert [image["content_type"] for image in output["images"]] == ["image/png", "image/png"]
    assert output["metrics"]["predict_time"] > 0
    for item in output["images"]:
        width, height = check_image(item).size
        assert abs(width / height - 16 / 9) < 0.03
    assert len({item["url"] for item in output["images"]}) == 2


@pytest.mark.parametrize("model, payload, count, content_type, size", [
    # flux-1.1-pro answers a single URL string; webp by default.
    ("black-forest-labs/flux-1.1-pro", {"prompt": "a red kite"}, 1, "image/webp", (1024, 1024)),
    ("black-forest-labs/flux-dev", {"prompt": "a red kite", "output_format": "jpg", "megapixels": "0.25"}, 1,
     "image/jpeg", (512, 512)),
    ("bytedance/seedream-4", {"prompt": "a red kite", "size": "2K", "sequential_image_generation": "auto",
                              "max_images": 3}, 3, "image/jpeg", (2048, 2048)),
])
async def test_other_image_models(adapter: ReplicateAdapter, model: str, payload: dict[str, Any], count: int,
                                  content_type: str, size: tuple[int, int]) -> None:
    job = await adapter.submit(model, payload)
    state, _ = await run_to_end(adapter, job)
    assert state.state == "completed", state.error
    output = await adapter.result(job)
    assert len(output["images"]) == count
    for item in output["images"]:
        assert item["content_type"] == content_type
        assert check_image(item).size == size


async def test_video_prediction(adapter: ReplicateAdapter, sim: SimServer) -> None:
    job = await adapter.submit(VIDEO, {"prompt": "surf rolling onto a beach", "prompt_optimizer": False})
    state, seen = await run_to_end(adapter, job, timeout=30)
    assert state.state == "completed", state.error
    assert "running" in seen  # a 150 s (scaled) run is seen in progress
    output = await adapter.result(job)
    assert set(output) == {"video", "metrics"}
    assert output["video"]["content_type"] == "video/mp4" and output["video"]["url"].endswith(".mp4")
    info = probe(output["video"]["url"])
    assert info["kinds"] == ["video"] and info["size"] == (1280, 720)
    assert info["duration"] == pytest.approx(6, abs=0.5)

    prediction = (await raw(sim, "GET", f"/predictions/{job.ref}")).json()
    assert prediction["status"] == "succeeded" and prediction["output"] == output["video"]["url"]
    assert prediction["input"] == {"prompt": "surf rolling onto a beach", "prompt_optimizer": False}
    assert prediction["urls"]["get"] == f"{base(sim)}/predictions/{job.ref}"
    assert prediction["started_at"] and prediction["completed_at"] and prediction["error"] is None


async def test_version_forms(adapter: ReplicateAdapter, sim: SimServer) -> None:
    answer = await raw(sim, "GET", "/models/black-forest-labs/flux-dev")
    assert answer.status_code == 200
    version = answer.json()["latest_version"]["id"]
    assert "prompt" in answer.json()["latest_version"]["openapi_schema"]["components"]["schemas"]["Input"]["required"]

    for model in (f"black-forest-labs/flux-dev:{version}", version):
        job = await adapter.submit(model, {"prompt": "a pier in fog", "num_outputs": 1})
        assert job.data["version"] == version
        prediction = (await raw(sim, "GET", f"/predictions/{job.ref}")).json()
        assert (prediction["model"], prediction["version"]) == ("black-forest-labs/flux-dev", version)
        state, _ = await run_to_end(adapter, job)
        assert state.state == "completed"
        assert len((await adapter.result(job))["images"]) == 1

    with pytest.raises(UpstreamError) as caught:  # a version this account cannot see: another may
        await adapter.submit(f"black-forest-labs/flux-dev:{'0' * 64}", {"prompt": "a pier"})
    assert (caught.value.code, caught.value.status, caught.value.retryable) == ("upstream_not_found", 422, True)
    with pytest.raises(UpstreamError) as caught:
        await adapter.submit("flux-dev", {"prompt": "a pier"})
    assert caught.value.code == "model_unavailable"


async def test_cancel(adapter: ReplicateAdapter, sim: SimServer) -> None:
    job = await adapter.submit(VIDEO, {"prompt": "a long tracking shot"})
    await adapter.cancel(job)
    state, _ = await run_to_end(adapter, job)
    assert state.state == "failed" and state.error is not None
    assert (state.error.code, state.error.retryable) == ("canceled", False)
    assert (await raw(sim, "GET", f"/predictions/{job.ref}")).json()["status"] == "canceled"
    await adapter.cancel(job)  # already over: nothing to stop
    await adapter.cancel(Job("aaaaaaaaaaaaaaaaaaaaaaaaaa"))  # unknown: nothing to stop


# --- refusals and failures ---------------------------------------------------------------------------


@pytest.mark.parametrize("payload, field", [
    ({"prompt": "a cat", "num_outputs": 9}, "input.num_outputs"),
    ({"num_outputs": 1}, "input.prompt"),
    ({"prompt": "a cat", "output_format": "gif"}, "input.output_format"),
    ({"prompt": "a cat", "seed": "seven"}, "input.seed"),
])
async def test_invalid_input_names_the_field(adapter: ReplicateAdapter, payload: dict[str, Any], field: str) -> None:
    with pytest.raises(UpstreamError) as caught:
        await adapter.submit(SCHNELL, payload)
    error = caught.value
    assert (error.code, error.status, error.retryable, error.field) == ("invalid_input", 422, False, field)
    assert field.removeprefix("input.") in error.message


async def test_unknown_model(adapter: ReplicateAdapter) -> None:
    with pytest.raises(UpstreamError) as caught:
        await adapter.submit("black-forest-labs/flux-17", {"prompt": "a cat"})
    assert (caught.value.code, caught.value.status, caught.value.retryable) == ("upstream_not_found", 404, True)


async def test_rate_limit_gives_retry_after(sim: SimServer) -> None:
    busy = ReplicateAdapter(base(sim), BUSY)
    try:
        await busy.submit(SCHNELL, {"prompt": "first"})
        with pytest.raises(UpstreamError) as caught:
            await busy.submit(SCHNELL, {"prompt": "second"})
        error = caught.value
        assert (error.code, error.status, error.retryable, error.retry_after) == (
            "upstream_rate_limited", 429, True, RETRY_AFTER_S)
    finally:
        await busy.close()


async def test_outage_server_errors_and_auth_are_retryable(sim: SimServer) -> None:
    down, broken = ReplicateAdapter(base(sim), DOWN), ReplicateAdapter(base(sim), BROKEN)
    wrong = ReplicateAdapter(base(sim), "no-such-key")
    try:
        for call in (down.submit(SCHNELL, {"prompt": "a cat"}), down.status(Job("aaaaaaaaaaaaaaaaaaaaaaaaaa"))):
            with pytest.raises(UpstreamError) as caught:
                await call
            assert (caught.value.code, caught.value.status, caught.value.retryable) == ("upstream_error", 503, True)
        with pytest.raises(UpstreamError) as caught:
            await broken.submit(SCHNELL, {"prompt": "a cat"})
        assert (caught.value.code, caught.value.status, caught.value.retryable) == ("upstream_error", 500, True)
        with pytest.raises(UpstreamError) as caught:  # input errors still come first on a broken channel
            await broken.submit(SCHNELL, {"prompt": "a cat", "num_outputs": 0})
        assert caught.value.code == "invalid_input"
        with pytest.raises(UpstreamError) as caught:
            await wrong.submit(SCHNELL, {"prompt": "a cat"})
        assert (caught.value.code, caught.value.status, caught.value.retryable) == ("upstream_auth", 401, True)
    finally:
        for upstream in (down, broken, wrong):
            await upstream.close()


async def test_transport_failures_are_retryable(sim: SimServer) -> None:
    nowhere = ReplicateAdapter("http://127.0.0.1:9/v1", KEY, timeout_s=2)
    hung = ReplicateAdapter(base(sim), HUNG, timeout_s=0.5)
    try:
        with pytest.raises(UpstreamError) as caught:
            await nowhere.submit(SCHNELL, {"prompt": "a cat"})
        assert (caught.value.code, caught.value.retryable) == ("upstream_unavailable", True)
        started = time.monotonic()
        with pytest.raises(UpstreamError) as caught:
            await hung.submit(SCHNELL, {"prompt": "a cat"})
        assert (caught.value.code, caught.value.retryable) == ("upstream_timeout", True)
        assert time.monotonic() - started < 4
    finally:
        await nowhere.close()
        await hung.close()


@pytest.mark.parametrize("model, words", [(SCHNELL, "NSFW"), ("black-forest-labs/flux-1.1-pro", "sensitive")])
async def test_content_policy_is_permanent(adapter: ReplicateAdapter, model: str, words: str) -> None:
    job = await adapter.submit(model, {"prompt": f"{CONTENT_POLICY_MARKER} something"})
    state, _ = await run_to_end(adapter, job)
    assert state.state == "failed" and state.error is not None
    assert (state.error.code, state.error.retryable) == ("content_policy", False)
    assert words in state.error.message


async def test_run_failures_are_retryable(adapter: ReplicateAdapter, sim: SimServer) -> None:
    prompt = f"{FLAKY_MARKER} {uuid.uuid4()}"  # fails the first time on a channel, then succeeds
    first = await adapter.submit(SCHNELL, {"prompt": prompt})
    state, _ = await run_to_end(adapter, first)
    assert state.state == "failed" and state.error is not None
    assert (state.error.code, state.error.retryable) == ("upstream_error", True)
    assert "interrupted" in state.error.message
    again = await adapter.submit(SCHNELL, {"prompt": prompt})
    assert (await run_to_end(adapter, again))[0].state == "completed"

    failing = ReplicateAdapter(base(sim), FAILING)
    try:
        state, _ = await run_to_end(failing, await failing.submit(SCHNELL, {"prompt": "a cat"}))
        assert state.state == "failed" and state.error is not None and state.error.retryable
        with pytest.raises(UpstreamError) as caught:  # a failed prediction has no result
            await failing.result(await failing.submit(SCHNELL, {"prompt": "a dog"}))
        assert caught.value.retryable
    finally:
        await failing.close()


# --- webhooks ----------------------------------------------------------------------------------------


async def test_webhook_is_verified(adapter: ReplicateAdapter, sim: SimServer, receiver: Receiver) -> None:
    job = await adapter.submit(SCHNELL, {"prompt": "a harbour at noon"}, callback_url=receiver.url)
    await eventually(lambda: receiver.received, what="the webhook")
    delivery = receiver.received[0]
    headers, body = delivery["headers"], delivery["body"]
    prediction = orjson.loads(body)
    # Only "completed" was asked for: the first delivery is already the finished prediction.
    assert prediction["id"] == job.ref and prediction["status"] == "succeeded" and prediction["output"]
    assert await adapter.verify_callback(headers, body) == job.ref

    tampered = body.replace(b'"succeeded"', b'"failed"')
    assert tampered != body
    forged = {**headers, "webhook-signature": "v1," + base64.b64encode(b"\0" * 32).decode()}
    for bad_headers, bad_body in ((headers, tampered), (forged, body), ({}, body),
                                  ({**headers, "webhook-timestamp": str(int(time.time()) - 3600)}, body)):
        with pytest.raises(UpstreamError) as caught:
            await adapter.verify_callback(bad_headers, bad_body)
        assert caught.value.code == "bad_callback"

    secret = (await raw(sim, "GET", "/webhooks/default/secret")).json()["key"]
    assert secret.startswith("whsec_")
    configured = ReplicateAdapter("http://127.0.0.1:9/v1", "unused", webhook_secret=secret)
    other = ReplicateAdapter("http://127.0.0.1:9/v1", "unused",
                             webhook_secret="whsec_" + base64.b64encode(b"another secret, 32 bytes long...").decode())
    stranger = ReplicateAdapter(base(sim), "no-such-key")  # cannot fetch a secret at all
    try:
        assert await configured.verify_callback(headers, body) == job.ref  # no fetch needed
        for upstream in (other, stranger):
            with pytest.raises(UpstreamError) as caught:
                await upstream.verify_callback(headers, body)
            assert caught.value.code == "bad_callback"
    finally:
        for upstream in (configured, other, stranger):
            await upstream.close()


async def test_webhook_events_and_retries(sim: SimServer) -> None:
    receiver = Receiver(statuses=[500])  # the first attempt fails
    try:
        answer = await raw(sim, "POST", f"/models/{SCHNELL}/predictions",
                           json={"input": {"prompt": "gulls"}, "webhook": receiver.url})
        assert answer.status_code == 201 and answer.json()["status"] == "starting"
        # Every event by default: start, output, completed; plus one retry of the refused attempt.
        await eventually(lambda: len(receiver.received) >= 4, what="four deliveries")
        by_id = {d["headers"]["webhook-id"]: orjson.loads(d["body"]) for d in receiver.received}
        assert len(by_id) == 3  # the retry kept its message id
        assert sorted(body["status"] for body in by_id.values()) == ["starting", "succeeded", "succeeded"]
        assert sim.runtime.channel(KEY).stats.webhooks_failed >= 1
        upstream = ReplicateAdapter(base(sim), KEY)
        try:
            for delivery in receiver.received:
                assert await upstream.verify_callback(delivery["headers"], delivery["body"]) == answer.json()["id"]
        finally:
            await upstream.close()
    finally:
        receiver.stop()


# --- the simulator's own wire format -----------------------------------------------------------------


async def test_sim_wire_format(sim: SimServer) -> None:
    waited = await raw(sim, "POST", f"/models/{SCHNELL}/predictions", json={"input": {"prompt": "a cat"}},
                       headers={"Prefer": "wait=60", "Authorization": f"Token {KEY}"})
    assert waited.status_code == 201
    body = waited.json()
    assert body["status"] == "succeeded" and isinstance(body["output"], list) and body["metrics"]["predict_time"] > 0

    for status, call in (
        (401, raw(sim, "GET", "/predictions/aaaaaaaaaaaaaaaaaaaaaaaaaa", key="nope")),
        (404, raw(sim, "GET", "/predictions/aaaaaaaaaaaaaaaaaaaaaaaaaa")),
        (404, raw(sim, "POST", "/models/nobody/nothing/predictions", json={"input": {"prompt": "x"}})),
        (422, raw(sim, "POST", f"/models/{SCHNELL}/predictions", json={"input": {"prompt": "x", "num_outputs": 5}})),
        (422, raw(sim, "POST", "/predictions", json={"version": "f" * 64, "input": {"prompt": "x"}})),
    ):
        answer = await call
        problem = answer.json()
        assert answer.status_code == status and problem["status"] == status, problem
        assert problem["title"] and problem["detail"]
    assert problem["title"] == "Invalid version or not permitted"

    async with httpx.AsyncClient() as control:  # a second account: it cannot see the first one's predictions
        assert (await control.put(f"{sim.url}/_sim/channels/other-key", json={})).status_code in (200, 201)
    mine = await raw(sim, "GET", f"/predictions/{body['id']}")
    theirs = await raw(sim, "GET", f"/predictions/{body['id']}", key="other-key")
    assert (mine.status_code, theirs.status_code) == (200, 404)


def test_outputs_and_errors_shapes() -> None:
    video = outputs({"output": "https://replicate.delivery/x/out.mp4", "metrics": {"predict_time": 12.5}})
    assert video == {"video": {"url": "https://replicate.delivery/x/out.mp4", "content_type": "video/mp4"},
                     "metrics": {"predict_time": 12.5}}
    images = outputs({"output": ["https://r.example/a.webp", "https://r.example/b.JPG"], "metrics": {}})
    assert images == {"images": [{"url": "https://r.example/a.webp", "content_type": "image/webp"},
                                 {"url": "https://r.example/b.JPG", "content_type": "image/jpeg"}]}
    assert outputs({"output": "data:image/png;base64,AAAA"})["images"][0]["content_type"] == "image/png"
    assert outputs({"output": ["Hello", " world"]}) == {"output": ["Hello", " world"]}

    error = http_error(429, {"Retry-After": "7"}, b'{"title":"Request was throttled.","status":429,"detail":"x"}')
    assert (error.code, error.retry_after, error.retryable) == ("upstream_rate_limited", 7, True)
    error = http_error(502, {}, b"<html>Bad gateway</html>")
    assert error.retryable and "Bad gateway" in error.message
    error = http_error(402, {}, b'{"title":"Insufficient credit","status":402,"detail":"top up"}')
    assert (error.code, error.retryable) == ("upstream_quota", True)
    error = http_error(422, {}, b'{"title":"Input validation failed","status":422,'
                                b'"detail":"- input.width: Must be greater than or equal to 256\\n"}')
    assert (error.code, error.field, error.retryable) == ("invalid_input", "input.width", False)
