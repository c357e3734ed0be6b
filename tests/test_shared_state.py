"""Notifications between processes (core/notify.py) against a real Redis, and through a proxy that
takes Redis away and gives it back."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable
from urllib.parse import urlsplit

import httpx

from conftest import free_port, wait_for
from tidehub.core import notify
from tidehub.core.notify import LocalNotifier, RedisNotifier
from tidehub.core.shared import SharedState


async def until(check: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


class Proxy:
    """A TCP relay to Redis on a port of its own, which a test can cut and restore."""

    def __init__(self, target: str) -> None:
        parts = urlsplit(target)
        self.host, self.target_port = parts.hostname or "127.0.0.1", parts.port or 6379
        self.db = parts.path or "/0"
        self.port = free_port()
        self.server: asyncio.AbstractServer | None = None
        self.writers: list[asyncio.StreamWriter] = []

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}{self.db}"

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", self.port, reuse_address=True)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(self.host, self.target_port)
        self.writers += [writer, up_writer]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.close()
        self.writers.clear()
        await self.server.wait_closed()


def test_the_local_notifier_delivers_in_this_process_only_and_from_threads() -> None:
    async def run() -> None:
        local = LocalNotifier()
        got: list[str] = []
        local.subscribe(notify.CANCEL, got.append)
        local.subscribe(notify.CANCEL, lambda _: 1 / 0)  # a failing handler spoils nothing
        local.start()
        local.publish(notify.CANCEL, "t1")
        assert got == ["t1"]
        await asyncio.to_thread(local.publish, notify.CANCEL, "t2")  # the console calls from a thread
        await until(lambda: got == ["t1", "t2"], what="the notification from a thread")
        await local.close()

    asyncio.run(run())


def test_notifications_reach_the_other_processes_through_redis(redis_settings: dict[str, str]) -> None:
    async def run() -> None:
        url, prefix = redis_settings["redis_url"], redis_settings["redis_prefix"]
        a, b = RedisNotifier(SharedState(url, prefix=prefix)), RedisNotifier(SharedState(url, prefix=prefix))
        stranger = RedisNotifier(SharedState(url, prefix=prefix + "other:"))
        got: dict[str, list[str]] = {"a": [], "b": [], "stranger": []}
        for name, n in (("a", a), ("b", b), ("stranger", stranger)):
            n.subscribe(notify.CANCEL, got[name].append)
            n.start()
        try:
            await until(lambda: a.listening and b.listening and stranger.listening, what="subscriptions")
            a.publish(notify.CANCEL, "t1")
            assert got["a"] == ["t1"]  # here at once
            await until(lambda: got["b"] == ["t1"], what="the other process to hear it")
            await asyncio.to_thread(b.publish, notify.CANCEL, "t2")
            await until(lambda: got["a"] == ["t1", "t2"], what="a notification published from a thread")
            # The CLI's one-off announcement reaches every process of the prefix.
            assert await asyncio.to_thread(notify.announce, url, prefix, notify.CANCEL, "t3")
            await until(lambda: got["a"][-1:] == ["t3"] and got["b"][-1:] == ["t3"], what="the announcement")
            assert got["a"] == ["t1", "t2", "t3"] and got["b"] == ["t1", "t2", "t3"]  # nothing twice
            assert got["stranger"] == []  # another deployment's prefix hears nothing
        finally:
            for n in (a, b, stranger):
                await n.close()

    asyncio.run(run())


def test_a_notifier_whose_redis_goes_away_keeps_working_here_and_recovers(redis_settings: dict[str, str]) -> None:
    async def run() -> None:
        proxy = Proxy(redis_settings["redis_url"])
        await proxy.start()
        prefix = redis_settings["redis_prefix"]
        cut_off = RedisNotifier(SharedState(proxy.url, prefix=prefix))
        other = RedisNotifier(SharedState(redis_settings["redis_url"], prefix=prefix))
        got: list[str] = []
        resyncs: list[str] = []
        cut_off.subscribe(notify.CANCEL, got.append)
        cut_off.subscribe(notify.RESYNC, resyncs.append)
        cut_off.start()
        other.start()
        try:
            await until(lambda: cut_off.listening and other.listening, what="subscriptions")
            assert len(resyncs) == 1
            await proxy.stop()
            await until(lambda: not cut_off.listening, what="the lost link to be noticed")
            cut_off.publish(notify.CANCEL, "local")  # never raises; this process still hears itself
            assert got == ["local"]
            assert await cut_off.shared.status() == "error"
            await proxy.start()
            await until(lambda: cut_off.listening, what="the link to come back")
            assert len(resyncs) == 2  # holders of shared state read it afresh
            other.publish(notify.CANCEL, "after")
            await until(lambda: got == ["local", "after"], what="notifications again after the outage")
            assert await cut_off.shared.status() == "ok"
        finally:
            await cut_off.close()
            await other.close()
            await proxy.stop()

    asyncio.run(run())


def test_a_notifier_pointed_at_a_closed_port_still_delivers_here() -> None:
    async def run() -> None:
        n = RedisNotifier(SharedState(f"redis://127.0.0.1:{free_port()}/0"))
        got: list[str] = []
        n.subscribe(notify.WAKE, got.append)
        n.start()
        n.publish(notify.WAKE)
        await asyncio.sleep(0.3)  # let the sender and listener fail against the closed port
        n.publish(notify.WAKE)
        assert got == ["", ""] and not n.listening
        await n.close()

    asyncio.run(run())


# -- routing state while Redis is unreachable: each process on its own -----------------------------

def _chat(client) -> int:  # type: ignore[no-untyped-def]
    return client.post("/v1/chat/completions", json={"model": "gpt-4", "messages": [{"role": "user", "content": "x"}]}
                       ).status_code


def test_with_redis_unreachable_a_channel_rpm_holds_per_process(make_gateway, sim) -> None:
    from conftest import SIM_KEY

    gateway = make_gateway(redis_url=f"redis://127.0.0.1:{free_port()}/0", more_upstreams=False, openai_key="",
                           secret_key="test-secret-key", relay_attempts=1)
    gateway.gateway.channels.add("paced", adapter="openai", base_url=f"{sim.base_url}/v1", secret=SIM_KEY, rpm=3)
    gateway.gateway.router.reload()
    with gateway.client(gateway.new_key()) as c:
        assert [_chat(c) for _ in range(5)] == [200, 200, 200, 503, 503]


def test_with_redis_unreachable_a_breaker_opens_and_probes_on_its_own(make_gateway, sim) -> None:
    assert httpx.put(f"{sim.base_url}/_sim/channels/alone-down", json={"outage": True}, timeout=5).status_code in (200, 201)
    gateway = make_gateway(redis_url=f"redis://127.0.0.1:{free_port()}/0", more_upstreams=False, openai_key="",
                           secret_key="test-secret-key", relay_attempts=1, breaker_failures=2,
                           breaker_cool_down_s=100)  # 2 s at the tests' time scale
    gateway.gateway.channels.add("alone", adapter="openai", base_url=f"{sim.base_url}/v1", secret="alone-down")
    gateway.gateway.router.reload()

    def errors() -> int:
        return httpx.get(f"{sim.base_url}/_sim/stats", timeout=5).json()["channels"]["alone-down"]["outage_errors"]

    with gateway.client(gateway.new_key()) as c:
        assert [_chat(c) for _ in range(3)] == [502, 502, 503]
        assert errors() == 2
        # After the cool-down this process takes the probe grant itself, as there is no Redis to ask.
        wait_for(lambda: _chat(c) == 502, timeout=20, interval=0.1, what="the probe after the cool-down")
        assert errors() == 3
