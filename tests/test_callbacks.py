"""Upstream callbacks: fal-style signed webhooks make results visible without waiting for a poll."""

from __future__ import annotations

import time

import httpx

from conftest import wait_task

IMAGE = {"model": "nano-banana", "input": {"prompt": "a lighthouse"}}


def test_signed_callback_finishes_the_task_before_any_poll(make_gateway, sim) -> None:
    # Polls at least 1000 s apart (20 s at the test scale): only the callback can finish this fast.
    gateway = make_gateway(upstream_callbacks=True, fal_jwks_url=f"{sim.base_url}/.well-known/jwks.json",
                           poll_min_s=1000, poll_max_s=1000)
    with gateway.client(gateway.new_key()) as c:
        started = time.monotonic()
        task_id = c.post("/hub/v1/image", json=IMAGE).json()["task_id"]
        task = wait_task(c, f"/hub/v1/tasks/{task_id}", lambda b: b["ready"], timeout=15)
        assert task["status"] == "completed"
        assert time.monotonic() - started < 15


def test_forged_or_stale_callbacks_are_refused(make_gateway, sim) -> None:
    gateway = make_gateway(upstream_callbacks=True, fal_jwks_url=f"{sim.base_url}/.well-known/jwks.json")
    url = f"{gateway.url}/callbacks/fal/hub-123"
    body = b'{"request_id": "r1", "status": "OK", "payload": {}}'
    headers = {"X-Fal-Webhook-Request-Id": "r1", "X-Fal-Webhook-User-Id": "u",
               "X-Fal-Webhook-Timestamp": str(int(time.time())), "X-Fal-Webhook-Signature": "00" * 64}
    assert httpx.post(url, content=body, headers=headers).status_code == 401
    assert httpx.post(url, content=body).status_code == 401
    stale = {**headers, "X-Fal-Webhook-Timestamp": str(int(time.time()) - 3600)}
    assert httpx.post(url, content=body, headers=stale).status_code == 401
    assert httpx.post(f"{gateway.url}/callbacks/nope/hub-123", content=body, headers=headers).status_code == 404
