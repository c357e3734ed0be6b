"""Micro-benchmarks of the checks on the hot paths that guard the edges, each beside its baseline.

- JSON bodies: ``orjson.loads`` alone (what reading a body cost before) against loads plus the
  nesting-depth check of ``api/requests.py`` (a bound read off the raw bytes, then a walk only
  past it), and against loads plus a walk of every parsed body (the obvious way), on a typical
  chat body, long chat histories, and a Hub submit.
- Key cache hits: the old plain-dict cache (the same steps, reproduced here) against
  ``Authenticator``'s bounded LRU, for a key already cached (the common case of every request).
- The HTTP edge (``api/edge.py``, the outermost middleware): a routed request through a bare
  ASGI app, through the edge with its HTTP metrics off (request id, work context), and with them
  on (the count and the latency histogram); and a key's requests-per-minute check
  (``core/limits.py``, per process, as without Redis).

    python bench/edges.py [--seconds 1.0]

Single process, no server: the figures are per call, in microseconds, the best of many short rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import timeit
from pathlib import Path
from typing import Any, Callable

import orjson

from starlette.routing import Route

from tidehub.api.edge import RequestEdge
from tidehub.api.requests import MAX_JSON_DEPTH, _walk_deeper, nested_deeper
from tidehub.core.auth import Authenticator, KeyRecord, Principal, create_key, hash_key, _bearer
from tidehub.core.limits import KeyLimits, Limits
from tidehub.core.shared import SharedState
from tidehub.store import Store


def chat(messages: int, parts: bool = False) -> bytes:
    content: Any = "Summarise the following paragraph in two sentences, please. " * 4
    if parts:
        content = [{"type": "text", "text": content}, {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]
    history = [{"role": "user" if i % 2 == 0 else "assistant", "content": content} for i in range(messages)]
    return orjson.dumps({"model": "gpt-4", "messages": [{"role": "system", "content": "Be brief."}, *history],
                         "temperature": 0.2, "stream": True, "stream_options": {"include_usage": True}})


BODIES = {
    "chat, 3 messages": chat(3),
    "chat, 200 messages": chat(200),
    "chat, 200 multimodal messages": chat(200, parts=True),
    "hub submit": orjson.dumps({"model": "nano-banana-edit", "input": {
        "prompt": "a lighthouse at dawn", "image_urls": ["https://example.com/a.png"], "num_images": 2}}),
}


def parse_only(raw: bytes) -> Any:
    return orjson.loads(raw)


def parse_and_check(raw: bytes) -> Any:
    body = orjson.loads(raw)
    if nested_deeper(raw, body, MAX_JSON_DEPTH):
        raise ValueError("too deep")
    return body


def parse_and_walk(raw: bytes) -> Any:
    """The obvious way: walk every parsed body (stopping at the limit)."""
    body = orjson.loads(raw)
    if _walk_deeper(body, MAX_JSON_DEPTH):
        raise ValueError("too deep")
    return body


class DictCache:
    """The key cache before: a dict of (expiry, record), cleared whole at 100,000 entries."""

    def __init__(self, record: KeyRecord, digest: str) -> None:
        self._cache = {digest: (time.monotonic() + 3600, record)}

    async def authenticate(self, authorization: str | None, client_ip: str | None = None) -> Any:
        digest = hash_key(_bearer(authorization))
        now = time.monotonic()
        hit = self._cache.get(digest)
        if hit is not None and hit[0] > now:
            return hit[1].admit(client_ip)
        raise AssertionError("the benchmark key is always cached")


def per_call_us(fn: Callable[[], Any], seconds: float) -> float:
    """The best of many short rounds (~10 ms each): on a busy machine a short round is likelier to
    run unpreempted than one long one."""
    timer = timeit.Timer(fn)
    number, taken = timer.autorange()  # at least 0.2 s of calls
    number = max(1, int(number * 0.01 / taken))
    return min(timer.repeat(max(5, int(seconds / 0.01)), number)) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=1.0, help="rough time per round")
    args = parser.parse_args()

    print(f"{'JSON body':32} {'bytes':>7} {'loads µs':>9} {'+ check µs':>11} {'cost':>7} {'+ walk µs':>10} {'cost':>7}")
    for name, raw in BODIES.items():
        base = per_call_us(lambda: parse_only(raw), args.seconds)
        checked = per_call_us(lambda: parse_and_check(raw), args.seconds)
        walked = per_call_us(lambda: parse_and_walk(raw), args.seconds)
        print(f"{name:32} {len(raw):7} {base:9.2f} {checked:11.2f} {100 * (checked - base) / base:6.1f}% "
              f"{walked:10.2f} {100 * (walked - base) / base:6.1f}%")

    with tempfile.TemporaryDirectory() as tmp:
        store = Store(f"sqlite:///{Path(tmp) / 'bench.db'}")
        key = create_key(store, name="bench", credits=1)
        header = f"Bearer {key.secret}"
        lru = Authenticator(store, ttl=3600)
        loop = asyncio.new_event_loop()
        loop.run_until_complete(lru.authenticate(header, "127.0.0.1"))
        old = DictCache(KeyRecord.from_row(store.keys.by_hash(hash_key(key.secret))), hash_key(key.secret))

        def hit(auth: Any) -> Callable[[], Any]:
            def run() -> Any:
                coro = auth.authenticate(header, "127.0.0.1")
                try:
                    coro.send(None)  # a cache hit never awaits: it finishes on the first step
                except StopIteration as done:
                    return done.value
                raise AssertionError("a cache hit awaited")
            return run

        base = per_call_us(hit(old), args.seconds)
        now = per_call_us(hit(lru), args.seconds)
        print(f"\n{'key cache hit':34} {'dict µs':>9} {'LRU µs':>9} {'cost':>7}")
        print(f"{'cached key, 127.0.0.1':34} {base:9.2f} {now:9.2f} {100 * (now - base) / base:6.1f}%")
        limits = Limits(store, SharedState(""))
        rated = Principal("key_bench", "acct_bench", limits=KeyLimits(key_rpm=10**7))
        rpm = per_call_us(step(lambda: limits.admit(rated)), args.seconds)
        loop.close()
        store.close()

    route = Route("/tasks/{task_id}", lambda request: None)
    start = {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]}
    body = {"type": "http.response.body", "body": b"{}"}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        scope["route"], scope["root_path"] = route, "/hub/v1"  # as Starlette's router leaves them
        await send(start)
        await send(body)

    async def receive() -> Any:
        return {"type": "http.request"}

    async def send(message: Any) -> None:
        return None

    def request(asgi: Any) -> Callable[[], Any]:
        def run() -> Any:
            scope = {"type": "http", "method": "GET", "path": "/hub/v1/tasks/hub-1", "root_path": "",
                     "headers": [(b"authorization", b"Bearer x"), (b"host", b"127.0.0.1")]}
            return step(lambda: asgi(scope, receive, send))()
        return run

    bare = per_call_us(request(app), args.seconds)
    unmeasured = per_call_us(request(RequestEdge(app, measure=False)), args.seconds)
    measured = per_call_us(request(RequestEdge(app, measure=True)), args.seconds)
    print(f"\n{'per request':34} {'µs':>9} {'added µs':>9}")
    print(f"{'bare ASGI app':34} {bare:9.2f}")
    print(f"{'edge, HTTP metrics off':34} {unmeasured:9.2f} {unmeasured - bare:9.2f}")
    print(f"{'edge, HTTP metrics on':34} {measured:9.2f} {measured - bare:9.2f}")
    print(f"{'rpm check of a limited key':34} {rpm:9.2f} {rpm:9.2f}")


def step(make: Callable[[], Any]) -> Callable[[], Any]:
    """Runs a coroutine that never really waits to its end, without an event loop."""
    def run() -> Any:
        coro = make()
        try:
            coro.send(None)
        except StopIteration as done:
            return done.value
        raise AssertionError("it awaited")
    return run


if __name__ == "__main__":
    main()
