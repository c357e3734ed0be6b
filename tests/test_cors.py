"""CORS: web pages on the configured origins may call the bearer-key APIs; nothing else gets CORS."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from conftest import GatewayServer
from tidehub.app import create_app
from tidehub.config import Settings

ALLOWED = "https://app.example.com"
IMAGE = {"model": "nano-banana", "input": {"prompt": "a lighthouse"}}


def preflight(gateway: GatewayServer, path: str, origin: str, method: str = "POST",
              headers: str = "authorization, content-type, idempotency-key") -> httpx.Response:
    return httpx.options(f"{gateway.url}{path}", headers={
        "Origin": origin, "Access-Control-Request-Method": method, "Access-Control-Request-Headers": headers})


@pytest.fixture
def cors_gateway(make_gateway) -> GatewayServer:
    return make_gateway(cors_origins=f"{ALLOWED}, https://other.example.com/", admin_token="admin-secret")


@pytest.mark.parametrize("path", ["/hub/v1/image", "/ms/v1/run/google/nano-banana/text-to-image",
                                  "/v1/chat/completions", "/api/relay/v1/chat/completions", "/api/video/submit",
                                  "/api/user/redemption"])
def test_preflight_from_an_allowed_origin(cors_gateway: GatewayServer, path: str) -> None:
    answer = preflight(cors_gateway, path, ALLOWED)
    assert answer.status_code == 200, answer.text
    assert answer.headers["access-control-allow-origin"] == ALLOWED
    assert answer.headers["x-request-id"].startswith("req_")  # the edge is outside CORS: every answer has one
    allowed = answer.headers["access-control-allow-headers"].lower()
    assert {"authorization", "content-type", "idempotency-key", "x-request-id"} <= {
        h.strip() for h in allowed.split(",")}
    assert "POST" in answer.headers["access-control-allow-methods"]
    assert "access-control-allow-credentials" not in answer.headers
    assert "https://other.example.com" == preflight(cors_gateway, path, "https://other.example.com").headers[
        "access-control-allow-origin"]  # a trailing slash in the setting is forgiven


def test_real_requests_carry_cors_headers_for_allowed_origins_only(cors_gateway: GatewayServer) -> None:
    key = cors_gateway.new_key()
    auth = {"Authorization": f"Bearer {key}"}
    ok = httpx.post(f"{cors_gateway.url}/hub/v1/image", json=IMAGE, headers={**auth, "Origin": ALLOWED})
    assert ok.status_code == 200
    assert ok.headers["access-control-allow-origin"] == ALLOWED
    exposed = {h.strip().lower() for h in ok.headers["access-control-expose-headers"].split(",")}
    assert {"retry-after", "x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset", "x-request-id",
            "content-disposition"} <= exposed
    assert "origin" in ok.headers.get("vary", "").lower()
    error = httpx.get(f"{cors_gateway.url}/hub/v1/tasks/hub-nope", headers={**auth, "Origin": ALLOWED})
    assert error.status_code == 404 and error.headers["access-control-allow-origin"] == ALLOWED  # errors too
    health = httpx.get(f"{cors_gateway.url}/api/health", headers={"Origin": ALLOWED})
    assert health.headers["access-control-allow-origin"] == ALLOWED

    stranger = "https://evil.example.net"
    refused = preflight(cors_gateway, "/hub/v1/image", stranger)
    assert refused.status_code == 400 and "access-control-allow-origin" not in refused.headers
    plain = httpx.post(f"{cors_gateway.url}/hub/v1/image", json=IMAGE, headers={**auth, "Origin": stranger})
    assert plain.status_code == 200 and "access-control-allow-origin" not in plain.headers


def test_an_unexpected_error_answers_with_cors_headers_and_its_request_id(cors_gateway: GatewayServer) -> None:
    def broken(principal: object) -> None:
        raise RuntimeError("the balance exploded")

    cors_gateway.gateway.accounts.balance = broken  # type: ignore[method-assign]
    answer = httpx.get(f"{cors_gateway.url}/hub/v1/account", headers={
        "Authorization": f"Bearer {cors_gateway.new_key()}", "Origin": ALLOWED, "X-Request-Id": "req-cors-500"})
    assert answer.status_code == 500 and answer.json()["error_code"] == "internal_error", answer.text
    assert answer.headers["access-control-allow-origin"] == ALLOWED
    assert answer.headers["x-request-id"] == "req-cors-500"


def test_operator_api_and_callbacks_never_get_cors(cors_gateway: GatewayServer) -> None:
    for path in ("/admin/v1/channels", "/callbacks/fal/hub-1", "/console", "/console/keys"):
        answer = preflight(cors_gateway, path, ALLOWED, method="GET")
        assert not any(h.startswith("access-control-") for h in answer.headers), (path, answer.headers)
    admin = httpx.get(f"{cors_gateway.url}/admin/v1/channels",
                      headers={"Authorization": "Bearer admin-secret", "Origin": ALLOWED})
    assert admin.status_code == 200 and "access-control-allow-origin" not in admin.headers


def test_any_origin_with_a_star(make_gateway) -> None:
    gateway = make_gateway(cors_origins="*")
    answer = preflight(gateway, "/v1/chat/completions", "https://anywhere.example")
    assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in answer.headers
    real = httpx.get(f"{gateway.url}/v1/models", headers={"Origin": "https://anywhere.example",
                                                           "Authorization": f"Bearer {gateway.new_key()}"})
    assert real.status_code == 200 and real.headers["access-control-allow-origin"] == "*"


def test_no_cors_by_default(gateway: GatewayServer) -> None:
    answer = preflight(gateway, "/hub/v1/image", ALLOWED)
    assert answer.status_code == 405  # no preflight handling at all
    assert not any(h.startswith("access-control-") for h in answer.headers)
    real = httpx.get(f"{gateway.url}/api/health", headers={"Origin": ALLOWED})
    assert not any(h.startswith("access-control-") for h in real.headers)


@pytest.mark.parametrize("value", ["https://app.example.com/path", "app.example.com", "https://a.example, ftp://b"])
def test_a_bad_origin_in_the_setting_fails_at_start(value: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="TIDEHUB_CORS_ORIGINS"):
        create_app(Settings(cors_origins=value, engine_enabled=False, data_dir=tmp_path / "data"))
    assert not (tmp_path / "data").exists()  # refused before anything was opened
