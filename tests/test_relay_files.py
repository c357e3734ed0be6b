"""Result files of relayed calls can be downloaded the moment the answer arrives (most clients
fetch at once), on SQLite and PostgreSQL.

The relay records its calls in batches; the tests make that batch wait seconds
(``relay_flush_s``), so a file that depended on it would be a 404 when fetched straight away."""

from __future__ import annotations

import asyncio
import io
import threading
from typing import Any, Iterator

import httpx
import openai
import pytest
import uvicorn
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from conftest import free_socket, sim_allowance, wait_for

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

SLOW_BATCH = {"relay_flush_s": 3.0}


def _png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 80, 20)).save(out, format="PNG")
    return out.getvalue()


class ImageEditUpstream:
    """An OpenAI-compatible server whose ``/v1/images/edits`` answers with links to its own files,
    as dall-e-2 does (the simulator's gpt-image-1 edits answer base64, which leaves nothing to link)."""

    def __init__(self) -> None:
        self.sock = free_socket()
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.files = {"edit-0.png": _png(64, 48), "edit-1.png": _png(32, 32)}
        app = Starlette(routes=[Route("/v1/images/edits", self.edits, methods=["POST"]),
                                Route("/files/{name}", self.file, methods=["GET"])])
        self._server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self._thread = threading.Thread(target=lambda: asyncio.run(self._server.serve(sockets=[self.sock])),
                                        daemon=True)

    async def edits(self, request: Request) -> JSONResponse:
        form = await request.form()
        await form.close()
        return JSONResponse({"created": 1700000000, "data": [{"url": f"{self.url}/files/{name}"} for name in self.files]})

    async def file(self, request: Request) -> Response:
        return Response(self.files[request.path_params["name"]], media_type="image/png")

    def start(self) -> "ImageEditUpstream":
        self._thread.start()
        wait_for(lambda: self._server.started, timeout=20, what="upstream start")
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=20)
        self.sock.close()


@pytest.fixture
def edit_upstream() -> Iterator[ImageEditUpstream]:
    upstream = ImageEditUpstream().start()
    yield upstream
    upstream.stop()


def downloaded(url: str) -> Image.Image:
    resp = httpx.get(url, timeout=30)
    assert resp.status_code == 200, f"{url}: HTTP {resp.status_code} {resp.text[:200]}"
    return Image.open(io.BytesIO(resp.content))


def test_generated_image_urls_serve_at_once(make_gateway: Any, database_url: str) -> None:
    gateway = make_gateway(database_url, **SLOW_BATCH)
    key = gateway.new_key()
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0, timeout=30) as client:
        for size in ("1024x1024", "1792x1024"):
            result = client.images.generate(model="dall-e-3", prompt="a lighthouse at dusk", size=size)
            url = result.data[0].url
            assert url.startswith(gateway.url + "/files/")
            assert downloaded(url).size == tuple(int(n) for n in size.split("x"))


def test_edited_image_urls_serve_at_once(make_gateway: Any, sim: Any, edit_upstream: ImageEditUpstream,
                                         database_url: str) -> None:
    gateway = make_gateway(database_url, openai_key="", secret_key="relay-files-secret", more_upstreams=False,
                           ssrf_allow=f"{sim_allowance(sim.base_url)},{sim_allowance(edit_upstream.url)}",
                           **SLOW_BATCH)
    gateway.gateway.channels.add("editor", adapter="openai", base_url=f"{edit_upstream.url}/v1", secret="k")
    gateway.gateway.router.reload()
    key = gateway.new_key()
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0, timeout=30) as client:
        result = client.images.edit(model="gpt-image-1", image=("source.png", _png(40, 40), "image/png"),
                                    prompt="make it blue")
    urls = [item.url for item in result.data]
    assert len(urls) == 2 and all(url.startswith(gateway.url + "/files/") for url in urls)
    assert [downloaded(url).size for url in urls] == [(64, 48), (32, 32)]
    # The call itself is still recorded (with the wallet's batch), and the files are tied to it.
    with gateway.client(key) as http:
        rows = wait_for(lambda: http.get("/ms/v1/usage/records").json()["data"], timeout=15, what="the call's record")
    assert rows[0]["model"] == "gpt-image-1" and rows[0]["status"] == "succeeded"
    files = gateway.gateway.store.assets.of_task(rows[0]["task_id"])
    assert sorted(f["size"] for f in files) == sorted(len(data) for data in edit_upstream.files.values())

