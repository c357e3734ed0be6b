"""The simulator's channels and fault knobs, and its signed fal webhooks, over real HTTP.

What the gateway's routing, retries, circuit breakers and callback handling will be tested against:
several API keys (channels) in one sim, each misbehaving in its own way, switched at run time
through ``/_sim/channels``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import orjson
import pytest
import yaml
from aiohttp import web
from multidict import CIMultiDict
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from tidehub.sim import CONTENT_POLICY_MARKER, FLAKY_MARKER, SimBehaviour, SimServer, SimSettings
from simcatalog import sim_endpoint

TIME_SCALE = 0.02
T = TypeVar("T")

FAST = "openai/gpt-image-2"      # done in a few hundredths of a second at this time scale
STEADY = "fal-ai/wan/v2.7/text-to-video"  # no queue, a 0.5 s run: for concurrency caps
STUCK = "fal-ai/veo3.1"          # never leaves the queue: for counting submits without renders

CATALOG = {
    "vendor": "test",
    "endpoints": [
        sim_endpoint(FAST, "image", 1, 2),
        sim_endpoint(STEADY, "video", 0, 25),
        sim_endpoint(STUCK, "video", 50_000, 50_000),
    ],
}


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimServer]:
    catalog = tmp_path_factory.mktemp("sim-faults-catalog")
    (catalog / "test.yaml").write_text(yaml.safe_dump(CATALOG))
    settings = SimSettings(
        port=0, time_scale=TIME_SCALE, catalog_dirs=[Path(catalog)], include_builtin_catalog=False, seed=3,
        # Two extra channels besides the default "sim-key", each with its own fault.
        channels={
            "chan-a": SimBehaviour(submit_error_rate=0.3, seed=1),
            "chan-b": SimBehaviour(rate_limit_every=3, rate_limit_burst=2, retry_after_s=1.5),
        },
        webhook_retry_delays_s=(1.0, 2.0, 2.0),  # 20 ms, 40 ms, 40 ms at this time scale
    )
    with SimServer(settings) as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def key(channel: str) -> dict[str, str]:
    return {"Authorization": f"Key {channel}"}


async def eventually(check: Callable[[], Awaitable[T | None]], timeout: float = 15.0, what: str = "condition") -> T:
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def configure(http: aiohttp.ClientSession, sim: SimServer, channel: str, **knobs: Any) -> dict[str, Any]:
    async with http.put(f"{sim.url}/_sim/channels/{channel}", json=knobs) as response:
        assert response.status in (200, 201), await response.text()
        return await response.json()


async def channel_stats(http: aiohttp.ClientSession, sim: SimServer, channel: str) -> dict[str, int]:
    async with http.get(f"{sim.url}/_sim/stats") as response:
        return (await response.json())["channels"][channel]


async def post(http: aiohttp.ClientSession, sim: SimServer, channel: str, prompt: str, model: str = FAST,
               webhook: str | None = None) -> tuple[int, CIMultiDict[str], Any]:
    params = {"fal_webhook": webhook} if webhook else None
    async with http.post(f"{sim.url}/{model}", json={"prompt": prompt}, headers=key(channel),
                         params=params) as response:
        return response.status, CIMultiDict(response.headers), await response.json()


async def submit(http: aiohttp.ClientSession, sim: SimServer, channel: str, prompt: str, model: str = FAST,
                 webhook: str | None = None) -> dict[str, Any]:
    status, _, body = await post(http, sim, channel, prompt, model, webhook)
    assert status == 200, body
    return body


async def wait_completed(http: aiohttp.ClientSession, channel: str, submitted: dict[str, Any]) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        async with http.get(submitted["status_url"], headers=key(channel)) as response:
            body = await response.json()
            return body if body["status"] == "COMPLETED" else None

    return await eventually(check, what=f"{submitted['request_id']} to complete")


async def result(
    http: aiohttp.ClientSession, channel: str, submitted: dict[str, Any]
) -> tuple[int, CIMultiDict[str], Any]:
    await wait_completed(http, channel, submitted)
    async with http.get(submitted["response_url"], headers=key(channel)) as response:
        return response.status, CIMultiDict(response.headers), await response.json()


# --- channels and their control -------------------------------------------------------------------

async def test_each_key_is_a_channel_with_its_own_requests(sim: SimServer, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{sim.url}/_sim/channels") as response:
        channels = (await response.json())["channels"]
    assert {"sim-key", "chan-a", "chan-b"} <= set(channels)
    assert channels["sim-key"]["user_id"] == "sim-user-1"
    assert len({c["user_id"] for c in channels.values()}) == len(channels)
    assert channels["chan-a"]["knobs"]["submit_error_rate"] == 0.3
    assert channels["chan-b"]["knobs"]["rate_limit_every"] == 3
    assert channels["sim-key"]["knobs"] == {**channels["sim-key"]["knobs"], "outage": False, "hang_rate": 0.0,
                                            "webhooks": True, "time_scale": TIME_SCALE}

    status, _, _ = await post(http, sim, "no-such-key", "x")
    assert status == 401
    submitted = await submit(http, sim, "sim-key", "mine")
    async with http.get(submitted["status_url"], headers=key("chan-b")) as response:
        assert response.status == 404  # fal queues are per account
    async with http.get(submitted["status_url"], headers=key("sim-key")) as response:
        assert response.status in (200, 202)


async def test_put_updates_knobs_all_or_nothing_and_adds_channels(sim: SimServer, http: aiohttp.ClientSession) -> None:
    url = f"{sim.url}/_sim/channels/chan-new"
    async with http.get(url) as response:
        assert response.status == 404
    async with http.put(url, json={"latency_s": 0.0, "run_failure_kind": "permanent"}) as response:
        assert response.status == 201
        created = await response.json()
    assert created["knobs"]["run_failure_kind"] == "permanent" and created["user_id"].startswith("sim-user-")
    assert created["knobs"]["time_scale"] == TIME_SCALE  # a new channel runs at the sim's time scale
    assert (await submit(http, sim, "chan-new", "hello"))["status"] == "IN_QUEUE"

    for bad in ({"submit_error_rate": 1.5}, {"outage": "yes"}, {"no_such_knob": 1},
                {"hang_rate": 0.5, "max_concurrent": -2}, {"run_failure_kind": "sometimes"}):
        async with http.put(url, json=bad) as response:
            assert response.status == 422, bad
            assert (await response.json())["detail"]
    async with http.put(url, json=[1, 2]) as response:
        assert response.status == 400
    async with http.get(url) as response:
        knobs = (await response.json())["knobs"]
    assert knobs["hang_rate"] == 0.0 and knobs["max_concurrent"] is None  # nothing of a refused update applied

    updated = await configure(http, sim, "chan-new", max_concurrent=2, outage=False)
    assert updated["knobs"]["max_concurrent"] == 2 and updated["knobs"]["run_failure_kind"] == "permanent"
    assert (await configure(http, sim, "chan-new", max_concurrent=0))["knobs"]["max_concurrent"] is None


# --- submit-time faults ---------------------------------------------------------------------------

async def test_submit_errors_come_at_the_configured_rate_and_replay_with_the_seed(
    sim: SimServer, http: aiohttp.ClientSession
) -> None:
    before = await channel_stats(http, sim, "chan-a")
    await configure(http, sim, "chan-a", seed=1)  # restart the channel's fault RNG

    async def run_of(n: int) -> list[int]:
        statuses = []
        for i in range(n):
            status, headers, body = await post(http, sim, "chan-a", f"count {i}", model=STUCK)
            if status == 503:
                assert body == {"detail": body["detail"], "error_type": "runner_scheduling_failure"}
                assert headers["X-Fal-Retryable"] == "true"
            else:
                assert status == 200 and body["status"] == "IN_QUEUE"
            statuses.append(status)
        return statuses

    first = await run_of(200)
    assert 0.2 <= first.count(503) / len(first) <= 0.4
    await configure(http, sim, "chan-a", seed=1)
    assert await run_of(50) == first[:50]  # same seed, same faults

    after = await channel_stats(http, sim, "chan-a")
    assert after["submit_errors"] - before["submit_errors"] == first.count(503) + first[:50].count(503)
    assert after["accepted"] - before["accepted"] == first.count(200) + first[:50].count(200)
    # The other channels are untouched by chan-a's knob.
    assert all([(await post(http, sim, "sim-key", f"calm {i}", model=STUCK))[0] == 200 for i in range(20)])


async def test_rate_limit_bursts_answer_429_with_retry_after(sim: SimServer, http: aiohttp.ClientSession) -> None:
    await configure(http, sim, "chan-b", rate_limit_every=3, rate_limit_burst=2)  # start a fresh cycle
    before = await channel_stats(http, sim, "chan-b")
    answers = [await post(http, sim, "chan-b", f"burst {i}", model=STUCK) for i in range(10)]
    assert [status for status, _, _ in answers] == [200, 200, 200, 429, 429, 200, 200, 200, 429, 429]
    for status, headers, body in answers:
        if status == 429:
            assert body == {"detail": "Rate limit exceeded"}
            assert headers["Retry-After"] == "2"  # whole seconds, rounded up from 1.5
    after = await channel_stats(http, sim, "chan-b")
    assert (after["rate_limited"] - before["rate_limited"], after["accepted"] - before["accepted"]) == (4, 6)
    # Invalid input is refused before the limiter and does not count towards it.
    async with http.post(f"{sim.url}/{STUCK}", json={}, headers=key("chan-b")) as response:
        assert response.status == 422


async def test_outage_answers_503_everywhere_until_turned_off(sim: SimServer, http: aiohttp.ClientSession) -> None:
    await configure(http, sim, "chan-outage")
    submitted = await submit(http, sim, "chan-outage", "before the storm")
    await configure(http, sim, "chan-outage", outage=True)

    calls = [
        http.post(f"{sim.url}/{FAST}", json={"prompt": "x"}, headers=key("chan-outage")),
        http.get(submitted["status_url"], headers=key("chan-outage")),
        http.get(submitted["response_url"], headers=key("chan-outage")),
        http.put(submitted["cancel_url"], headers=key("chan-outage")),
    ]
    for call in calls:
        async with call as response:
            assert response.status == 503
            assert response.headers["X-Fal-Retryable"] == "true"
            assert "detail" in await response.json()
    status, _, _ = await post(http, sim, "sim-key", "elsewhere all is well")
    assert status == 200
    assert (await channel_stats(http, sim, "chan-outage"))["outage_errors"] == 4

    await configure(http, sim, "chan-outage", outage=False)
    code, _, output = await result(http, "chan-outage", submitted)  # the request survived the outage
    assert code == 200 and output["images"]
    assert (await submit(http, sim, "chan-outage", "after the storm"))["status"] == "IN_QUEUE"


# --- run failures ---------------------------------------------------------------------------------

async def test_content_policy_marker_fails_permanently_on_any_channel(
    sim: SimServer, http: aiohttp.ClientSession
) -> None:
    for channel in ("sim-key", "chan-b"):
        await configure(http, sim, channel, rate_limit_every=0)
        for attempt in range(2):
            submitted = await submit(http, sim, channel, f"a forbidden thing {CONTENT_POLICY_MARKER}")
            status = await wait_completed(http, channel, submitted)
            assert status["error_type"] == "content_policy_violation" and status["error"]
            code, headers, body = await result(http, channel, submitted)
            assert code == 422, (channel, attempt)
            assert headers["X-Fal-Retryable"] == "false"
            assert headers["X-Fal-Error-Type"] == "content_policy_violation"
            assert body["detail"][0]["type"] == "content_policy_violation"
            assert body["detail"][0]["loc"] == ["body", "prompt"]
    await configure(http, sim, "chan-b", rate_limit_every=3)


async def test_flaky_marker_fails_the_first_submit_per_channel_only(
    sim: SimServer, http: aiohttp.ClientSession
) -> None:
    await configure(http, sim, "chan-flaky")
    prompt = f"a fickle picture {FLAKY_MARKER}"
    code, headers, body = await result(http, "chan-flaky", await submit(http, sim, "chan-flaky", prompt))
    assert code == 503 and body["error_type"] == "runner_disconnected"
    assert headers["X-Fal-Retryable"] == "true"

    code, _, body = await result(http, "chan-flaky", await submit(http, sim, "chan-flaky", prompt))
    assert code == 200 and body["images"]  # the resubmit succeeds

    code, _, body = await result(http, "sim-key", await submit(http, sim, "sim-key", prompt))
    assert code == 503 and body["error_type"] == "runner_disconnected"  # a fresh channel fails it once too
    stats = await channel_stats(http, sim, "chan-flaky")
    assert (stats["run_failures"], stats["completions"]) == (1, 1)


async def test_run_failure_rate_and_kind(sim: SimServer, http: aiohttp.ClientSession) -> None:
    await configure(http, sim, "chan-failing", run_failure_rate=1.0, run_failure_kind="retryable")
    code, _, body = await result(http, "chan-failing", await submit(http, sim, "chan-failing", "doomed"))
    assert (code, body["error_type"]) == (503, "runner_disconnected")
    await configure(http, sim, "chan-failing", run_failure_kind="permanent")
    code, _, body = await result(http, "chan-failing", await submit(http, sim, "chan-failing", "doomed"))
    assert (code, body["detail"][0]["type"]) == (422, "content_policy_violation")
    await configure(http, sim, "chan-failing", run_failure_rate=0.0)
    code, _, body = await result(http, "chan-failing", await submit(http, sim, "chan-failing", "fine"))
    assert code == 200 and body["images"]


# --- slow and stuck answers ---------------------------------------------------------------------

async def test_hanging_requests_time_the_client_out_and_are_let_go(
    sim: SimServer, http: aiohttp.ClientSession
) -> None:
    await configure(http, sim, "chan-hang", hang_rate=1.0)
    impatient = aiohttp.ClientTimeout(total=0.5)
    with pytest.raises(TimeoutError):
        await http.post(f"{sim.url}/{FAST}", json={"prompt": "x"}, headers=key("chan-hang"), timeout=impatient)
    stats = await channel_stats(http, sim, "chan-hang")
    assert stats["hangs"] == 1 and stats["accepted"] == 0
    # The sim notices the client hung up and stops holding the request.
    await eventually(lambda: _held_is_zero(http, sim, "chan-hang"), what="the held request to be let go")

    await configure(http, sim, "chan-hang", hang_rate=0.0, latency_s=0.3)
    started = time.monotonic()
    status, _, _ = await post(http, sim, "chan-hang", "slow but sure")
    assert status == 200 and time.monotonic() - started >= 0.3


async def _held_is_zero(http: aiohttp.ClientSession, sim: SimServer, channel: str) -> bool:
    return (await channel_stats(http, sim, channel))["held"] == 0


async def test_stopping_the_sim_lets_held_requests_go(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    catalog = tmp_path / "catalog"
    catalog.mkdir()
    (catalog / "test.yaml").write_text(yaml.safe_dump(CATALOG))
    settings = SimSettings(port=0, time_scale=TIME_SCALE, catalog_dirs=[catalog], include_builtin_catalog=False,
                           behaviour=SimBehaviour(hang_rate=1.0))  # held for up to the default 300 s
    server = SimServer(settings)
    server.start()
    try:
        pending = asyncio.ensure_future(post(http, server, "sim-key", "stuck"))
        await eventually(lambda: _async(server.runtime.channel("sim-key").stats.held == 1), what="the hold")
    finally:
        await asyncio.wait_for(asyncio.to_thread(server.stop), timeout=10)
    status, _, body = await asyncio.wait_for(pending, timeout=5)
    assert (status, body["error_type"]) == (504, "request_timeout")


async def _async(value: T) -> T:
    return value


async def test_max_concurrent_queues_a_channels_runs(sim: SimServer, http: aiohttp.ClientSession) -> None:
    await configure(http, sim, "chan-narrow", max_concurrent=1, jitter=0.0)
    batch = [await submit(http, sim, "chan-narrow", f"one at a time {i}", model=STEADY) for i in range(3)]
    # The first runs at once; the others wait their turn (position 0 = next to start).
    assert [item["queue_position"] for item in batch] == [0, 0, 1]
    jobs = [sim.runtime.board.get(item["request_id"]) for item in batch]
    assert all(job is not None for job in jobs)
    for earlier, later in zip(jobs, jobs[1:]):
        assert later.starts_at >= earlier.ends_at  # never two runs at once

    async with http.get(batch[2]["status_url"], headers=key("chan-narrow")) as response:
        first_look = await response.json()
    assert first_look["status"] == "IN_QUEUE" and first_look["queue_position"] in (0, 1)
    for item in batch:
        await wait_completed(http, "chan-narrow", item)

    # Uncapped, the same three requests run side by side.
    await configure(http, sim, "chan-narrow", max_concurrent=None)
    wide = [await submit(http, sim, "chan-narrow", f"all at once {i}", model=STEADY) for i in range(3)]
    assert [item["queue_position"] for item in wide] == [0, 0, 0]


# --- webhooks -------------------------------------------------------------------------------------

@dataclass
class Delivery:
    headers: CIMultiDict[str]
    raw: bytes

    @property
    def body(self) -> dict[str, Any]:
        return orjson.loads(self.raw)


class Receiver:
    """A webhook endpoint on a free loopback port that records every POST it gets."""

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self.refuse_next = 0  # answer this many deliveries with 500 first
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}/hook"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def for_request(self, request_id: str) -> list[Delivery]:
        return [d for d in self.deliveries if d.body["request_id"] == request_id]

    async def wait_for(self, request_id: str, count: int = 1) -> list[Delivery]:
        async def arrived() -> list[Delivery] | None:
            found = self.for_request(request_id)
            return found if len(found) >= count else None

        return await eventually(arrived, what=f"{count} webhook(s) for {request_id}")

    async def _handle(self, request: web.Request) -> web.Response:
        self.deliveries.append(Delivery(CIMultiDict(request.headers), await request.read()))
        if self.refuse_next > 0:
            self.refuse_next -= 1
            return web.Response(status=500, text="not now")
        return web.Response(text="ok")


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    hook = Receiver()
    await hook.start()
    yield hook
    await hook.stop()


async def jwks_keys(http: aiohttp.ClientSession, sim: SimServer) -> list[Ed25519PublicKey]:
    async with http.get(f"{sim.url}/.well-known/jwks.json") as response:
        assert response.status == 200
        jwks = await response.json()
    keys = []
    for jwk in jwks["keys"]:
        assert (jwk["kty"], jwk["crv"]) == ("OKP", "Ed25519")
        raw = base64.urlsafe_b64decode(jwk["x"] + "=" * (-len(jwk["x"]) % 4))
        keys.append(Ed25519PublicKey.from_public_bytes(raw))
    return keys


def verify(delivery: Delivery, keys: list[Ed25519PublicKey]) -> bool:
    """The receiver's side of fal's scheme, as UPSTREAMS.md describes it."""
    h = delivery.headers
    message = "\n".join((
        h["X-Fal-Webhook-Request-Id"], h["X-Fal-Webhook-User-Id"], h["X-Fal-Webhook-Timestamp"],
        hashlib.sha256(delivery.raw).hexdigest(),
    )).encode()
    for public_key in keys:
        try:
            public_key.verify(bytes.fromhex(h["X-Fal-Webhook-Signature"]), message)
            return True
        except InvalidSignature:
            continue
    return False


async def test_webhook_is_signed_and_carries_the_output(
    sim: SimServer, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    await configure(http, sim, "chan-hooks")
    async with http.get(f"{sim.url}/_sim/channels/chan-hooks") as response:
        user_id = (await response.json())["user_id"]
    keys = await jwks_keys(http, sim)

    submitted = await submit(http, sim, "chan-hooks", "called back", webhook=receiver.url)
    [delivery] = await receiver.wait_for(submitted["request_id"])
    assert verify(delivery, keys)
    headers, body = delivery.headers, delivery.body
    assert headers["X-Fal-Webhook-Request-Id"] == submitted["request_id"]
    assert headers["X-Fal-Webhook-User-Id"] == user_id
    assert abs(int(headers["X-Fal-Webhook-Timestamp"]) - time.time()) < 300
    assert headers["Content-Type"] == "application/json"
    async with http.get(submitted["response_url"], headers=key("chan-hooks")) as response:
        output = await response.json()
    assert body == {"request_id": submitted["request_id"], "gateway_request_id": submitted["request_id"],
                    "status": "OK", "payload": output, "error": None}

    # A tampered body no longer verifies: the signature covers the body's hash.
    assert not verify(Delivery(delivery.headers, delivery.raw.replace(b'"OK"', b'"ERROR"')), keys)

    failed = await submit(http, sim, "chan-hooks", f"refused {CONTENT_POLICY_MARKER}", webhook=receiver.url)
    [delivery] = await receiver.wait_for(failed["request_id"])
    assert verify(delivery, keys)
    assert delivery.body["status"] == "ERROR" and delivery.body["error"] == "Invalid status code: 422"
    assert delivery.body["payload"]["detail"][0]["type"] == "content_policy_violation"
    assert (await channel_stats(http, sim, "chan-hooks"))["webhooks_sent"] == 2


async def test_cancelled_request_gets_an_error_webhook(
    sim: SimServer, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    await configure(http, sim, "chan-cancel")
    submitted = await submit(http, sim, "chan-cancel", "never mind", model=STUCK, webhook=receiver.url)
    async with http.put(submitted["cancel_url"], headers=key("chan-cancel")) as response:
        assert response.status == 202
    [delivery] = await receiver.wait_for(submitted["request_id"])
    assert verify(delivery, await jwks_keys(http, sim))
    assert (delivery.body["status"], delivery.body["error"]) == ("ERROR", "Invalid status code: 400")
    assert delivery.body["payload"]["detail"][0]["type"] == "request_cancelled"
    stats = await channel_stats(http, sim, "chan-cancel")
    assert (stats["cancels"], stats["run_failures"], stats["completions"]) == (1, 0, 0)


async def test_no_webhook_when_the_channel_has_them_off(
    sim: SimServer, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    await configure(http, sim, "chan-quiet", webhooks=False)
    await configure(http, sim, "chan-loud")
    quiet = await submit(http, sim, "chan-quiet", "shh", webhook=receiver.url)
    await wait_completed(http, "chan-quiet", quiet)
    # A webhook goes out the moment a request ends; once a later request's has arrived, the
    # earlier one's would have too.
    loud = await submit(http, sim, "chan-loud", "hello", webhook=receiver.url)
    await receiver.wait_for(loud["request_id"])
    assert receiver.for_request(quiet["request_id"]) == []
    assert (await channel_stats(http, sim, "chan-quiet"))["webhooks_sent"] == 0


async def test_failed_webhook_delivery_is_retried(
    sim: SimServer, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    await configure(http, sim, "chan-retry")
    keys = await jwks_keys(http, sim)
    receiver.refuse_next = 2
    submitted = await submit(http, sim, "chan-retry", "try again", webhook=receiver.url)
    attempts = await receiver.wait_for(submitted["request_id"], count=3)
    assert all(verify(attempt, keys) for attempt in attempts)  # each attempt is signed afresh
    assert len({attempt.raw for attempt in attempts}) == 1
    stats = await eventually(lambda: _sent(http, sim, "chan-retry"), what="the delivery to be counted")
    assert (stats["webhooks_failed"], stats["webhooks_sent"], stats["webhooks_abandoned"]) == (2, 1, 0)

    # A receiver that never answers well is given up on after the last retry.
    receiver.refuse_next = 100
    doomed = await submit(http, sim, "chan-retry", "never heard", webhook=receiver.url)
    await receiver.wait_for(doomed["request_id"], count=4)  # the first attempt and three retries
    stats = await eventually(lambda: _abandoned(http, sim, "chan-retry"), what="the delivery to be abandoned")
    assert stats["webhooks_failed"] == 2 + 4


async def _sent(http: aiohttp.ClientSession, sim: SimServer, channel: str) -> dict[str, int] | None:
    stats = await channel_stats(http, sim, channel)
    return stats if stats["webhooks_sent"] else None


async def _abandoned(http: aiohttp.ClientSession, sim: SimServer, channel: str) -> dict[str, int] | None:
    stats = await channel_stats(http, sim, channel)
    return stats if stats["webhooks_abandoned"] else None


async def test_webhook_to_an_unreachable_url_does_not_hold_anything_up(
    sim: SimServer, http: aiohttp.ClientSession
) -> None:
    await configure(http, sim, "chan-void")
    submitted = await submit(http, sim, "chan-void", "into the void", webhook="http://127.0.0.1:9/nothing-here")
    code, _, body = await result(http, "chan-void", submitted)
    assert code == 200 and body["images"]
    stats = await eventually(lambda: _abandoned(http, sim, "chan-void"), what="the delivery to be abandoned")
    assert (stats["webhooks_failed"], stats["webhooks_sent"]) == (4, 0)
