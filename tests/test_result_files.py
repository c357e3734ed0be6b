"""Result files: fetched from the upstream only through the SSRF guard, and served so that what an
upstream declares cannot run script on the gateway's origin."""

from __future__ import annotations

import socket
import threading
import uuid
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from conftest import GatewayServer, wait_task

IMAGE = {"model": "nano-banana", "input": {"prompt": "a lighthouse"}}
PNG_1PX = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==")


class Internal:
    """A service only the gateway's machine can reach; counts every TCP connection made to it."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                conn.recv(65536)
                body = b"internal secret"
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: "
                             + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)

    def stop(self) -> None:
        self.sock.close()


@pytest.fixture
def internal() -> Iterator[Internal]:
    server = Internal()
    yield server
    server.stop()


def upstream_account(sim, **knobs: object) -> str:
    """A simulated fal account of its own (so the shared one keeps its knobs), with ``knobs`` set."""
    key = f"edge-{uuid.uuid4().hex[:8]}"
    assert httpx.put(f"{sim.base_url}/_sim/channels/{key}", json=knobs).status_code == 201
    return key


def asset_files(gateway: GatewayServer) -> list[Path]:
    root = gateway.gateway.assets.root
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


@pytest.mark.parametrize("where", ["loopback", "loopback-name", "metadata", "private"])
def test_a_result_url_at_an_internal_address_fails_the_task_and_copies_nothing(
        make_gateway, sim, internal: Internal, where: str) -> None:
    url = {"loopback": f"http://127.0.0.1:{internal.port}/secret.png",
           "loopback-name": f"http://localhost:{internal.port}/secret.png",
           "metadata": "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
           "private": "http://10.0.0.7/secret.png"}[where]
    gateway = make_gateway(more_upstreams=False, fal_key=upstream_account(sim, result_url=url))
    with gateway.client(gateway.new_key()) as c:
        task_id = c.post("/hub/v1/image", json=IMAGE).json()["task_id"]
        task = wait_task(c, f"/hub/v1/tasks/{task_id}", lambda b: b["ready"], timeout=30)
        assert task["status"] == "failed", task
        assert task["error_code"] == "asset_url_refused", task
        assert "may not fetch" in task["error_message"] and "address" in task["error_message"], task
        assert c.get("/hub/v1/account").json()["spent"] == 0  # a failed task costs nothing
    assert internal.connections == 0
    assert gateway.gateway.store.assets.of_task(task_id) == []
    assert asset_files(gateway) == []


def test_inline_data_urls_are_still_accepted(make_gateway, sim) -> None:
    gateway = make_gateway(more_upstreams=False,
                           fal_key=upstream_account(sim, result_url=f"data:image/png;base64,{PNG_1PX}"))
    with gateway.client(gateway.new_key()) as c:
        task_id = c.post("/hub/v1/image", json=IMAGE).json()["task_id"]
        task = wait_task(c, f"/hub/v1/tasks/{task_id}", lambda b: b["ready"], timeout=30)
        assert task["status"] == "completed", task
        url = task["data"]["images"][0]["url"]
        assert url.startswith(f"{gateway.url}/files/")
        assert httpx.get(url).content.startswith(b"\x89PNG")


def test_the_test_gateway_allows_only_the_simulators_port(gateway: GatewayServer, sim) -> None:
    assert gateway.settings.ssrf_allow == f"127.0.0.1:{httpx.URL(sim.base_url).port}"


def finished_file(gateway: GatewayServer, key: str | None = None) -> httpx.Response:
    with gateway.client(gateway.new_key()) as c:
        task_id = c.post("/hub/v1/image", json=IMAGE).json()["task_id"]
        task = wait_task(c, f"/hub/v1/tasks/{task_id}", lambda b: b["ready"], timeout=30)
        assert task["status"] == "completed", task
        url = httpx.URL(task["data"]["images"][0]["url"])
        return httpx.get(f"{gateway.url}{url.raw_path.decode()}")


@pytest.mark.parametrize("declared", ["text/html", "image/svg+xml", "application/json", "text/plain",
                                      "application/x-unknown"])
def test_files_that_could_script_are_downloads(make_gateway, sim, declared: str) -> None:
    gateway = make_gateway(more_upstreams=False, fal_key=upstream_account(sim, result_content_type=declared))
    answer = finished_file(gateway)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith(declared)
    assert answer.headers["content-disposition"].startswith("attachment"), answer.headers
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert "sandbox" in answer.headers["content-security-policy"]
    assert "default-src 'none'" in answer.headers["content-security-policy"]


def test_media_files_are_shown_inline_but_sandboxed(gateway: GatewayServer) -> None:
    answer = finished_file(gateway)
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("image/")
    assert answer.headers["content-disposition"].startswith("inline")
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert "sandbox" in answer.headers["content-security-policy"]


def test_file_links_can_live_on_an_origin_of_their_own(make_gateway) -> None:
    gateway = make_gateway(files_url="https://files.example.net/")
    with gateway.client(gateway.new_key()) as c:
        task_id = c.post("/hub/v1/image", json=IMAGE).json()["task_id"]
        task = wait_task(c, f"/hub/v1/tasks/{task_id}", lambda b: b["ready"], timeout=30)
        url = httpx.URL(task["data"]["images"][0]["url"])
        assert str(url).startswith("https://files.example.net/files/"), url
        image = c.post("/v1/images/generations", json={"model": "dall-e-3", "prompt": "a hat",
                                                       "response_format": "url"}).json()
        assert image["data"][0]["url"].startswith("https://files.example.net/files/"), image
    # That origin is routed to this gateway, whose /files route serves the same path.
    assert httpx.get(f"{gateway.url}{url.raw_path.decode()}").status_code == 200


def test_a_relayed_image_at_an_internal_address_is_a_502(make_gateway, sim, internal: Internal) -> None:
    key = upstream_account(sim, result_url=f"http://127.0.0.1:{internal.port}/secret.png")
    gateway = make_gateway(more_upstreams=False, openai_key=key)
    with gateway.client(gateway.new_key()) as c:
        answer = c.post("/v1/images/generations", json={"model": "dall-e-3", "prompt": "a hat", "response_format": "url"})
        assert answer.status_code == 502, answer.text
        error = answer.json()["error"]
        assert error["code"] == "asset_url_refused" and "loopback" in error["message"], error
        assert c.get("/hub/v1/account").json()["spent"] == 0
    assert internal.connections == 0
    assert asset_files(gateway) == []
