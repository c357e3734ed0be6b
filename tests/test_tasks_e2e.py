"""Tasks end to end through HTTP, against the simulator as the fal upstream."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from conftest import GatewayServer, wait_task
from mediacheck import check_output, probe
from tidehub.catalog import load_catalog

CATALOG = load_catalog()
TERMINAL_HUB = {"completed", "failed", "timeout", "cancelled"}
TERMINAL_MS = {"succeeded", "failed", "timeout", "canceled"}

# The four quick examples of the Hub overview, verbatim.
QUICK_EXAMPLES = [
    ("image", {
        "model": "nano-banana-pro",
        "input": {
            "prompt": "A photorealistic black labrador swimming, half above water, half underwater",
            "resolution": "2K",
            "aspect_ratio": "1:1",
        },
    }),
    ("video", {
        "model": "veo-3.1-fast",
        "input": {
            "prompt": "Cinematic drone shot flying through ancient stone ruins at golden hour",
            "duration": "8s",
            "resolution": "720p",
            "aspect_ratio": "16:9",
            "generate_audio": True,
        },
    }),
    ("audio", {
        "model": "elevenlabs-music",
        "input": {"prompt": "Uplifting lo-fi hip-hop with mellow piano and vinyl crackle", "music_length_ms": 30000},
    }),
    ("transcribe", {
        "model": "whisper-v3",
        "input": {"audio_url": "https://example.com/audio.mp3", "language": "en", "timestamps": "word"},
    }),
]


def hub_done(body: dict[str, Any]) -> bool:
    return body["ready"]


def ms_done(body: dict[str, Any]) -> bool:
    return body["status"] in TERMINAL_MS


@pytest.mark.parametrize("capability,request_body", QUICK_EXAMPLES, ids=[c for c, _ in QUICK_EXAMPLES])
def test_seed_quick_examples_verbatim(client: httpx.Client, capability: str, request_body: dict[str, Any]) -> None:
    resp = client.post(f"/hub/v1/{capability}", json=request_body)
    assert resp.status_code == 200, resp.text
    submitted = resp.json()
    task_id = submitted["task_id"]
    assert submitted["taskId"] == task_id and task_id.startswith("hub-")

    task = wait_task(client, f"/hub/v1/tasks/{task_id}", hub_done)
    assert task["status"] == "completed", task
    assert task["ready"] is True and task["progress"] == 100
    assert task["model"] == request_body["model"] and task["capability"] == capability
    assert task["error_code"] is None and task["completed_at"]
    check_output(capability, task["data"])
    if capability == "image":
        image = task["data"]["images"][0]
        assert (image["width"], image["height"]) == (2048, 2048)  # 2K at 1:1
    if capability == "video":
        info = probe(task["data"]["video"]["url"])
        assert abs(info["duration"] - 8) < 0.5 and info["size"] == (1280, 720) and "audio" in info["kinds"]
    if capability == "audio":
        assert abs(probe(task["data"]["audio"]["url"])["duration"] - 30) < 0.5
    if capability == "transcribe":
        words = task["data"]["chunks"]
        assert all(len(c["text"].split()) == 1 for c in words)  # timestamps: word


@pytest.mark.parametrize("slug", sorted(CATALOG.endpoints))
def test_every_catalog_example_completes(client: httpx.Client, slug: str) -> None:
    endpoint = CATALOG.endpoints[slug]
    resp = client.post(f"/ms/v1/run/{slug}", json={"input": endpoint.examples[0]})
    if endpoint.relay_only:
        # Its inputs are uploads: the relay tests (test_relay.py) run it; as a task it is refused.
        assert resp.status_code == 422 and "relay" in resp.json()["error"]["message"], resp.text
        return
    assert resp.status_code == 200, resp.text
    task = resp.json()
    assert task["status"] == "queued" and task["endpoint"] == slug and task["mode"] == endpoint.mode
    task = wait_task(client, f"/ms/v1/tasks/{task['task_id']}", ms_done)
    assert task["status"] == "succeeded", task
    assert task["error"] is None
    check_output(endpoint.capability, task["output"])


def test_task_readable_through_both_dialects(client: httpx.Client) -> None:
    hub_id = client.post("/hub/v1/image", json={"model": "nano-banana", "input": {"prompt": "a red kite"}}).json()["task_id"]
    ms_id = client.post("/ms/v1/run/google/nano-banana/text-to-image", json={"input": {"prompt": "a blue kite"}}).json()["task_id"]
    for task_id in (hub_id, ms_id):
        hub = wait_task(client, f"/hub/v1/tasks/{task_id}", hub_done)
        ms = client.get(f"/ms/v1/tasks/{task_id}").json()
        assert hub["status"] == "completed" and ms["status"] == "succeeded"
        assert hub["data"] == ms["output"]
        assert ms["endpoint"] == "google/nano-banana/text-to-image" and ms["model"] == "nano-banana"
        assert ms["mode"] == "text-to-image" and ms["capability"] == hub["capability"] == "image"


@pytest.mark.parametrize("dialect", ["hub", "ms"])
def test_cancel_in_each_dialect(gateway: GatewayServer, client: httpx.Client, dialect: str) -> None:
    body = {"prompt": "a long slow video", "duration": "8s"}
    if dialect == "hub":
        task_id = client.post("/hub/v1/video", json={"model": "veo-3.1", "input": body}).json()["task_id"]
        cancel_path, read_path, cancelled = f"/hub/v1/tasks/{task_id}/cancel", f"/hub/v1/tasks/{task_id}", "cancelled"
    else:
        task_id = client.post("/ms/v1/run/google/veo-3.1/text-to-video", json={"input": body}).json()["task_id"]
        cancel_path, read_path, cancelled = f"/ms/v1/tasks/{task_id}/cancel", f"/ms/v1/tasks/{task_id}", "canceled"
    # Let the engine hand the job to the upstream, so the cancel has to travel there too.
    store = gateway.gateway.store
    from conftest import wait_for

    wait_for(lambda: store.tasks.get(task_id)["upstream_ref"], what="upstream submit")
    resp = client.post(cancel_path)
    assert resp.status_code == 200, resp.text
    assert resp.json()["status"] == cancelled
    # The upstream is told to stop: the simulator reports the request cancelled.
    wait_for(lambda: not store.tasks.get(task_id)["cancel_upstream"], what="upstream cancel")
    ref = store.tasks.get(task_id)["upstream_ref"]
    status = httpx.get(f"{gateway.settings.fal_base_url}/fal-ai/veo3.1/requests/{ref}/status",
                       headers={"Authorization": "Key sim-key"}).json()
    assert status["status"] == "COMPLETED" and status.get("error_type") == "request_cancelled", status
    # It stays cancelled and has no output, and cancelling again is harmless.
    final = client.get(read_path).json()
    assert final["status"] == cancelled
    assert client.post(cancel_path).json()["status"] == cancelled


def test_cancel_after_completion_is_a_conflict(client: httpx.Client) -> None:
    task_id = client.post("/hub/v1/image", json={"model": "nano-banana", "input": {"prompt": "x"}}).json()["task_id"]
    wait_task(client, f"/hub/v1/tasks/{task_id}", hub_done)
    resp = client.post(f"/hub/v1/tasks/{task_id}/cancel")
    assert resp.status_code == 409 and resp.json()["error_code"] == "task_finished"


def test_multi_mode_model_picks_mode_from_input(client: httpx.Client) -> None:
    t2v = client.post("/hub/v1/video", json={"model": "kling-v3-pro", "input": {"prompt": "a fox", "duration": "3"}}).json()
    i2v = client.post("/hub/v1/video", json={"model": "kling-v3-pro", "input": {
        "prompt": "a fox", "duration": "3", "start_image_url": "https://example.com/fox.png"}}).json()
    t2v_task = client.get(f"/ms/v1/tasks/{t2v['task_id']}").json()
    i2v_task = client.get(f"/ms/v1/tasks/{i2v['task_id']}").json()
    assert t2v_task["mode"] == "text-to-video" and t2v_task["endpoint"] == "kuaishou/kling-v3/pro/text-to-video"
    assert i2v_task["mode"] == "image-to-video" and i2v_task["endpoint"] == "kuaishou/kling-v3/pro/image-to-video"


def test_models_and_endpoints_listing(client: httpx.Client) -> None:
    models = client.get("/hub/v1/models").json()["data"]
    ids = {m["id"] for m in models}
    assert {"nano-banana-pro", "veo-3.1-fast", "kling-v3-pro", "elevenlabs-music", "whisper-v3", "wizper"} <= ids
    videos = client.get("/hub/v1/models", params={"capability": "video"}).json()["data"]
    assert videos and all(m["capability"] == "video" for m in videos)
    detail = client.get("/hub/v1/models/nano-banana-pro").json()
    assert detail["input_schema"]["properties"]["resolution"]["enum"] == ["1K", "2K", "4K"]
    assert detail["example"]["model"] == "nano-banana-pro" and detail["example"]["input"]["prompt"]

    endpoints = client.get("/ms/v1/endpoints").json()["data"]
    assert len(endpoints) == len(CATALOG.endpoints)
    images = client.get("/ms/v1/endpoints", params={"capability": "image"}).json()["data"]
    assert len(images) == sum(e.capability == "image" for e in CATALOG.endpoints.values()) >= 8
    assert {e["capability"] for e in images} == {"image"}
    tagged = client.get("/ms/v1/endpoints", params={"tag": "veo"}).json()["data"]
    assert tagged and all("veo" in e["tags"] for e in tagged)
    slug = client.get("/ms/v1/endpoints/google/veo-3.1/first-last-frame-to-video").json()
    assert {"input_schema", "output_schema", "examples"} <= set(slug)
    assert set(slug["input_schema"]["required"]) >= {"first_frame_url", "last_frame_url"}
