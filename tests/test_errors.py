"""Client mistakes get a clear 4xx in the envelope of the dialect they came through; never a 500."""

from __future__ import annotations

import httpx
import pytest

from conftest import GatewayServer


def hub_error(resp: httpx.Response, status: int, code: str | None = None) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error_code", "error_message", "field"}, body
    if code:
        assert body["error_code"] == code, body
    assert body["error_message"]
    return body


def ms_error(resp: httpx.Response, status: int, code: str | None = None) -> dict:
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    if code:
        assert error["code"] == code, error
    assert error["message"]
    return error


def test_validation_names_field_and_reason(client: httpx.Client) -> None:
    body = hub_error(client.post("/hub/v1/video", json={"model": "veo-3.1", "input": {"prompt": "x", "duration": "9s"}}),
                     422, "invalid_input")
    assert body["field"] == "input.duration"
    assert "input.duration" in body["error_message"] and "4s" in body["error_message"]

    missing = hub_error(client.post("/hub/v1/image", json={"model": "nano-banana", "input": {}}), 422)
    assert missing["field"] == "input.prompt" and "required" in missing["error_message"]

    wrong_type = hub_error(client.post("/hub/v1/image", json={"model": "nano-banana",
                                                              "input": {"prompt": "x", "num_images": "two"}}), 422)
    assert wrong_type["field"] == "input.num_images" and "integer" in wrong_type["error_message"]

    unknown = hub_error(client.post("/hub/v1/image", json={"model": "nano-banana",
                                                           "input": {"prompt": "x", "colour": "red"}}), 422)
    assert unknown["field"] == "input.colour" and "unknown field" in unknown["error_message"]

    ms = ms_error(client.post("/ms/v1/run/google/veo-3.1/text-to-video", json={"input": {"prompt": 5}}), 422,
                  "invalid_input")
    assert ms["field"] == "input.prompt"

    no_input = hub_error(client.post("/hub/v1/image", json={"model": "nano-banana"}), 422)
    assert no_input["field"] == "input"
    no_model = hub_error(client.post("/hub/v1/image", json={"input": {"prompt": "x"}}), 422)
    assert no_model["field"] == "model"


def test_nothing_is_queued_on_invalid_input(gateway: GatewayServer, client: httpx.Client) -> None:
    before = gateway.gateway.store.tasks.count(["queued", "running", "succeeded", "failed"])
    client.post("/hub/v1/image", json={"model": "nano-banana", "input": {"prompt": 1}})
    assert gateway.gateway.store.tasks.count(["queued", "running", "succeeded", "failed"]) == before


def test_unknown_model_or_slug_suggests_close_matches(client: httpx.Client) -> None:
    body = hub_error(client.post("/hub/v1/image", json={"model": "nano-banan", "input": {"prompt": "x"}}), 404, "not_found")
    assert "nano-banana" in body["error_message"] and body["field"] == "model"
    assert "nano-banana-pro" in hub_error(client.get("/hub/v1/models/nano-banana-prp"), 404)["error_message"]
    error = ms_error(client.post("/ms/v1/run/google/veo-3.1/text-to-vide", json={"input": {"prompt": "x"}}), 404)
    assert "google/veo-3.1/text-to-video" in error["message"]
    ms_error(client.get("/ms/v1/endpoints/nope/nothing"), 404)


def test_wrong_capability_endpoint(client: httpx.Client) -> None:
    body = hub_error(client.post("/hub/v1/video", json={"model": "nano-banana", "input": {"prompt": "x"}}), 400,
                     "wrong_capability")
    assert "/hub/v1/image" in body["error_message"]


def test_malformed_body_content_type_and_size(client: httpx.Client) -> None:
    bad_json = client.post("/hub/v1/image", content=b'{"model": "nano-banana", "input": {', headers={"Content-Type": "application/json"})
    assert "not valid JSON" in hub_error(bad_json, 400, "bad_request")["error_message"]
    hub_error(client.post("/hub/v1/image", content=b"[1, 2]", headers={"Content-Type": "application/json"}), 400)
    hub_error(client.post("/hub/v1/image", content=b"", headers={"Content-Type": "application/json"}), 400)
    hub_error(client.post("/hub/v1/image", content=b"model=x", headers={"Content-Type": "application/x-www-form-urlencoded"}),
              415, "unsupported_media_type")
    huge = {"model": "nano-banana", "input": {"prompt": "x" * (2 * 1024 * 1024)}}
    hub_error(client.post("/hub/v1/image", json=huge), 413, "payload_too_large")
    ms_error(client.post("/ms/v1/run/google/nano-banana/text-to-image", content=b"{oops",
                         headers={"Content-Type": "application/json"}), 400)


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer sk-th-not-a-real-key"}, {"Authorization": "Basic abc"}])
def test_missing_or_bad_key(gateway: GatewayServer, headers: dict) -> None:
    with httpx.Client(base_url=gateway.url, headers=headers) as anon:
        hub_error(anon.post("/hub/v1/image", json={"model": "nano-banana", "input": {"prompt": "x"}}), 401, "unauthorized")
        hub_error(anon.get("/hub/v1/models"), 401)
        ms_error(anon.get("/ms/v1/endpoints"), 401, "unauthorized")
        ms_error(anon.get("/ms/v1/tasks/ms-123"), 401)
        assert anon.get("/api/health").status_code == 200


def test_task_of_another_account_is_not_found(gateway: GatewayServer, client: httpx.Client) -> None:
    task_id = client.post("/hub/v1/image", json={"model": "nano-banana", "input": {"prompt": "x"}}).json()["task_id"]
    with gateway.client(gateway.new_key("other")) as other:
        hub_error(other.get(f"/hub/v1/tasks/{task_id}"), 404, "not_found")
        ms_error(other.get(f"/ms/v1/tasks/{task_id}"), 404)
        hub_error(other.post(f"/hub/v1/tasks/{task_id}/cancel"), 404)
    assert client.get(f"/hub/v1/tasks/{task_id}").status_code == 200


def test_unknown_routes_and_methods(client: httpx.Client) -> None:
    hub_error(client.post("/hub/v1/painting", json={"model": "nano-banana", "input": {"prompt": "x"}}), 404)
    hub_error(client.get("/hub/v1/image"), 405)
    ms_error(client.delete("/ms/v1/endpoints"), 405)
    hub_error(client.get("/hub/v1/tasks/hub-does-not-exist"), 404)
    hub_error(client.get("/hub/v1/models", params={"capability": "smell"}), 422)
    # Paths no route of the dialect matches: the router's own 404 and 405, in the dialect's envelope.
    assert "no such route: GET /hub/v1/no/such/thing" in hub_error(
        client.get("/hub/v1/no/such/thing"), 404, "not_found")["error_message"]
    assert ms_error(client.get("/ms/v1/no/such/thing"), 404, "not_found")["message"].startswith("no such route")
    hub_error(client.delete("/hub/v1/tasks/hub-x/cancel"), 405, "method_not_allowed")
    relayed = client.get("/v1/no/such/thing")
    assert relayed.status_code == 404 and relayed.json()["error"]["message"].startswith("no such route"), relayed.text
