"""The fal adapter follows only URLs on its channel's origin: the key each call carries never goes to
a host a submit answer names."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp import web

from tidehub.providers.fal import FalAdapter

KEY = "fal-secret-key"


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


@pytest.fixture
async def servers() -> AsyncIterator[dict[str, Any]]:
    """A fal look-alike whose submit answer points its URLs at a second server ("elsewhere")."""
    seen: dict[str, list[tuple[str, str | None]]] = {"fal": [], "elsewhere": []}
    where: dict[str, str] = {}

    def recorder(name: str, answer: dict[str, Any]) -> Any:
        async def handle(request: web.Request) -> web.Response:
            seen[name].append((f"{request.method} {request.path}", request.headers.get("Authorization")))
            return web.json_response(answer)
        return handle

    elsewhere = web.Application()
    elsewhere.router.add_route("*", "/{tail:.*}", recorder("elsewhere", {"status": "COMPLETED", "logs": []}))
    other_runner, other_url = await serve(elsewhere)
    where["elsewhere"] = other_url

    fal = web.Application()

    async def submit(request: web.Request) -> web.Response:
        seen["fal"].append((f"{request.method} {request.path}", request.headers.get("Authorization")))
        target = request.query.get("target", "elsewhere")
        root = where.get(target, target)
        return web.json_response({
            "request_id": "req-1",
            "status_url": f"{root}/fal-ai/flux/requests/req-1/status",
            "response_url": f"{root}/fal-ai/flux/requests/req-1",
            "cancel_url": f"{root}/fal-ai/flux/requests/req-1/cancel",
        })

    fal.router.add_post("/fal-ai/flux/dev", submit)
    fal.router.add_route("*", "/fal-ai/flux/requests/{tail:.*}",
                         recorder("fal", {"status": "COMPLETED", "logs": [], "images": []}))
    fal_runner, fal_url = await serve(fal)
    where["fal"] = fal_url
    try:
        yield {"seen": seen, "fal": fal_url, "elsewhere": other_url}
    finally:
        await fal_runner.cleanup()
        await other_runner.cleanup()


@pytest.mark.parametrize("target", ["elsewhere", "http://169.254.169.254", "not a url", "http://[::1"])
async def test_urls_off_the_channels_origin_are_replaced_by_its_own(servers: dict[str, Any], target: str) -> None:
    adapter = FalAdapter(servers["fal"], KEY, timeout_s=5)
    try:
        # The look-alike reads from the query where its answer's URLs point.
        job = await adapter.submit(f"fal-ai/flux/dev?target={quote(target, safe='')}", {"prompt": "a cat"})
        for name in ("status_url", "response_url", "cancel_url"):
            assert job.data[name].startswith(servers["fal"] + "/fal-ai/flux/requests/req-1"), job.data
        state = await adapter.status(job)
        assert state.state == "completed"
        await adapter.result(job)
    finally:
        await adapter.close()
    assert servers["seen"]["elsewhere"] == []  # the key never left the channel's origin
    assert [path for path, _ in servers["seen"]["fal"]] == [
        "POST /fal-ai/flux/dev", "GET /fal-ai/flux/requests/req-1/status", "GET /fal-ai/flux/requests/req-1"]
    assert all(auth == f"Key {KEY}" for _, auth in servers["seen"]["fal"])


async def test_urls_on_the_channels_origin_are_followed_as_fal_advises(servers: dict[str, Any]) -> None:
    adapter = FalAdapter(servers["fal"], KEY, timeout_s=5)
    try:
        job = await adapter.submit("fal-ai/flux/dev?target=fal", {"prompt": "a cat"})
        assert job.data["status_url"] == servers["fal"] + "/fal-ai/flux/requests/req-1/status"
        assert (await adapter.status(job)).state == "completed"
    finally:
        await adapter.close()
    assert servers["seen"]["elsewhere"] == []
