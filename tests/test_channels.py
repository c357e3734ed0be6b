"""Channels: routing by priority, weight and limits; failover, retries and breakers, against
simulated upstream accounts (each simulator key is one channel with its own faults)."""

from __future__ import annotations

import secrets
import time
import subprocess
import sys
from collections import Counter
from typing import Any

import httpx
import pytest

from conftest import GatewayServer, wait_for, wait_task

IMAGE = {"model": "nano-banana", "input": {"prompt": "a lighthouse"}}
VIDEO = {"model": "veo-3.1", "input": {"prompt": "waves", "duration": "4s"}}


def sim_channel(sim, key: str, **knobs: Any) -> str:
    resp = httpx.put(f"{sim.base_url}/_sim/channels/{key}", json=knobs, timeout=10)
    assert resp.status_code < 300, resp.text
    return key


@pytest.fixture
def channel_gateway(make_gateway, sim):
    """A gateway with no implicit channel: only those a test adds."""

    def make(*channels: dict[str, Any], **settings: Any) -> GatewayServer:
        gateway = make_gateway(fal_key="", openai_key="", secret_key="test-secret-key", more_upstreams=False,
                               **settings)
        for spec in channels:
            spec = dict(spec)
            key = sim_channel(sim, spec.pop("key", secrets.token_hex(4)), **spec.pop("knobs", {}))
            gateway.gateway.channels.add(spec.pop("name"), adapter="fal", base_url=sim.base_url, secret=key, **spec)
        gateway.gateway.router.reload()
        return gateway

    return make


def submit_all(client: httpx.Client, n: int, body: dict[str, Any], capability: str = "image") -> list[str]:
    ids = []
    for _ in range(n):
        resp = client.post(f"/hub/v1/{capability}", json=body)
        assert resp.status_code == 200, resp.text
        ids.append(resp.json()["task_id"])
    return ids


def finish_all(client: httpx.Client, ids: list[str], timeout: float = 90) -> list[dict[str, Any]]:
    return [wait_task(client, f"/hub/v1/tasks/{t}", lambda b: b["ready"], timeout=timeout) for t in ids]


def channel_names(gateway: GatewayServer) -> dict[str, str]:
    return {row["id"]: row["name"] for row in gateway.gateway.store.channels.list()}


def test_priority_then_weight(channel_gateway) -> None:
    gateway = channel_gateway(
        {"name": "heavy", "priority": 10, "weight": 3},
        {"name": "light", "priority": 10, "weight": 1},
        {"name": "backup", "priority": 0},
    )
    with gateway.client(gateway.new_key()) as c:
        ids = submit_all(c, 60, IMAGE)
        assert all(t["status"] == "completed" for t in finish_all(c, ids))
    names = channel_names(gateway)
    used = Counter(names[gateway.gateway.store.tasks.get(t)["channel_id"]] for t in ids)
    assert used["backup"] == 0, used
    assert used["heavy"] > used["light"] >= 5, used


def test_concurrency_limit_queues_and_drains(channel_gateway) -> None:
    gateway = channel_gateway({"name": "narrow", "max_concurrency": 2})
    store = gateway.gateway.store
    with gateway.client(gateway.new_key()) as c:
        ids = submit_all(c, 8, VIDEO, "video")
        peak, seen_waiting = 0, False
        deadline = time.monotonic() + 90
        while not all(store.tasks.get(t)["status"] == "succeeded" for t in ids):
            assert time.monotonic() < deadline, "the queue did not drain"
            running = sum(store.tasks.get(t)["status"] == "running" for t in ids)
            peak = max(peak, running)
            assert running <= 2, f"{running} tasks running on a channel limited to 2"
            waiting = [c.get(f"/hub/v1/tasks/{t}").json() for t in ids]
            assert all(w["status"] in ("pending", "processing", "completed") for w in waiting)
            pending = [w for w in waiting if w["status"] == "pending"]
            # Waiting tasks show their place in Tidehub's own queue.
            assert all(isinstance(w["queue_position"], int) and 0 <= w["queue_position"] < len(ids) for w in pending)
            seen_waiting = seen_waiting or bool(pending)
            time.sleep(0.05)  # a sampling interval, not a synchronisation
        assert peak == 2 and seen_waiting


def test_failover_from_a_dead_channel_and_breaker_recovers(channel_gateway, sim) -> None:
    gateway = channel_gateway(
        {"name": "dead", "priority": 10, "key": "dead-" + secrets.token_hex(3), "knobs": {"outage": True}},
        {"name": "alive", "priority": 0},
        breaker_failures=3, breaker_cool_down_s=25,  # 0.5 s at the test time scale
    )
    router = gateway.gateway.router
    dead = next(cid for cid, name in channel_names(gateway).items() if name == "dead")
    with gateway.client(gateway.new_key()) as c:
        ids = submit_all(c, 20, IMAGE)
        tasks = finish_all(c, ids)
        assert all(t["status"] == "completed" for t in tasks), [t for t in tasks if t["status"] != "completed"]
    assert router.health[dead].state in ("open", "half_open")
    # Bring it back: after the cool-down a probe goes through, and the breaker closes.
    key = next(c.secret for c in router.channels.values() if c.id == dead)
    sim_channel(sim, key, outage=False)
    with gateway.client(gateway.new_key()) as c:
        def recovered() -> bool:
            [task_id] = submit_all(c, 1, IMAGE)
            finish_all(c, [task_id])
            return router.health[dead].state == "closed"

        wait_for(recovered, timeout=30, interval=0.3, what="the breaker to close")


def sim_stats(sim, key: str) -> dict[str, int]:
    return httpx.get(f"{sim.base_url}/_sim/stats", timeout=10).json()["channels"][key]


def test_a_probe_that_meets_a_429_does_not_stall_the_channel(channel_gateway, sim) -> None:
    """An outage opens the breaker; the outage ends while 429s go on, so the half-open probe meets a
    429; then the upstream heals. Tasks old and new must finish: the 429 ended the probe."""
    key = "storm-" + secrets.token_hex(3)
    gateway = channel_gateway(
        {"name": "only", "key": key,
         "knobs": {"rate_limit_every": 1, "rate_limit_burst": 10**6, "retry_after_s": 0.05}},
        breaker_failures=2, breaker_cool_down_s=25,  # 0.5 s at the test time scale
    )
    router = gateway.gateway.router
    [cid] = channel_names(gateway)
    with gateway.client(gateway.new_key()) as c:
        finish_all(c, submit_all(c, 1, IMAGE))  # one accepted submit starts the storm of 429s
        sim_channel(sim, key, outage=True)
        stalled = submit_all(c, 3, IMAGE)
        wait_for(lambda: router.health[cid].state == "open", timeout=30, what="the breaker to open")
        limited = sim_stats(sim, key)["rate_limited"]
        sim_channel(sim, key, outage=False)
        wait_for(lambda: sim_stats(sim, key)["rate_limited"] > limited, timeout=30,
                 what="a probe to meet a 429")
        sim_channel(sim, key, rate_limit_every=0)
        tasks = finish_all(c, stalled + submit_all(c, 2, IMAGE), timeout=60)
    assert [t["status"] for t in tasks] == ["completed"] * 5
    assert router.health[cid].state == "closed"


def test_transient_errors_are_retried_elsewhere_invisibly(channel_gateway) -> None:
    gateway = channel_gateway(
        {"name": "flaky", "priority": 10, "knobs": {"submit_error_rate": 0.5, "seed": 3}},
        {"name": "steady", "priority": 10},
    )
    store = gateway.gateway.store
    with gateway.client(gateway.new_key()) as c:
        ids = submit_all(c, 30, IMAGE)
        assert all(t["status"] == "completed" for t in finish_all(c, ids))
    retried = [store.tasks.get(t) for t in ids if store.tasks.get(t)["attempts"]]
    assert retried, "no submit failed: the fault injection did not happen"
    flaky = next(cid for cid, name in channel_names(gateway).items() if name == "flaky")
    # A retry never lands on the channel that just failed while another exists.
    assert all(t["channel_id"] != flaky for t in retried)


def test_permanent_failures_fail_fast_and_free(channel_gateway) -> None:
    gateway = channel_gateway({"name": "a"}, {"name": "b"})
    key = gateway.new_key(credits=10_000)
    with gateway.client(key) as c:
        [task_id] = submit_all(c, 1, {"model": "nano-banana", "input": {"prompt": "x [sim:content-policy]"}})
        [task] = finish_all(c, [task_id])
        assert task["status"] == "failed" and task["error_code"] == "content_policy", task
        account = c.get("/hub/v1/account").json()
    assert account["balance"] == 10_000 and account["held"] == 0
    assert gateway.gateway.store.tasks.get(task_id)["attempts"] == 0


def test_disabling_a_channel_moves_its_tasks(channel_gateway) -> None:
    gateway = channel_gateway({"name": "first", "priority": 10}, {"name": "second", "priority": 0})
    store = gateway.gateway.store
    names = channel_names(gateway)
    with gateway.client(gateway.new_key()) as c:
        ids = submit_all(c, 4, {"model": "veo-3.1", "input": {"prompt": "long", "duration": "8s"}}, "video")
        wait_for(lambda: all(names.get(store.tasks.get(t)["channel_id"]) == "first" for t in ids),
                 what="tasks running on the first channel")
        gateway.gateway.channels.update("first", enabled=False)
        assert all(t["status"] == "completed" for t in finish_all(c, ids))
    assert {names[store.tasks.get(t)["channel_id"]] for t in ids} == {"second"}


def test_no_channel_for_a_model_fails_clearly(channel_gateway) -> None:
    gateway = channel_gateway({"name": "images-only", "models": ["google/nano-banana/text-to-image"]})
    with gateway.client(gateway.new_key()) as c:
        [task_id] = submit_all(c, 1, VIDEO, "video")
        [task] = finish_all(c, [task_id])
    assert task["status"] == "failed" and task["error_code"] == "no_channel"


def test_admin_endpoint_shows_health(channel_gateway) -> None:
    gateway = channel_gateway({"name": "solo"}, admin_token="admin-secret")
    with gateway.client(gateway.new_key()) as c:
        finish_all(c, submit_all(c, 2, IMAGE))
    with httpx.Client(base_url=gateway.url) as anon:
        assert anon.get("/admin/v1/channels").status_code == 401
        assert anon.get("/admin/v1/channels", headers={"Authorization": "Bearer nope"}).status_code == 403
        rows = anon.get("/admin/v1/channels", headers={"Authorization": "Bearer admin-secret"}).json()["data"]
    [solo] = rows
    assert solo["name"] == "solo" and solo["health"]["state"] == "closed" and solo["health"]["requests"] >= 2
    assert "secret" not in solo and all("sim" not in str(v) or k == "base_url" for k, v in solo.items())


def test_credentials_are_encrypted_at_rest(channel_gateway) -> None:
    gateway = channel_gateway({"name": "enc", "key": "very-secret-upstream-key"})
    [row] = gateway.gateway.store.channels.list()
    assert "very-secret-upstream-key" not in row["secret"] and row["secret"]


def tidehub(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-m", "tidehub", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def test_channels_cli(tmp_path, sim) -> None:
    data = ["--data-dir", str(tmp_path)]
    env = {"TIDEHUB_SECRET_KEY": "cli-secret"}
    missing = tidehub("channels", "add", "x", "--base-url", sim.base_url, "--key", "k", *data)
    assert missing.returncode == 2 and "TIDEHUB_SECRET_KEY" in missing.stderr
    added = tidehub("channels", "add", "main", "--base-url", sim.base_url, "--key", "sim-key", "--priority", "5",
                    "--max-concurrency", "3", *data, env=env)
    assert added.returncode == 0, added.stderr
    assert tidehub("channels", "update", "main", "--weight", "4", "--rpm", "600", *data, env=env).returncode == 0
    assert tidehub("channels", "disable", "main", *data, env=env).returncode == 0
    listed = tidehub("channels", "list", *data, env=env)
    assert "main" in listed.stdout and " no " in listed.stdout and "sim-key" not in listed.stdout
    assert tidehub("channels", "enable", "main", *data, env=env).returncode == 0
    tested = tidehub("channels", "test", "main", *data, env=env)
    assert tested.returncode == 0 and tested.stdout.startswith("ok: main ran google/nano-banana/text-to-image"), (
        tested.stdout + tested.stderr)
    bad = tidehub("channels", "update", "main", "--models", "no/such/model", *data, env=env)
    assert bad.returncode == 2 and "no catalog endpoint" in bad.stderr
    assert tidehub("channels", "update", "ghost", "--weight", "2", *data, env=env).returncode == 2
