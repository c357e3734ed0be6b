"""The SSRF guard refuses every spelling of a non-public address, on submit and at connect time.

Nothing here touches a non-loopback address: names are resolved by a ``StaticResolver`` table,
``check()`` is verified never to open a socket, and the redirect tests run two tiny servers on
127.0.0.1. Server B counts TCP connections, not requests, so "B received nothing" means not even
a connect.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from tidehub.errors import InvalidInput, PayloadTooLarge
from tidehub.core.ssrf import BlockedURL, StaticResolver, URLGuard

TIMEOUT = aiohttp.ClientTimeout(total=5)

DNS = {
    "public.example": "93.184.216.34",
    "public6.example": "2606:2800:220:1:248:1893:25c8:1946",
    "internal.example": "10.0.0.5",
    "mixed.example": ["93.184.216.34", "10.0.0.5"],
    "metadata.example": "169.254.169.254",
    "ula.example": ["2606:2800:220:1:248:1893:25c8:1946", "fd00::1"],
    "localhost": ["127.0.0.1", "::1"],
    "b.internal.test": "127.0.0.1",
    "a.test": "127.0.0.1",
}


def static_dns() -> StaticResolver:
    return StaticResolver(DNS)


@pytest.fixture
def no_connect(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any attempt to open a connection fail the test loudly."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"check() tried to connect: {args[1:]!r}")

    async def refuse_async(*args: object, **kwargs: object) -> None:
        refuse(*args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(asyncio.BaseEventLoop, "create_connection", refuse_async)
    monkeypatch.setattr(asyncio.BaseEventLoop, "sock_connect", refuse_async)


# -- check(): the submit-time rule -------------------------------------------------------------

REFUSED = [
    # loopback in every spelling
    ("http://127.0.0.1/", "loopback address 127.0.0.1"),
    ("HTTP://127.0.0.1:8080/x", "loopback address 127.0.0.1"),
    ("http://127.255.255.254/", "loopback"),
    ("http://2130706433/", "not a canonical IP address"),
    ("http://0x7f.0.0.1/", "not a canonical IP address"),
    ("http://0177.0.0.1/", "not a canonical IP address"),
    ("http://0x7f000001/", "not a canonical IP address"),
    ("http://017700000001/", "not a canonical IP address"),
    ("http://127.1/", "not a canonical IP address"),
    ("http://127.0.0.1./", "not a canonical IP address"),
    ("http://0/", "not a canonical IP address"),
    ("http://\u2460\u2461\u2466.0.0.1/", "loopback address 127.0.0.1"),  # circled digits, NFKC
    ("http://[::1]/", "loopback address ::1"),
    ("http://[::1]:8001/", "loopback address ::1"),
    ("http://[::ffff:127.0.0.1]/", "loopback address 127.0.0.1"),
    ("http://[::ffff:7f00:1]/", "loopback address 127.0.0.1"),
    ("http://[::127.0.0.1]/", "loopback address 127.0.0.1"),  # IPv4-compatible
    ("http://[2002:7f00:1::]/", "loopback address 127.0.0.1"),  # 6to4
    ("http://[64:ff9b::a00:5]/", "private address 10.0.0.5"),  # NAT64
    ("http://localhost/", "loopback"),
    # private ranges
    ("http://10.0.0.5/", "private address 10.0.0.5"),
    ("http://10.255.255.255/", "private address 10.255.255.255"),
    ("http://172.16.0.1/", "private address 172.16.0.1"),
    ("http://172.31.255.254/", "private address 172.31.255.254"),
    ("http://192.168.1.1/", "private address 192.168.1.1"),
    ("http://[::ffff:10.0.0.5]/", "private address 10.0.0.5"),
    ("http://[fc00::1]/", "private address fc00::1"),
    ("http://[fd00:ec2::254]/", "private address fd00:ec2::254"),  # AWS metadata over IPv6
    ("http://internal.example/", "private address 10.0.0.5"),
    ("http://mixed.example/", "private address 10.0.0.5"),
    ("http://ula.example/", "private address fd00::1"),
    # link-local, metadata
    ("http://169.254.169.254/latest/meta-data/", "link-local address 169.254.169.254"),
    ("http://metadata.example/", "link-local address 169.254.169.254"),
    ("http://[fe80::1]/", "link-local address fe80::1"),
    ("http://[fe80::1%25eth0]/", "link-local address fe80::1"),
    # carrier-grade NAT, unspecified, multicast, reserved
    ("http://100.64.0.1/", "carrier-grade NAT"),
    ("http://100.127.255.254/", "carrier-grade NAT"),
    ("http://0.0.0.0/", "unspecified address 0.0.0.0"),
    ("http://[::]/", "unspecified address ::"),
    ("http://224.0.0.1/", "multicast address 224.0.0.1"),
    ("http://239.255.255.250/", "multicast address 239.255.255.250"),
    ("http://[ff02::1]/", "multicast address ff02::1"),
    ("http://240.0.0.1/", "reserved address 240.0.0.1"),
    ("http://255.255.255.255/", "reserved address 255.255.255.255"),
    ("http://198.18.0.1/", "address 198.18.0.1"),
    ("http://[2001:db8::1]/", "address 2001:db8::1"),
    # schemes
    ("file:///etc/passwd", "http or https"),
    ("gopher://127.0.0.1:70/_stats", "http or https"),
    ("ftp://public.example/file", "http or https"),
    ("ws://public.example/", "http or https"),
    ("javascript:alert(1)", "http or https"),
    ("//public.example/x", "http or https"),
    # credentials and disguises
    ("http://example.com@127.0.0.1/", "credentials"),
    ("http://user:secret@public.example/", "credentials"),
    ("http://public.example:80@10.0.0.5/", "credentials"),
    # not a usable URL
    ("http:///path", "host"),
    ("/relative/path", "absolute"),
    ("http://example.com\\@127.0.0.1/", "not a valid URL"),
    ("http://nowhere.example/", "does not resolve"),
    # names the idna codec (and DNS) refuse: empty or over-long labels, over-long names
    ("http://a..public.example/", "empty or over-long label"),
    ("http://.public.example/", "empty or over-long label"),
    (f"http://{'a' * 64}.public.example/", "empty or over-long label"),
    (f"http://{'a.' * 127}public.example/", "empty or over-long label"),
]


@pytest.mark.parametrize(("url", "reason"), REFUSED, ids=[url for url, _ in REFUSED])
async def test_check_refuses(url: str, reason: str, no_connect: None) -> None:
    guard = URLGuard(resolver=static_dns())
    with pytest.raises(BlockedURL) as caught:
        await guard.check(url, "webhook_url")
    error = caught.value
    assert isinstance(error, InvalidInput) and error.status == 422 and error.code == "invalid_input"
    assert error.field == "webhook_url"
    assert error.message.startswith("webhook_url "), error.message
    assert reason in error.message, error.message


ACCEPTED = [
    "http://public.example/",
    "https://public.example:8443/path?q=1#frag",
    "http://PUBLIC.example./x",
    "http://public6.example/",
    "http://93.184.216.34/",
    "https://[2606:2800:220:1:248:1893:25c8:1946]/",
    "http://[::ffff:93.184.216.34]/",
    "http://172.32.0.1/",  # just past 172.16.0.0/12
    "http://100.128.0.1/",  # just past 100.64.0.0/10
    "http://11.0.0.1/",
]


@pytest.mark.parametrize("url", ACCEPTED)
async def test_check_accepts_public_without_connecting(url: str, no_connect: None) -> None:
    await URLGuard(resolver=static_dns()).check(url, "webhook_url")


async def test_refusal_does_not_reveal_the_allow_list() -> None:
    guard = URLGuard(["10.9.8.7:1234", "192.168.0.0/16"], resolver=static_dns())
    with pytest.raises(BlockedURL) as caught:
        await guard.check("http://internal.example/", "input.image_url")
    assert caught.value.message == "input.image_url resolves to a private address 10.0.0.5"
    assert caught.value.field == "input.image_url"


# -- the allow-list ----------------------------------------------------------------------------

async def test_allow_entry_with_port_allows_exactly_that_port() -> None:
    guard = URLGuard.from_config("127.0.0.1:8001", resolver=static_dns())
    await guard.check("http://127.0.0.1:8001/callback", "webhook_url")
    await guard.check("http://[::ffff:127.0.0.1]:8001/", "webhook_url")  # the same socket address
    for url in ("http://127.0.0.1:8002/", "http://127.0.0.1/", "http://127.0.0.2:8001/", "http://[::1]:8001/",
                "http://localhost:8001/"):  # localhost also answers ::1, which is not allowed
        with pytest.raises(BlockedURL):
            await guard.check(url, "webhook_url")


async def test_allow_entries_ipv6_cidr_and_portless() -> None:
    guard = URLGuard.from_config(" [::1]:8001 , 10.0.0.0/8,,fc00::/7 ", resolver=static_dns())
    await guard.check("http://[::1]:8001/", "f")
    await guard.check("http://internal.example:9999/", "f")
    await guard.check("http://mixed.example/", "f")  # public + allowed private
    await guard.check("http://ula.example/", "f")
    with pytest.raises(BlockedURL):
        await guard.check("http://[::1]:8002/", "f")
    with pytest.raises(BlockedURL):
        await guard.check("http://172.16.0.1/", "f")


@pytest.mark.parametrize("value", [None, "", " , "])
async def test_empty_config_allows_only_public(value: str | None) -> None:
    guard = URLGuard.from_config(value, resolver=static_dns())
    await guard.check("http://public.example/", "f")
    with pytest.raises(BlockedURL):
        await guard.check("http://127.0.0.1:8001/", "f")


@pytest.mark.parametrize("entry", ["localhost", "10.0.0.5/8", "127.0.0.1:0", "127.0.0.1:70000", "[::1",
                                   "[::1]8001", "127.0.0.1:http"])
def test_bad_allow_entries_fail_at_startup(entry: str) -> None:
    with pytest.raises(ValueError, match="allow entry"):
        URLGuard.from_config(f"127.0.0.1:8001,{entry}")


# -- session(): the connect-time rule, redirects and rebinding ---------------------------------

@dataclass
class Servers:
    a_port: int
    b_port: int
    b_connections: list[bytes] = field(default_factory=list)

    def a(self, path: str) -> str:
        return f"http://127.0.0.1:{self.a_port}{path}"

    def a_redirect(self, target: str) -> URL:
        return URL(self.a("/redirect")).with_query(to=target)

    @property
    def b(self) -> str:
        return f"http://127.0.0.1:{self.b_port}/"


@pytest.fixture
async def servers() -> AsyncIterator[Servers]:
    """A: an aiohttp app that redirects where told. B: a raw TCP server that counts connections."""
    connections: list[bytes] = []

    async def serve_b(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(b"")
        try:
            connections[-1] = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: close\r\n\r\nB")
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    b_server = await asyncio.start_server(serve_b, "127.0.0.1", 0)

    async def redirect(request: web.Request) -> web.Response:
        return web.Response(status=302, headers={"Location": request.query["to"]})

    async def hop(request: web.Request) -> web.Response:
        return web.Response(status=302, headers={"Location": "/final"})

    async def final(request: web.Request) -> web.Response:
        return web.Response(text="final")

    async def big(request: web.Request) -> web.Response:
        return web.Response(body=b"x" * 100_000)

    async def loop(request: web.Request) -> web.Response:
        return web.Response(status=302, headers={"Location": "/loop"})

    app = web.Application()
    app.router.add_get("/redirect", redirect)
    app.router.add_get("/hop", hop)
    app.router.add_get("/final", final)
    app.router.add_get("/big", big)
    app.router.add_get("/loop", loop)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        a_port = runner.addresses[0][1]
        b_port = b_server.sockets[0].getsockname()[1]
        yield Servers(a_port, b_port, connections)
    finally:
        await runner.cleanup()
        b_server.close()
        await b_server.wait_closed()


def guard_for(servers: Servers, *extra: str, resolver: StaticResolver | None = None) -> URLGuard:
    return URLGuard([f"127.0.0.1:{servers.a_port}", *extra], resolver=resolver or static_dns())


async def test_control_an_allowed_redirect_reaches_b(servers: Servers) -> None:
    """Proves B's counter sees a request when the guard lets one through."""
    guard = guard_for(servers, f"127.0.0.1:{servers.b_port}")
    async with guard.session(timeout=TIMEOUT) as session:
        async with session.get(servers.a_redirect(servers.b)) as response:
            assert response.status == 200 and await response.text() == "B"
    assert len(servers.b_connections) == 1


async def test_redirect_within_allowed_host_is_followed(servers: Servers) -> None:
    guard = guard_for(servers)
    async with guard.session(timeout=TIMEOUT) as session:
        async with session.get(servers.a("/hop")) as response:
            assert response.status == 200 and await response.text() == "final"
            assert [r.status for r in response.history] == [302]
        async with session.get(f"http://a.test:{servers.a_port}/hop") as response:  # through the resolver
            assert await response.text() == "final"


REDIRECT_TARGETS = [
    "http://127.0.0.1:{b}/",
    "http://127.0.0.1:{b}/?via=redirect",
    "http://[::ffff:127.0.0.1]:{b}/",
    "http://[::ffff:7f00:1]:{b}/",
    "http://2130706433:{b}/",
    "http://0x7f.0.0.1:{b}/",
    "http://0177.0.0.1:{b}/",
    "http://127.1:{b}/",
    "http://b.internal.test:{b}/",
    "http://localhost:{b}/",
    "http://public.example@127.0.0.1:{b}/",
]


@pytest.mark.parametrize("target", REDIRECT_TARGETS)
async def test_redirect_to_a_refused_address_never_reaches_it(servers: Servers, target: str) -> None:
    guard = guard_for(servers)
    async with guard.session(field="webhook_url", timeout=TIMEOUT) as session:
        with pytest.raises(BlockedURL) as caught:
            await session.get(servers.a_redirect(target.format(b=servers.b_port)))
    assert caught.value.field == "webhook_url"
    assert "127.0.0.1" in caught.value.message or "canonical" in caught.value.message
    assert servers.b_connections == []


@pytest.mark.parametrize("url", ["http://127.0.0.1:{b}/", "http://[::ffff:127.0.0.1]:{b}/", "http://2130706433:{b}/",
                                 "http://b.internal.test:{b}/"])
async def test_direct_request_to_a_refused_address_never_reaches_it(servers: Servers, url: str) -> None:
    guard = guard_for(servers)
    async with guard.session(timeout=TIMEOUT) as session:
        with pytest.raises(BlockedURL) as caught:
            await session.get(url.format(b=servers.b_port))
    assert caught.value.field is None and caught.value.message.startswith("URL ")
    assert servers.b_connections == []


async def test_dns_rebinding_after_check_is_refused_at_connect(servers: Servers) -> None:
    dns = StaticResolver({"rebind.test": "93.184.216.34"})
    guard = guard_for(servers, resolver=dns)
    url = f"http://rebind.test:{servers.b_port}/"
    await guard.check(url, "webhook_url")  # public at submit time
    dns.table["rebind.test"] = ["127.0.0.1"]  # the attacker's DNS changes its answer
    async with guard.session(field="webhook_url", timeout=TIMEOUT) as session:
        with pytest.raises(BlockedURL, match="loopback address 127.0.0.1"):
            await session.get(url)
    assert servers.b_connections == []


async def test_session_refuses_proxies_and_foreign_connectors(servers: Servers) -> None:
    guard = guard_for(servers)
    with pytest.raises(TypeError):
        guard.session(connector=aiohttp.TCPConnector())
    with pytest.raises(TypeError):
        guard.session(trust_env=True)
    async with guard.session(timeout=TIMEOUT) as session:
        with pytest.raises(ValueError, match="prox"):
            await session.get(servers.b, proxy=servers.a("/"))
    assert servers.b_connections == []


# -- fetch() -----------------------------------------------------------------------------------

async def test_fetch_follows_allowed_redirects(servers: Servers) -> None:
    assert await guard_for(servers).fetch(servers.a("/hop"), "input.image_url", max_bytes=100, timeout=5) == b"final"


async def test_fetch_refuses_redirect_to_b(servers: Servers) -> None:
    with pytest.raises(BlockedURL) as caught:
        await guard_for(servers).fetch(str(servers.a_redirect(servers.b)), "input.image_url", max_bytes=100, timeout=5)
    assert caught.value.field == "input.image_url"
    assert servers.b_connections == []


async def test_fetch_limits(servers: Servers) -> None:
    guard = guard_for(servers)
    with pytest.raises(PayloadTooLarge) as too_big:
        await guard.fetch(servers.a("/big"), "input.image_url", max_bytes=1000, timeout=5)
    assert too_big.value.field == "input.image_url"
    with pytest.raises(InvalidInput, match="redirects"):
        await guard.fetch(servers.a("/loop"), "input.image_url", max_bytes=1000, timeout=5, max_redirects=3)
    with pytest.raises(InvalidInput, match="HTTP 404"):
        await guard.fetch(servers.a("/missing"), "input.image_url", max_bytes=1000, timeout=5)
    with pytest.raises(InvalidInput, match="could not be fetched"):
        await guard.fetch(str(servers.a_redirect("file:///etc/passwd")), "input.image_url", max_bytes=1000, timeout=5)


async def test_default_resolver_is_judged_too(servers: Servers) -> None:
    """Without an injected resolver the guard uses aiohttp's own (getaddrinfo; localhost only here)."""
    guard = URLGuard([f"127.0.0.1:{servers.a_port}"])
    with pytest.raises(BlockedURL, match="loopback"):
        await guard.check(f"http://localhost:{servers.b_port}/", "webhook_url")
    async with guard.session(timeout=TIMEOUT) as session:
        async with session.get(servers.a("/hop")) as response:
            assert await response.text() == "final"
        with pytest.raises(BlockedURL, match="loopback"):
            await session.get(servers.a_redirect(f"http://localhost:{servers.b_port}/"))
    assert servers.b_connections == []
