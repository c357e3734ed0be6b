"""File and CPU work stays off the event loop: result copies (downloaded and inline), the sweep of
expired files, and the router's reload of channels (which decrypts every credential).

Each test makes the slow part slow for real (a disk write that does not return until the test
lets it go) and checks that, meanwhile, the loop still answers an HTTP request. No timings: a
write on the loop would hold the loop, and the test would see the copy finish without the write
ever having been held off it."""

from __future__ import annotations

import asyncio
import base64
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import aiohttp
import pytest
from aiohttp import web

from tidehub.catalog import Catalog
from tidehub.config import Settings
from tidehub.core import assets as assets_module
from tidehub.core.assets import AssetStore
from tidehub.core.channels import ChannelService
from tidehub.core.routing import Router
from tidehub.core.secrets_box import SecretBox
from tidehub.core.ssrf import URLGuard
from tidehub.store import Store
from tidehub.store.schema import metadata

FILE = bytes(range(256)) * 4096 * 8  # 8 MiB: 32 chunks of the copy


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store(f"sqlite:///{tmp_path / 'loop.db'}", run_migrations=False)
    metadata.create_all(store.engine)
    yield store
    store.close()


class HeldDisk:
    """Result files whose first write does not return until ``release`` (a disk that stalls), and
    that note the thread of every write."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.loop_thread = threading.current_thread()
        self.threads: list[threading.Thread] = []
        self.held = threading.Event()
        self.release = threading.Event()
        real = assets_module._create
        disk = self

        class File:
            def __init__(self, path: Path) -> None:
                self.fh = real(path)

            def write(self, data: bytes) -> int:
                disk.threads.append(threading.current_thread())
                if threading.current_thread() is not disk.loop_thread and not disk.held.is_set():
                    disk.held.set()
                    disk.release.wait(60)
                return self.fh.write(data)

            def close(self) -> None:
                self.fh.close()

            def __enter__(self) -> "File":
                return self

            def __exit__(self, *exc: Any) -> None:
                self.close()

        monkeypatch.setattr(assets_module, "_create", File)

    async def while_held(self, work: "asyncio.Task[Any]", ping: str) -> Any:
        """Wait until a write is held off the loop (or ``work`` ended without one), ping the loop
        over HTTP, then let the write go and return what ``work`` returned."""
        held = asyncio.ensure_future(asyncio.to_thread(self.held.wait, 60))
        try:
            await asyncio.wait({work, held}, return_when=asyncio.FIRST_COMPLETED, timeout=60)
            assert self.held.is_set(), "the file was written on the event loop"
            async with aiohttp.ClientSession() as http, http.get(ping) as resp:
                assert await resp.text() == "pong"  # the loop answers while the disk is stuck
            assert not work.done()
        finally:
            self.held.set()
            self.release.set()
            await held
        result = await work
        assert self.threads and self.loop_thread not in self.threads
        return result


@pytest.fixture
async def upstream() -> Any:
    """A file server on a free loopback port, on this test's loop: ``/result.bin`` and ``/ping``."""
    async def result(_: web.Request) -> web.Response:
        return web.Response(body=FILE, content_type="application/octet-stream")

    async def ping(_: web.Request) -> web.Response:
        return web.Response(text="pong")

    app = web.Application()
    app.router.add_get("/result.bin", result)
    app.router.add_get("/ping", ping)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


def asset_store(store: Store, tmp_path: Path, upstream: str) -> AssetStore:
    settings = Settings(data_dir=tmp_path)
    return AssetStore(store, settings, URLGuard([upstream.removeprefix("http://")]))


async def test_a_result_copy_is_written_off_the_loop(store: Store, tmp_path: Path, upstream: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    disk = HeldDisk(monkeypatch)
    files = asset_store(store, tmp_path, upstream)
    try:
        copy = asyncio.ensure_future(files.mirror("task-1", {"file": {"url": f"{upstream}/result.bin"}}))
        output, rows = await disk.while_held(copy, f"{upstream}/ping")
    finally:
        await files.close()
    assert rows[0]["size"] == len(FILE) and output["file"]["file_size"] == len(FILE)
    assert files.path_of(rows[0]["token"], rows[0]["name"]).read_bytes() == FILE


async def test_an_inline_result_is_decoded_and_written_off_the_loop(store: Store, tmp_path: Path, upstream: str,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    disk = HeldDisk(monkeypatch)
    files = asset_store(store, tmp_path, upstream)
    inline = "data:application/octet-stream;base64," + base64.b64encode(FILE).decode()
    copy = asyncio.ensure_future(files.mirror("task-2", {"file": {"url": inline}}))
    _, rows = await disk.while_held(copy, f"{upstream}/ping")
    assert files.path_of(rows[0]["token"], rows[0]["name"]).read_bytes() == FILE


async def test_the_sweep_removes_files_off_the_loop(store: Store, tmp_path: Path, upstream: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    files = asset_store(store, tmp_path, upstream)
    _, rows = await files.mirror("task-3", {"file": {"url": "data:text/plain;base64,aGk="}})
    for row in rows:
        row["expires_at"] = time.time() - 1
    await store.call(store.assets.insert, rows)
    loop_thread = threading.current_thread()
    removed_in: list[threading.Thread] = []
    real = assets_module.shutil.rmtree

    def rmtree(path: Any, **kwargs: Any) -> None:
        removed_in.append(threading.current_thread())
        real(path, **kwargs)

    monkeypatch.setattr(assets_module.shutil, "rmtree", rmtree)
    assert await files.sweep() == 1
    assert removed_in and loop_thread not in removed_in
    assert not files.path_of(rows[0]["token"], rows[0]["name"]).exists()


async def test_the_router_reads_and_decrypts_channels_off_the_loop(store: Store, monkeypatch: pytest.MonkeyPatch
                                                                   ) -> None:
    channels = ChannelService(store, Catalog([]), SecretBox("loop-test"), {"openai": lambda url, secret: object()})
    router = Router(channels)
    channels.add("first", adapter="openai", base_url="http://127.0.0.1:9/v1", secret="sk-1")
    loop_thread = threading.current_thread()
    opened_in: list[threading.Thread] = []
    real = channels.box.open

    def open_secret(token: str) -> str:
        opened_in.append(threading.current_thread())
        return real(token)

    monkeypatch.setattr(channels.box, "open", open_secret)
    await router.refresh()  # the channel added since the router was built
    assert [c.name for c in router.channels.values()] == ["first"]
    assert router.channels[next(iter(router.channels))].secret == "sk-1"
    await router.refresh(force=True)
    assert len(opened_in) == 2 and loop_thread not in opened_in


async def test_a_copy_is_written_in_a_few_hops_off_the_loop_and_an_oversized_one_leaves_nothing(
        store: Store, tmp_path: Path, upstream: str) -> None:
    files = asset_store(store, tmp_path, upstream)
    hops: list[int] = []
    write = files._write

    def counted(fh: Any, path: Path, chunks: list[bytes], **kw: Any) -> Any:
        hops.append(sum(map(len, chunks)))
        return write(fh, path, chunks, **kw)

    files._write = counted  # type: ignore[method-assign]
    try:
        _, rows = await files.mirror("task-1", {"file": {"url": f"{upstream}/result.bin"}})
        assert files.path_of(rows[0]["token"], rows[0]["name"]).read_bytes() == FILE
        # Chunks gathered up to WRITE_BYTES between hops to a worker thread, not one hop a chunk.
        assert sum(hops) == len(FILE) and len(hops) <= len(FILE) // assets_module.WRITE_BYTES + 1, hops

        files.max_bytes = len(FILE) // 2
        with pytest.raises(Exception) as refused:
            await files.mirror("task-2", {"file": {"url": f"{upstream}/result.bin"}})
        assert getattr(refused.value, "code", None) == "asset_too_large"
        # Only the first copy's directory is left: the refused one removed what it wrote.
        assert [p.name for p in files.root.glob("*/*")] == [rows[0]["token"]]
    finally:
        await files.close()
