"""Per-key and per-account limits (core/limits.py): requests per minute and tasks at once, refused
with 429 in each dialect's envelope, with X-RateLimit headers on every answer."""

from __future__ import annotations

import subprocess
import sys
import uuid
from typing import Any

import httpx
import pytest

from conftest import GatewayServer, wait_for
from tidehub.core.auth import create_key
from tidehub.core.keys import KeyService

#: One read per dialect, and how its 429 envelope names the refusal.
DIALECTS = {
    "hub": ("/hub/v1/account", lambda b: b["error_code"] == "rate_limit_exceeded" and "rate" in b["error_message"]),
    "ms": ("/ms/v1/account", lambda b: b["error"]["code"] == "rate_limit_exceeded" and b["error"]["message"]),
    "openai": ("/v1/models", lambda b: b["error"]["type"] == "rate_limit_error"
               and b["error"]["code"] == "rate_limit_exceeded" and b["error"]["message"]),
    "video-hub": ("/api/video/status?jobId=job-none", lambda b: b["success"] is False and "rate" in b["message"]),
    "quota": ("/api/user/quota", lambda b: b["success"] is False and b["code"] == "rate_limit_exceeded"),
}


def rate_headers(response: httpx.Response) -> tuple[int, int, int]:
    h = response.headers
    return int(h["x-ratelimit-limit"]), int(h["x-ratelimit-remaining"]), int(h["x-ratelimit-reset"])


@pytest.mark.parametrize("dialect", sorted(DIALECTS))
def test_over_the_rpm_limit_is_a_429_in_the_dialects_envelope(make_gateway, dialect: str) -> None:
    gateway: GatewayServer = make_gateway(more_upstreams=False, engine_enabled=False)
    path, names_refusal = DIALECTS[dialect]
    key = gateway.new_key(rpm=2)
    with gateway.client(key) as c:
        first, second, third = c.get(path), c.get(path), c.get(path)
    # The answers before the limit (a 404 for the unknown job too) carry the headers.
    assert first.status_code != 429 and second.status_code != 429
    assert rate_headers(first)[:2] == (2, 1) and rate_headers(second)[:2] == (2, 0)
    assert 0 < rate_headers(second)[2] <= 60
    assert third.status_code == 429, third.text
    assert names_refusal(third.json()), third.json()
    assert 1 <= int(third.headers["retry-after"]) <= 30
    assert rate_headers(third)[:2] == (2, 0)
    # A key without limits gets no rate headers at all.
    with gateway.client(gateway.new_key()) as c:
        assert "x-ratelimit-limit" not in c.get(path).headers


def count_accepted(gateways: list[GatewayServer], key: str, n: int) -> int:
    clients = [g.client(key) for g in gateways]
    try:
        statuses = [clients[i % len(clients)].get("/hub/v1/account").status_code for i in range(n)]
    finally:
        for c in clients:
            c.close()
    assert set(statuses) <= {200, 429}, statuses
    return statuses.count(200)


def test_rpm_holds_across_two_gateways_sharing_redis(make_gateway, database_url: str, redis_settings) -> None:
    a = make_gateway(database_url, more_upstreams=False, **redis_settings)
    b = make_gateway(database_url, more_upstreams=False, **redis_settings)
    key = a.new_key(rpm=4)
    assert count_accepted([a, b], key, 4 + 5) == 4
    # An account's limit covers all its keys together, on both gateways.
    first = create_key(a.gateway.store, credits=1000)
    second = create_key(a.gateway.store, account_id=first.account_id)
    KeyService(a.gateway.store, a.gateway.catalog).limit_account(first.account_id, rpm=3)
    assert count_accepted([a, b], first.secret, 2) == 2
    assert count_accepted([b, a], second.secret, 3) == 1


def test_without_redis_the_rpm_limit_is_per_process(make_gateway, tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    a = make_gateway(url, more_upstreams=False, engine_enabled=False)
    b = make_gateway(url, more_upstreams=False, engine_enabled=False)
    key = a.new_key(rpm=3)
    assert count_accepted([a], key, 5) == 3
    assert count_accepted([b], key, 5) == 3  # documented: each process keeps its own count


def test_unreachable_redis_falls_back_to_the_process(make_gateway) -> None:
    closed = f"redis://127.0.0.1:{_closed_port()}/0"
    gateway = make_gateway(more_upstreams=False, engine_enabled=False, redis_url=closed)
    assert count_accepted([gateway], gateway.new_key(rpm=2), 4) == 2


def _closed_port() -> int:
    from conftest import free_port

    return free_port()


def submit(c: httpx.Client) -> httpx.Response:
    return c.post("/hub/v1/image", json={"model": "nano-banana", "input": {"prompt": "a lighthouse"}})


def test_concurrency_limit_counts_live_tasks_across_gateways(make_gateway, database_url: str) -> None:
    # Engines off: the tasks stay queued (live) until cancelled.
    a = make_gateway(database_url, more_upstreams=False, engine_enabled=False)
    b = make_gateway(database_url, more_upstreams=False, engine_enabled=False)
    key = a.new_key(max_concurrency=2)
    with a.client(key) as ca, b.client(key) as cb:
        first, second = submit(ca), submit(cb)
        assert first.status_code == 200 and second.status_code == 200, (first.text, second.text)
        for c in (ca, cb):
            refused = submit(c)
            assert refused.status_code == 429, refused.text
            assert refused.json()["error_code"] == "concurrency_limit_exceeded"
            assert refused.headers["retry-after"] == "1"
        # Nothing was held or written for the refusals.
        balance = ca.get("/hub/v1/account").json()
        assert balance["held"] == sum(t["held"] for t in _tasks(a)) and len(_tasks(a)) == 2
        # One finishes (cancelled): the next is accepted, and the one after refused again.
        assert ca.post(f"/hub/v1/tasks/{first.json()['task_id']}/cancel").json()["status"] == "cancelled"
        assert submit(cb).status_code == 200
        assert submit(ca).status_code == 429
        # Other dialects are held to the same count.
        ms = cb.post("/ms/v1/run/google/nano-banana/text-to-image", json={"input": {"prompt": "x"}})
        assert ms.status_code == 429 and ms.json()["error"]["code"] == "concurrency_limit_exceeded", ms.text
        video = cb.post("/api/video/submit", json={"prompt": "waves"})
        assert video.status_code == 429 and video.json()["success"] is False, video.text


def _tasks(gateway: GatewayServer) -> list[dict[str, Any]]:
    import sqlalchemy as sa

    from tidehub.store.schema import tasks

    with gateway.gateway.store.engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.select(tasks.c.id, tasks.c.held))]


def test_concurrency_limit_frees_a_slot_when_a_task_completes(make_gateway) -> None:
    gateway = make_gateway(more_upstreams=False)
    key = gateway.new_key(max_concurrency=1)
    with gateway.client(key) as c:
        first = submit(c)
        assert first.status_code == 200
        task_id = first.json()["task_id"]
        # Until it completes, a second is refused (or it completed first: then it is accepted).
        while True:
            second = submit(c)
            done = c.get(f"/hub/v1/tasks/{task_id}").json()["ready"]
            if second.status_code == 200:
                assert done, "a second task was accepted while the first was live"
                break
            assert second.status_code == 429 and second.json()["error_code"] == "concurrency_limit_exceeded"


def test_relayed_calls_in_flight_count_against_the_concurrency_limit(make_gateway, sim) -> None:
    # An upstream account of this test's own, streaming at full (slow) speed.
    upstream_key = f"slow-{uuid.uuid4().hex[:8]}"
    assert httpx.put(f"{sim.base_url}/_sim/channels/{upstream_key}", json={"time_scale": 1.0}).status_code < 300
    gateway = make_gateway(more_upstreams=False, engine_enabled=False, openai_key=upstream_key)
    key = gateway.new_key(max_concurrency=1)
    chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "tell me a long story"}],
            "stream": True}
    with gateway.client(key) as c:
        with c.stream("POST", "/v1/chat/completions", json=chat) as streamed:
            assert streamed.status_code == 200
            chunks = streamed.iter_bytes()  # kept: a dropped iterator closes the response
            next(chunks)  # the call is under way
            refused = c.post("/v1/chat/completions", json={**chat, "stream": False})
            assert refused.status_code == 429, refused.text
            assert refused.json()["error"]["code"] == "concurrency_limit_exceeded"
            assert submit(c).status_code == 429  # a task too: the call holds the one slot
        # The client left: once the gateway has noticed and settled the stream, the slot is free again.
        wait_for(lambda: c.post("/v1/chat/completions", json={**chat, "stream": False}).status_code == 200,
                 timeout=30, interval=0.2, what="the slot of the closed stream")
        assert submit(c).status_code == 200


def tidehub(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tidehub", *args], capture_output=True, text=True, timeout=60)


def test_cli_sets_and_changes_limits(make_gateway) -> None:
    gateway = make_gateway(more_upstreams=False, engine_enabled=False, key_cache_ttl_s=0.2)
    data = ["--data-dir", str(gateway.settings.data_dir)]
    created = tidehub("keys", "create", "--credits", "1000", "--rpm", "100", "--max-concurrency", "3", *data)
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip().splitlines()[-1]
    row = next(r for r in gateway.gateway.store.keys.list() if r["prefix"] == secret[:10])
    assert (row["rpm"], row["max_concurrency"]) == (100, 3)
    with gateway.client(secret) as c:
        assert rate_headers(c.get("/hub/v1/account"))[0] == 100
    updated = tidehub("keys", "update", row["id"], "--rpm", "7", "--max-concurrency", "0", *data)
    assert updated.returncode == 0, updated.stderr
    row = gateway.gateway.store.keys.get(row["id"])
    assert (row["rpm"], row["max_concurrency"]) == (7, None)
    listed = tidehub("keys", "list", *data)
    assert listed.returncode == 0 and "rpm" in listed.stdout
    account = tidehub("accounts", "limit", row["account_id"], "--rpm", "5", *data)
    assert account.returncode == 0, account.stderr
    assert gateway.gateway.store.accounts.get(row["account_id"])["rpm"] == 5
    bad = tidehub("keys", "update", row["id"], "--rpm", "-1", *data)
    assert bad.returncode != 0
    unknown = tidehub("accounts", "limit", "acct_nope", "--rpm", "5", *data)
    assert unknown.returncode != 0 and "no account" in unknown.stderr
    with pytest.raises(Exception, match="rpm: must be between"):
        KeyService(gateway.gateway.store, gateway.gateway.catalog).update(row["id"], rpm=10**9)
