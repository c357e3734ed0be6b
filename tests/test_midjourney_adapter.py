"""Midjourney's ``/mj`` task protocol against the simulator, both ways it is reached: a plain proxy
(``MidjourneyAdapter``, ``mj-api-secret``) and nexus (``NexusAdapter`` with ``api: mj``, Bearer)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import orjson
import pytest
from PIL import Image, ImageChops

from tidehub.providers import ADAPTERS
from tidehub.core.ports import Job, TaskAdapter
from tidehub.providers.midjourney import MidjourneyAdapter
from tidehub.providers.nexus import NexusAdapter
from tidehub.sim import CONTENT_POLICY_MARKER, FLAKY_MARKER, SimBehaviour, SimServer

from conftest import wait_for
from mediacheck import check_image
from receivers import Receiver
from upstream_jobs import refused, run_to_end

KEY = "sim-key"
BUSY = "busy-key"  # every other valid submit is refused: code 23, queue full
DOWN = "down-key"  # an outage
BROKEN = "broken-key"  # every valid submit fails: code 9
MJ = {"api": "mj"}


@pytest.fixture(scope="module")
def sim() -> Iterator[SimServer]:
    channels = {BUSY: SimBehaviour(rate_limit_every=1, rate_limit_burst=1), DOWN: SimBehaviour(outage=True),
                BROKEN: SimBehaviour(submit_error_rate=1.0)}
    with SimServer(time_scale=0.01, api_key=KEY, channels=channels, seed=17) as server:
        yield server


@pytest.fixture(params=["proxy", "nexus"])
async def adapter(request: pytest.FixtureRequest, sim: SimServer) -> AsyncIterator[TaskAdapter]:
    made: TaskAdapter = (MidjourneyAdapter(f"{sim.url}/mj-proxy", KEY, timeout_s=20) if request.param == "proxy"
                     else NexusAdapter(f"{sim.url}/nexus", KEY, timeout_s=20))
    yield made
    await made.close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    made = Receiver()
    yield made
    made.stop()


def open_image(url: str) -> Image.Image:
    return check_image({"url": url}).convert("RGB")


def test_registered() -> None:
    assert ADAPTERS["midjourney"] is MidjourneyAdapter
    proxy = MidjourneyAdapter("https://mj.example.com/mj/", "secret", extra_option=1)
    assert proxy.base_url == "https://mj.example.com" and proxy.tasks.root == "https://mj.example.com/mj"
    assert proxy.auth_headers_for("https://mj.example.com/mj/image/1.png") == {}


async def test_imagine_grid_then_upscale(adapter: TaskAdapter, receiver: Receiver) -> None:
    job = await adapter.submit("midjourney", {"prompt": "A red fox in the snow", "aspect_ratio": "16:9"},
                               callback_url=receiver.url, spec=MJ)
    assert job.data == {"api": "mj"}
    state, states = await run_to_end(adapter, job)
    assert state.state == "completed", state.error
    assert {s.state for s in states} <= {"queued", "running", "completed"}
    progress = [log["message"] for s in states for log in s.logs]
    assert all(message.startswith("progress ") and message.endswith("%") for message in progress)

    output = await adapter.result(job)
    assert output["task_id"] == job.ref and output["images"][0]["content_type"] == "image/png"
    grid = open_image(output["images"][0]["url"])
    assert grid.size == (2 * 1368, 2 * 768)  # four 16:9 quadrants of about 1K
    buttons = {b["label"]: b["custom_id"] for b in output["buttons"]}
    assert {"U1", "U2", "U3", "U4", "V1", "V4"} <= set(buttons)

    # The proxy posts the task to notifyHook, unsigned; the callback names the job and nothing more.
    posts = wait_for(lambda: [orjson.loads(r["body"]) for r in receiver.received
                              if orjson.loads(r["body"])["status"] == "SUCCESS"], timeout=10, what="notifyHook")
    assert posts[0]["id"] == job.ref and posts[0]["imageUrl"]
    for received in receiver.received:
        assert await adapter.verify_callback(received["headers"], received["body"]) == job.ref

    upscale = await adapter.submit("midjourney", {"task_id": job.ref, "custom_id": buttons["U2"]}, spec=MJ)
    state, _ = await run_to_end(adapter, upscale)
    assert state.state == "completed", state.error
    single = open_image((await adapter.result(upscale))["images"][0]["url"])
    assert single.size == (1368, 768)
    top_right = grid.crop((1368, 0, 2 * 1368, 768))
    assert ImageChops.difference(single, top_right).getbbox() is None  # the very quadrant, pixel for pixel
    await adapter.cancel(upscale)  # the proxy has no cancel: a no-op


async def test_refusals_at_submit(adapter: TaskAdapter) -> None:
    error = await refused(adapter.submit("midjourney", {"prompt": f"A storm {CONTENT_POLICY_MARKER}"}, spec=MJ))
    assert (error.code, error.retryable, error.field) == ("content_policy", False, "input.prompt")

    error = await refused(adapter.submit("midjourney", {"prompt": "   "}, spec=MJ))
    assert (error.code, error.retryable, error.field) == ("invalid_input", False, "input.prompt")

    unknown = {"task_id": uuid.uuid4().hex, "custom_id": "MJ::JOB::upsample::1::x"}
    error = await refused(adapter.submit("midjourney", unknown, spec=MJ))
    assert error.retryable  # code 3: the task is unknown to this proxy


async def test_failed_run_and_unknown_task(adapter: TaskAdapter) -> None:
    job = await adapter.submit("midjourney", {"prompt": f"Rain {FLAKY_MARKER} {uuid.uuid4()}"}, spec=MJ)
    state, _ = await run_to_end(adapter, job)
    assert state.state == "failed" and state.error is not None
    assert (state.error.code, state.error.retryable) == ("upstream_timeout", True)

    error = await refused(adapter.status(Job(uuid.uuid4().hex, {"api": "mj"})))
    assert (error.code, error.status, error.retryable) == ("upstream_not_found", 404, True)


async def test_queue_full_failure_outage_and_bad_key(sim: SimServer) -> None:
    busy, broken = MidjourneyAdapter(f"{sim.url}/mj-proxy", BUSY), MidjourneyAdapter(f"{sim.url}/mj-proxy", BROKEN)
    down = NexusAdapter(f"{sim.url}/nexus", DOWN)
    wrong = MidjourneyAdapter(f"{sim.url}/mj-proxy", "no-such-key")
    try:
        await busy.submit("midjourney", {"prompt": "a"}, spec=MJ)
        error = await refused(busy.submit("midjourney", {"prompt": "a"}, spec=MJ))
        assert (error.code, error.retryable) == ("upstream_rate_limited", True)
        assert "队列已满" in error.message

        error = await refused(broken.submit("midjourney", {"prompt": "a"}, spec=MJ))
        assert (error.code, error.retryable) == ("upstream_error", True)

        error = await refused(down.submit("midjourney", {"prompt": "a"}, spec=MJ))
        assert (error.status, error.retryable) == (503, True)
        assert error.message.startswith("nexus: ")

        error = await refused(wrong.submit("midjourney", {"prompt": "a"}, spec=MJ))
        assert (error.code, error.status, error.retryable) == ("upstream_auth", 401, True)
    finally:
        for adapter in (busy, broken, down, wrong):
            await adapter.close()


async def test_each_mount_takes_its_own_auth(sim: SimServer) -> None:
    async with httpx.AsyncClient(base_url=sim.url, timeout=10) as client:
        body = {"prompt": "a lighthouse"}
        secret = await client.post("/mj-proxy/mj/submit/imagine", json=body, headers={"mj-api-secret": KEY})
        bearer = await client.post("/nexus/mj/submit/imagine", json=body, headers={"Authorization": f"Bearer {KEY}"})
        assert secret.json()["code"] in (1, 22) and bearer.json()["code"] in (1, 22)
        swapped = await client.post("/mj-proxy/mj/submit/imagine", json=body,
                                    headers={"Authorization": f"Bearer {KEY}"})
        assert swapped.status_code == 401
        task = (await client.get(f"/nexus/mj/task/{bearer.json()['result']}/fetch",
                                 headers={"Authorization": f"Bearer {KEY}"})).json()
        assert task["action"] == "IMAGINE" and task["status"] in ("NOT_START", "SUBMITTED", "IN_PROGRESS", "SUCCESS")
        assert task["submitTime"] > 0 and task["description"] == "/imagine a lighthouse"


async def test_callback_without_a_task_id_is_refused() -> None:
    adapter = MidjourneyAdapter("http://127.0.0.1:9", KEY)
    for body in (b"", b"[]", b'{"status": "SUCCESS"}', b'{"id": ""}'):
        error = await refused(adapter.verify_callback({}, body))
        assert error.code == "bad_callback"
    error = await refused(adapter.submit("midjourney", {"prompt": "a"}))
    assert (error.code, error.retryable) == ("upstream_unavailable", True)
    await adapter.close()
