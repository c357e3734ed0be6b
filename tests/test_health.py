"""`/api/health`: the database and Redis, reported honestly; a gateway whose Redis is down still serves."""

from __future__ import annotations

from conftest import free_port


def test_health_without_redis_is_ok_and_says_disabled(gateway) -> None:
    with gateway.client() as c:
        resp = c.get("/api/health")
    assert resp.status_code == 200
    assert resp.json() == {"status": "ok", "checks": {"db": "ok", "redis": "disabled"}}


def test_health_with_redis_reports_ok(make_gateway, redis_settings) -> None:
    gateway = make_gateway(**redis_settings)
    with gateway.client() as c:
        resp = c.get("/api/health")
    assert resp.status_code == 200 and resp.json()["checks"]["redis"] == "ok", resp.text


def test_a_gateway_whose_redis_is_unreachable_starts_serves_and_reports_503(make_gateway) -> None:
    gateway = make_gateway(redis_url=f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    with gateway.client() as c:
        health = c.get("/api/health")
        assert health.status_code == 503, health.text
        assert health.json()["status"] == "error" and health.json()["checks"] == {"db": "ok", "redis": "error"}
    with gateway.client(gateway.new_key()) as c:
        submitted = c.post("/hub/v1/image", json={"model": "nano-banana", "input": {"prompt": "still serving"}})
        assert submitted.status_code == 200, submitted.text
        assert c.get(f"/hub/v1/tasks/{submitted.json()['task_id']}").status_code == 200
