"""Usage rollups: exactly the sum of the settled rows, for a mixed workload on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from typing import Any

import httpx
import sqlalchemy as sa

from conftest import GatewayServer, wait_for
from tidehub.core.lifecycle import ACTIVE
from tidehub.sim import CONTENT_POLICY_MARKER, STREAM_CUT_MARKER
from tidehub.store import rollups
from tidehub.store.schema import ledger, tasks, usage_rollups

GROUP = ("account_id", "key_id", "model", "channel_id", "user_identifier", "kind", "outcome")


def run_mixed_workload(gateway: GatewayServer, key: str) -> None:
    """Tasks that complete, fail, are cancelled or time out; relayed calls that succeed or fail;
    streams read to the end, left early, or cut by the upstream."""
    auth = {"Authorization": f"Bearer {key}"}
    with gateway.client(key) as c:
        for user in ("alice", "alice", "bob", None):
            body = {"model": "nano-banana", "input": {"prompt": "a lighthouse"}}
            assert c.post("/hub/v1/image", json={**body, **({"user_identifier": user} if user else {})}).status_code == 200
        refused = {"model": "nano-banana", "input": {"prompt": f"a lighthouse {CONTENT_POLICY_MARKER}"}}
        assert c.post("/hub/v1/image", json=refused).status_code == 200
        for _ in range(2):  # a video outlives its deadline here, unless cancelled first
            task_id = c.post("/hub/v1/video", json={"model": "veo-3.1", "input": {"prompt": "slow"}}).json()["task_id"]
            c.post(f"/hub/v1/tasks/{task_id}/cancel")
        c.post("/hub/v1/video", json={"model": "veo-3.1", "input": {"prompt": "slow"}, "user_identifier": "carol"})
        for user in ("alice", "dave", None):
            chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello there"}],
                    **({"user": user} if user else {})}
            assert c.post("/v1/chat/completions", json=chat).status_code == 200
        assert c.post("/v1/embeddings", json={"model": "text-embedding-3-small", "input": "tide"}).status_code == 200
    long = {"model": "gpt-4", "messages": [{"role": "user", "content": "tell me " + "harbour " * 80}], "stream": True}
    cut = {"model": "gpt-4o", "messages": [{"role": "user", "content": f"a story {STREAM_CUT_MARKER}"}], "stream": True}
    with httpx.Client(base_url=gateway.url, headers=auth, timeout=30) as http:
        for body, read_all in ((long, True), (long, False), (long, False), (cut, True)):
            with http.stream("POST", "/v1/chat/completions", json=body) as resp:
                for n, _ in enumerate(resp.iter_lines()):
                    if not read_all and n >= 2:
                        break  # the client leaves early
    store = gateway.gateway.store
    # Everything settles: tasks end, relayed calls are written, idle credit blocks are closed.
    wait_for(lambda: store.tasks.count(ACTIVE) == 0, timeout=60, what="every task and block settled")


def raw_sums(engine: sa.Engine) -> dict[tuple[Any, ...], Counter]:
    """The settled rows summed by group, computed straight from the task rows."""
    sums: dict[tuple[Any, ...], Counter] = defaultdict(Counter)
    with engine.connect() as conn:
        for row in conn.execute(sa.select(tasks).where(tasks.c.mode != "credit-block")).mappings():
            assert row["status"] not in ACTIVE
            began = min(row["created_at"], row["started_at"] or row["created_at"])
            tokens = rollups.tokens_of(row["output"])
            group = (row["account_id"], row["key_id"], row["model"], row["channel_id"] or "",
                     row["user_identifier"] or "", "call" if row["id"].startswith("relay-") else "task", row["status"])
            sums[group].update(count=1, credits=row["captured"], input_tokens=tokens[0], output_tokens=tokens[1],
                               latency_ms=int(round((row["finished_at"] - began) * 1000)))
    return sums


def rollup_sums(engine: sa.Engine, period: str) -> dict[tuple[Any, ...], Counter]:
    sums: dict[tuple[Any, ...], Counter] = defaultdict(Counter)
    with engine.connect() as conn:
        for row in conn.execute(sa.select(usage_rollups).where(usage_rollups.c.period == period)).mappings():
            histogram = sum(row[name] for name in rollups.LATENCY)
            assert histogram == row["count"]
            sums[tuple(row[c] for c in GROUP)].update(
                {name: row[name] for name in ("count", "credits", "input_tokens", "output_tokens", "latency_ms")})
    return sums


def test_rollups_equal_the_raw_records_for_a_mixed_workload(make_gateway, database_url: str) -> None:
    gateway = make_gateway(database_url, deadline_video_s=10)
    key = gateway.new_key(credits=10**7)
    run_mixed_workload(gateway, key)
    engine = gateway.gateway.store.engine
    raw = raw_sums(engine)
    outcomes = Counter((group[5], group[6]) for group in raw)
    assert {("task", "succeeded"), ("task", "failed"), ("call", "succeeded"), ("call", "failed")} <= set(outcomes)
    assert {("task", "canceled"), ("task", "timeout"), ("call", "canceled")} & set(outcomes)
    assert any(sums["input_tokens"] for group, sums in raw.items() if group[5] == "call")
    assert rollup_sums(engine, "hour") == raw
    assert rollup_sums(engine, "day") == raw

    # The money agrees three ways: rollups, the ledger's captures, and the account's spent.
    with engine.connect() as conn:
        captured = conn.execute(sa.select(sa.func.sum(ledger.c.amount)).where(ledger.c.kind == "capture")).scalar()
    credits = sum(s["credits"] for s in raw.values())
    with gateway.client(key) as c:
        usage = c.get("/hub/v1/usage").json()
        assert usage["totals"]["credits"] == credits == captured == c.get("/hub/v1/account").json()["spent"] > 0
        assert usage["totals"]["tasks"] == sum(s["count"] for s in raw.values())
        by_user = {r["user_identifier"]: r for r in c.get("/ms/v1/usage", params={"group_by": "user_identifier"}).json()["data"]}
        alice = [s for g, s in raw.items() if g[4] == "alice"]
        assert by_user["alice"]["tasks"] == sum(s["count"] for s in alice)
        assert by_user["alice"]["credits"] == sum(s["credits"] for s in alice)
        by_model = {r["model"]: r for r in c.get("/hub/v1/usage", params={"group_by": "model"}).json()["data"]}
        assert by_model["gpt-4o-mini"]["input_tokens"] == sum(s["input_tokens"] for g, s in raw.items()
                                                                if g[2] == "gpt-4o-mini") > 0
        # An hour-aligned window reads the hourly rows: the same totals.
        hour = min(r["start"] for r in _rows(engine, "hour"))
        windowed = c.get("/hub/v1/usage", params={"from": str(hour), "to": str(hour + 7200)}).json()
        assert windowed["totals"]["credits"] == credits

    # The dashboard's figures come from the same rows, over hourly and daily ones alike.
    for span, bucket in ((86400, 3600), (7 * 86400, 86400)):
        figures = asyncio.run(gateway.gateway.stats.dashboard(span, bucket))
        assert figures["credits_captured"] == credits
        for kind in ("task", "call"):
            by_status = Counter()
            for group, sums in raw.items():
                if group[5] == kind:
                    by_status[group[6]] += sums["count"]
            assert figures["summary"][kind]["by_status"] == dict(by_status)
            assert figures["latency_s"][kind]["sample"] == by_status["succeeded"]
            assert 0 < figures["latency_s"][kind]["p50"] <= figures["latency_s"][kind]["p95"]
        assert sum(b["count"] for b in figures["series"]) == sum(s["count"] for s in raw.values())
        assert {m["name"] for m in figures["top_models"]} >= {"nano-banana", "gpt-4o-mini", "veo-3.1"}


def _rows(engine: sa.Engine, period: str) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(sa.select(usage_rollups).where(usage_rollups.c.period == period)).mappings()]


def test_a_batch_of_calls_is_a_handful_of_upserts() -> None:
    """500 calls of two keys and two outcomes add four groups to each period, with every sum exact."""
    rows = [{"id": f"relay-{i}", "mode": "chat", "account_id": "a", "key_id": f"k{i % 2}", "model": "m",
             "channel_id": "openai", "user_identifier": None, "status": "succeeded" if i % 5 else "failed",
             "captured": 3 if i % 5 else 0, "created_at": 7200.5, "started_at": 7200.0, "finished_at": 7200.5,
             "output": {"usage": {"prompt_tokens": 2, "completion_tokens": 5}}} for i in range(500)]
    increments = rollups.contributions(rows)
    assert len(increments) == 8
    assert sum(i["count"] for i in increments if i["period"] == "day") == 500
    assert sum(i["credits"] for i in increments if i["period"] == "hour") == 3 * 400
    assert all(i["start"] == 7200 for i in increments if i["period"] == "hour")
    assert sum(i["output_tokens"] for i in increments if i["period"] == "day") == 2500
    assert all(i["lat_3"] == i["count"] for i in increments)  # 0.5 s: the (0.25, 0.5] bucket
    assert rollups.percentile([0] * 3 + [10] + [0] * 10, 0.5) == 0.375
