"""What anyone can reach without a key stays cheap: upstream callbacks, failed authentications,
redemption attempts, and the key cache behind them."""

from __future__ import annotations

import asyncio
import base64
import secrets
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import httpx
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from conftest import GatewayServer
from tidehub.core.accounts import create_codes
from tidehub.core.auth import Authenticator, create_key
from tidehub.errors import Forbidden, Unauthorized
from tidehub.store import Store


def fal_headers(**changes: str) -> dict[str, str]:
    return {"X-Fal-Webhook-Request-Id": "r1", "X-Fal-Webhook-User-Id": "u",
            "X-Fal-Webhook-Timestamp": str(int(time.time())), "X-Fal-Webhook-Signature": "00" * 64, **changes}


class CountingJWKS:
    """A JWKS endpoint (one real Ed25519 key nobody signs with) that counts its fetches."""

    def __init__(self) -> None:
        public = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        body = orjson.dumps({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "k1",
                                       "x": base64.urlsafe_b64encode(public).rstrip(b"=").decode()}]})
        self.fetches = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.fetches += 1
                time.sleep(0.05)  # slow enough that concurrent callbacks overlap the fetch
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/.well-known/jwks.json"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def jwks() -> Iterator[CountingJWKS]:
    server = CountingJWKS()
    yield server
    server.stop()


@pytest.fixture
def hooked(make_gateway, jwks: CountingJWKS) -> GatewayServer:
    return make_gateway(upstream_callbacks=True, fal_jwks_url=jwks.url)


# -- /callbacks ------------------------------------------------------------------------------

def test_callbacks_route_exists_only_when_callbacks_are_on(gateway: GatewayServer, hooked: GatewayServer) -> None:
    assert httpx.post(f"{gateway.url}/callbacks/fal/hub-1", content=b"{}", headers=fal_headers()).status_code == 404
    assert httpx.post(f"{hooked.url}/callbacks/fal/hub-1", content=b"{}", headers=fal_headers()).status_code == 401


def raw_request(url: str, head: str, timeout: float = 10) -> bytes:
    """Send a request head alone (the body it announces never comes) and read the answer."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(head.encode())
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(4096)
            if not chunk:
                return answer
            answer += chunk
        head_part, _, body = answer.partition(b"\r\n\r\n")
        length = next((int(line.split(b":", 1)[1]) for line in head_part.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        while len(body) < length:  # the answer's own body, which may come in a later packet
            chunk = sock.recv(4096)
            if not chunk:
                break
            body += chunk
        return head_part + b"\r\n\r\n" + body


def test_a_callback_without_signature_headers_is_refused_before_its_body_is_read(hooked: GatewayServer) -> None:
    # 200 MiB announced and never sent: an answer at all means the body was not waited for.
    head = ("POST /callbacks/fal/hub-1 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {200 * 1024 * 1024}\r\n\r\n")
    answer = raw_request(hooked.url, head)
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    assert b"x-fal-webhook" in answer.lower()

    # With the headers, a body announced beyond the cap is refused unread too.
    signed = "".join(f"{k}: {v}\r\n" for k, v in fal_headers().items())
    answer = raw_request(hooked.url, head.replace("Content-Type", signed + "Content-Type"))
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]


def test_a_callback_body_is_capped_while_it_streams(hooked: GatewayServer, jwks: CountingJWKS) -> None:
    def chunks() -> Iterator[bytes]:  # no Content-Length: sent chunked, counted as it arrives
        for _ in range(6):
            yield b"x" * (1024 * 1024)

    answer = httpx.post(f"{hooked.url}/callbacks/fal/hub-1", content=chunks(), headers=fal_headers())
    assert answer.status_code == 413 and "bytes" in answer.text
    assert jwks.fetches == 0  # refused before any signature check
    small = httpx.post(f"{hooked.url}/callbacks/fal/hub-1", content=b"x" * 1024, headers=fal_headers())
    assert small.status_code == 401  # under the cap: checked, and the forgery refused


def test_forged_callbacks_fetch_the_jwks_at_most_once(hooked: GatewayServer, jwks: CountingJWKS) -> None:
    async def forge(n: int) -> list[int]:
        async with httpx.AsyncClient(timeout=30) as c:
            answers = await asyncio.gather(*(
                c.post(f"{hooked.url}/callbacks/fal/hub-{i}", content=b"{}", headers=fal_headers())
                for i in range(n)))
        return [a.status_code for a in answers]

    assert asyncio.run(forge(25)) == [401] * 25  # at once: one fetch, the others wait for it
    assert asyncio.run(forge(25)) == [401] * 25  # later: the keys are fresh, no refetch
    assert jwks.fetches == 1


# -- failed authentications and redemptions --------------------------------------------------

def test_failed_authentications_are_throttled_per_address(make_gateway) -> None:
    gateway = make_gateway(auth_failures_per_minute=5)
    known, fresh = gateway.new_key("known"), gateway.new_key("fresh")
    with gateway.client(known) as c:
        for _ in range(30):  # successes do not count
            assert c.get("/hub/v1/models").status_code == 200
    with gateway.client(f"sk-th-{secrets.token_urlsafe(30)}") as guess:
        for _ in range(5):
            answer = guess.get("/hub/v1/models")
            assert answer.status_code == 401, answer.text
        refused = guess.get("/hub/v1/models")
        assert refused.status_code == 429, refused.text
        assert refused.json()["error_code"] == "too_many_failures" and refused.json()["field"] is None
        assert 0 < int(refused.headers["retry-after"]) <= 60
        ms = guess.get("/ms/v1/endpoints")
        assert ms.status_code == 429 and ms.json()["error"]["code"] == "too_many_failures"
        openai = guess.get("/v1/models")
        assert openai.status_code == 429 and openai.json()["error"]["type"] == "rate_limit_error"
        assert openai.headers["retry-after"]
    with httpx.Client(base_url=gateway.url, headers={"Authorization": "Basic x"}) as malformed:
        assert malformed.get("/hub/v1/models").status_code == 401  # counted, but never looked up
    with gateway.client(known) as c:
        assert c.get("/hub/v1/models").status_code == 200  # a key already in the cache still works
    with gateway.client(fresh) as c:
        assert c.get("/hub/v1/models").status_code == 429  # anything else waits: no lookup for this address


def test_failed_redemptions_are_throttled_per_address(make_gateway) -> None:
    gateway = make_gateway(redeem_failures_per_minute=3)
    [code] = create_codes(gateway.gateway.store, credits=500, count=1)
    with gateway.client(gateway.new_key(credits=0)) as c:
        for i in range(3):
            answer = c.post("/api/user/redemption", json={"code": f"REDEEM-NOPE-NOPE-NOPE-{i:04d}"})
            assert answer.status_code == 400 and answer.json()["code"] == "code_unknown", answer.text
        refused = c.post("/api/user/redemption", json={"code": code})
        assert refused.status_code == 429, refused.text
        assert refused.json() == {"success": False, "code": "too_many_failures", "message": refused.json()["message"]}
        assert "redemption" in refused.json()["message"] and int(refused.headers["retry-after"]) > 0
        assert c.get("/api/user/quota").json()["data"]["remainingQuota"] == 0  # the real code was not used
        assert c.get("/hub/v1/account").status_code == 200  # authentication is a separate count


# -- the key cache ---------------------------------------------------------------------------

def test_random_secrets_do_not_push_real_keys_out_of_the_cache(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'keys.db'}")
    try:
        key = create_key(store, name="real", credits=1)
        auth = Authenticator(store, ttl=600, max_keys=10, max_misses=100)

        async def run() -> None:
            await auth.authenticate(f"Bearer {key.secret}")
            store.keys.revoke(key.key_id, time.time())  # still admitted while it stays cached
            refused = 0
            for i in range(5_000):  # fifty times what either cache holds
                try:
                    await auth.authenticate(f"Bearer sk-th-guess-{i}")
                except Unauthorized:
                    refused += 1
            assert refused == 5_000
            assert (await auth.authenticate(f"Bearer {key.secret}")).key_id == key.key_id

        asyncio.run(run())
    finally:
        store.close()


def test_the_key_cache_is_a_bounded_lru(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'keys.db'}")
    try:
        a, b, c = (create_key(store, name=n, credits=1) for n in "abc")
        auth = Authenticator(store, ttl=600, max_keys=2)

        async def run() -> None:
            for key in (a, b, a, c):  # b is the least recently used when c comes in
                await auth.authenticate(f"Bearer {key.secret}")
            for key in (a, b, c):
                store.keys.revoke(key.key_id, time.time())
            assert (await auth.authenticate(f"Bearer {a.secret}")).key_id == a.key_id  # cached
            assert (await auth.authenticate(f"Bearer {c.secret}")).key_id == c.key_id  # cached
            with pytest.raises(Forbidden):
                await auth.authenticate(f"Bearer {b.secret}")  # evicted, looked up again: revoked

        asyncio.run(run())
    finally:
        store.close()
