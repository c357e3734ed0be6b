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
from tidehub.store import Store, rollups
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


def coarse(sums: dict[tuple[Any, ...], Counter], grain: str) -> dict[tuple[Any, ...], Counter]:
    """The sums as a coarser grain keeps them: by account and model, or by model only."""
    found: dict[tuple[Any, ...], Counter] = defaultdict(Counter)
    for (account, _, model, _, _, kind, outcome), counter in sums.items():
        found[(account if grain == "account" else "", "", model, "", "", kind, outcome)].update(counter)
    return found


def rollup_sums(engine: sa.Engine, period: str, grain: str = "key") -> dict[tuple[Any, ...], Counter]:
    sums: dict[tuple[Any, ...], Counter] = defaultdict(Counter)
    with engine.connect() as conn:
        for row in conn.execute(sa.select(usage_rollups).where(usage_rollups.c.period == period,
                                                               usage_rollups.c.grain == grain)).mappings():
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
    for grain in ("account", "model"):
        assert rollup_sums(engine, "hour", grain) == rollup_sums(engine, "day", grain) == coarse(raw, grain)

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
        return [dict(r) for r in conn.execute(sa.select(usage_rollups).where(usage_rollups.c.period == period))
                .mappings()]


def test_a_batch_of_calls_is_a_handful_of_upserts() -> None:
    """500 calls of two keys and two outcomes are four groups at the key grain and two at each
    coarser one, in each period, with every sum exact."""
    rows = [{"id": f"relay-{i}", "mode": "chat", "account_id": "a", "key_id": f"k{i % 2}", "model": "m",
             "channel_id": "openai", "user_identifier": None, "status": "succeeded" if i % 5 else "failed",
             "captured": 3 if i % 5 else 0, "created_at": 7200.5, "started_at": 7200.0, "finished_at": 7200.5,
             "output": {"usage": {"prompt_tokens": 2, "completion_tokens": 5}}} for i in range(500)]
    increments = rollups.contributions(rows)
    assert len(increments) == 16
    for grain in ("key", "account", "model"):
        mine = [i for i in increments if i["grain"] == grain]
        assert sum(i["count"] for i in mine if i["period"] == "day") == 500
        assert sum(i["credits"] for i in mine if i["period"] == "hour") == 3 * 400
        assert sum(i["output_tokens"] for i in mine if i["period"] == "day") == 2500
    assert all(i["start"] == 7200 for i in increments if i["period"] == "hour")
    assert all(i["lat_3"] == i["count"] for i in increments)  # 0.5 s: the (0.25, 0.5] bucket
    assert rollups.percentile([0] * 3 + [10] + [0] * 10, 0.5) == 0.375


def test_the_migration_rolls_up_the_tasks_already_settled(database_url: str) -> None:
    """A database made before the rollups: migration 0007 fills them from its settled tasks."""
    from alembic import command
    from alembic.config import Config

    from tidehub.store import Store
    from tidehub.store.database import MIGRATIONS, create_engine

    engine = create_engine(database_url)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0006")
    legacy = sa.table("tasks", *(sa.column(c) for c in (
        "id", "account_id", "key_id", "model", "endpoint", "capability", "mode", "status", "held", "captured",
        "deadline_at", "created_at", "updated_at", "started_at", "finished_at", "channel_id", "user_identifier")),
        sa.column("input", sa.JSON), sa.column("output", sa.JSON))
    rows = [{"id": f"{'relay' if i % 3 == 0 else 'hub'}-{i}", "account_id": f"a{i % 2}", "key_id": "k", "model": "m",
             "endpoint": "e", "capability": "chat", "mode": "credit-block" if i == 7 else "chat", "input": {},
             "status": ("succeeded", "failed", "running")[i % 3], "held": 4, "captured": 4 if i % 3 == 0 else 0,
             "deadline_at": 1e9, "created_at": 1e9 + i * 600, "updated_at": 1e9, "started_at": 1e9 + i * 600,
             "finished_at": 1e9 + i * 600 + 1.5, "channel_id": "c", "user_identifier": None,
             "output": {"usage": {"prompt_tokens": 3, "completion_tokens": 4}}} for i in range(12_000)]
    with engine.begin() as conn:
        conn.execute(sa.insert(legacy), rows)
    engine.dispose()
    store = Store(database_url)  # migrates to the newest revision
    settled = [r for r in rows if r["status"] != "running" and r["mode"] != "credit-block"]
    assert len(settled) == 7_999  # the credit block is not usage
    try:
        raw = defaultdict(Counter)
        for r in settled:
            group = (r["account_id"], "k", "m", "c", "", "call" if r["id"].startswith("relay-") else "task", r["status"])
            raw[group].update(count=1, credits=r["captured"], input_tokens=3, output_tokens=4, latency_ms=1500)
        for period in ("hour", "day"):
            assert rollup_sums(store.engine, period) == raw
            for grain in ("account", "model"):
                assert rollup_sums(store.engine, period, grain) == coarse(raw, grain)
    finally:
        store.close()


def test_the_rollup_grains_migration_goes_down_keeping_the_key_grain(database_url: str, tmp_path) -> None:
    from alembic import command
    from alembic.config import Config

    from tidehub.store.database import MIGRATIONS

    store = Store(database_url or f"sqlite:///{tmp_path / 'down.db'}")
    sums = {"count": 2, "credits": 30, "input_tokens": 0, "output_tokens": 0, "latency_ms": 10,
            **{f"lat_{i}": 0 for i in range(14)}}
    group = {"period": "day", "start": 0, "account_id": "acc", "model": "m", "kind": "task", "outcome": "succeeded"}
    with store.engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM usage_rollups"))
        for grain, key_id in (("key", "k1"), ("account", ""), ("model", "")):
            row = {**group, "grain": grain, "key_id": key_id, "channel_id": "", "user_identifier": "", **sums}
            conn.execute(sa.text(f"INSERT INTO usage_rollups ({', '.join(row)}) VALUES "
                                 f"({', '.join(':' + name for name in row)})"), row)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))

    def run(step, revision: str) -> None:
        with store.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            step(cfg, revision)

    run(command.downgrade, "0008")
    with store.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT key_id, count, credits FROM usage_rollups")).all()
    assert [tuple(r) for r in rows] == [("k1", 2, 30)]  # the coarser grains were sums of it
    run(command.upgrade, "head")
    with store.engine.connect() as conn:
        grains = dict(conn.execute(sa.text("SELECT grain, credits FROM usage_rollups")).all())
    assert grains == {"key": 30, "account": 30, "model": 30}
