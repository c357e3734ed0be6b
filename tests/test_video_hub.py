"""The video-hub API: submit with or without a provider, poll the job, errors in its
``{success, message}`` envelope; and the health check."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from conftest import GatewayServer, wait_for
from mediacheck import probe


def finished(client: httpx.Client, job_id: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        body = client.get("/api/video/status", params={"jobId": job_id}).json()
        assert body["success"] is True, body
        return body["data"] if body["data"]["status"] in ("succeeded", "failed", "canceled") else None

    return wait_for(check, timeout=60, interval=0.1, what=f"job {job_id}")


def test_seed_example_with_a_provider(client: httpx.Client) -> None:
    resp = client.post("/api/video/submit", json={"provider": "kling", "prompt": "一只猫在草地上奔跑",
                                                  "user_identifier": "user_123"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["success"] is True and body["data"]["jobId"]
    job = finished(client, body["data"]["jobId"])
    assert job["status"] == "succeeded" and job["progress"] == 100
    assert job["model"] == "kling-v3-standard"  # the cheaper kling of the two
    assert job["resultUrl"].startswith(str(client.base_url) + "/files/")
    assert "video" in probe(job["resultUrl"])["kinds"]
    usage = client.get("/ms/v1/usage", params={"group_by": "user_identifier"}).json()
    assert "user_123" in str(usage)


def test_automatic_choice_is_the_cheapest_available(make_gateway: Any) -> None:
    every = make_gateway()
    with every.client(every.new_key()) as client:
        job = client.post("/api/video/submit", json={"prompt": "a cat running on grass"}).json()["data"]
        # veo-3.1-lite and sora-2 both cost 360 for a bare prompt; the catalog's first one wins.
        assert job["model"] == "veo-3.1-lite"
        assert finished(client, job["jobId"])["status"] == "succeeded"
    # Without a fal channel only the OpenAI one can run a video: Sora, whatever is cheaper on paper.
    openai_only = make_gateway(fal_key="", more_upstreams=False)
    with openai_only.client(openai_only.new_key()) as client:
        job = client.post("/api/video/submit", json={"prompt": "a cat running on grass"}).json()["data"]
        assert job["model"] == "sora-2"
        done = finished(client, job["jobId"])
        assert done["status"] == "succeeded" and done["resultUrl"]


def test_errors_in_the_success_envelope(gateway: GatewayServer, client: httpx.Client) -> None:
    cases = [
        (client.post("/api/video/submit", json={"provider": "kling"}), 422, "prompt"),
        (client.post("/api/video/submit", json={"prompt": "x", "provider": "nosuch"}), 422, "provider"),
        (client.get("/api/video/status"), 422, "jobId"),
        (client.get("/api/video/status", params={"jobId": "job-missing"}), 404, "job-missing"),
        (httpx.post(f"{gateway.url}/api/video/submit", json={"prompt": "x"}), 401, "key"),
    ]
    for resp, status, words in cases:
        assert resp.status_code == status, resp.text
        body = resp.json()
        assert body["success"] is False and words in body["message"], body
    poor = gateway.client(gateway.new_key(credits=10))
    resp = poor.post("/api/video/submit", json={"prompt": "x"})
    assert resp.status_code == 403 and resp.json()["success"] is False


def test_a_key_sees_only_its_own_jobs(gateway: GatewayServer, client: httpx.Client) -> None:
    job_id = client.post("/api/video/submit", json={"prompt": "waves"}).json()["data"]["jobId"]
    with gateway.client(gateway.new_key()) as other:
        resp = other.get("/api/video/status", params={"jobId": job_id})
    assert resp.status_code == 404 and resp.json()["success"] is False


@pytest.mark.parametrize("down", [False, True])
def test_health(make_gateway: Any, down: bool) -> None:
    gateway = make_gateway()
    if down:
        gateway.gateway.store.engine.dispose()
        gateway.gateway.store.engine.pool._creator = lambda *a: (_ for _ in ()).throw(OSError("database gone"))
    resp = httpx.get(f"{gateway.url}/api/health")
    body = resp.json()
    if down:
        assert resp.status_code == 503 and body["status"] != "ok" and body["checks"]["db"] != "ok"
    else:
        assert resp.status_code == 200
        assert body == {"status": "ok", "checks": {"db": "ok", "redis": "disabled"}}
