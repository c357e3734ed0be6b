"""The console at size: the task list, a task page and the dashboard on a database of 1,000,000 tasks.

    python bench/console_data.py [--tasks 1000000] [--requests 40] [--keep DIR]

Seeds a SQLite database (bulk insert: tasks and relayed calls over 30 days, most settled, a few
live, with their usage rollups summed the way settlements add them), then times pages through
the ASGI app with a signed-in operator, in process (no network, no server). The same pages on an
empty database and `GET /api/health` are the baseline, in the same run. Prints p50 and p95 in ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import sqlite3
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from harness import machine
from tidehub.app import create_app
from tidehub.config import Settings
from tidehub.gateway import Gateway
from tidehub.store import rollups

DAY = 86400
COLUMNS = ("id", "account_id", "key_id", "model", "endpoint", "capability", "mode", "input", "status", "progress",
           "attempts", "held", "captured", "cancel_upstream", "deadline_at", "created_at", "updated_at", "started_at",
           "finished_at", "channel_id", "adapter", "user_identifier", "output", "error_code", "next_check_at")
STATUSES = (("succeeded", 0.86), ("failed", 0.08), ("canceled", 0.03), ("timeout", 0.02), ("queued", 0.005),
            ("running", 0.005))


def seed(gw: Gateway, db: Path, count: int, now: float) -> dict[str, Any]:
    """``count`` tasks and calls over the last 30 days, newest last; returns ids to visit."""
    rng = random.Random(7)
    keys = [gw.keys.create(name=f"customer-{i}", credits=10**9) for i in range(20)]
    endpoints = [e for e in gw.catalog.endpoints.values()][:12]
    chat = [e for e in gw.catalog.endpoints.values() if e.capability == "chat"][:3]
    users = [f"user-{i}" for i in range(50)] + [None] * 50
    channels = ["fal", "openai", "replicate", "nexus"]
    statuses, weights = zip(*STATUSES)
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA synchronous=OFF")
    placeholders = ",".join("?" for _ in COLUMNS)
    insert = f"INSERT INTO tasks ({','.join(COLUMNS)}) VALUES ({placeholders})"
    visit: dict[str, Any] = {"model": endpoints[0].model, "account": keys[0].account_id}
    span = 30 * DAY
    chunk: list[tuple[Any, ...]] = []
    settled: list[dict[str, Any]] = []

    def flush() -> None:
        conn.executemany(insert, chunk)
        conn.commit()
        with gw.store.engine.begin() as sa_conn:
            rollups.add(sa_conn, settled)

    for n in range(count):
        created = now - span + span * n / count
        call = rng.random() < 0.4
        endpoint = rng.choice(chat if call else endpoints)
        key = rng.choice(keys)
        status = "succeeded" if call and rng.random() < 0.9 else rng.choices(statuses, weights)[0]
        if call and status in ("queued", "running", "timeout"):
            status = "failed"
        live = status in ("queued", "running")
        if live and now - created > 600:
            status, live = "timeout", False  # only recent tasks are still live
        took = rng.uniform(0.2, 2.5) if call else rng.uniform(3, 120)
        price = rng.randint(1, 60)
        row = {
            "id": f"relay-{uuid.uuid4().hex[:22]}" if call else f"hub-{uuid.uuid4()}",
            "account_id": key.account_id, "key_id": key.key_id, "model": endpoint.model,
            "endpoint": endpoint.slug, "capability": endpoint.capability, "mode": endpoint.mode,
            "input": "{}" if call else json.dumps({"prompt": "a lighthouse at dawn, seen from the sea"}),
            "status": status, "progress": 100 if status == "succeeded" else 0, "attempts": 0 if call else 1,
            "held": price, "captured": price if status == "succeeded" else 0, "cancel_upstream": 0,
            "deadline_at": created + 600, "created_at": created, "updated_at": created + took,
            "started_at": created - took if call else created + 0.1,
            "finished_at": None if live else created + took,
            "channel_id": rng.choice(channels), "adapter": "fal", "user_identifier": rng.choice(users),
            "output": (json.dumps({"usage": {"prompt_tokens": 40, "completion_tokens": 120}}) if call else
                       json.dumps({"images": [{"url": "https://files.example.com/a.png",
                                               "content_type": "image/png"}]}))
            if status == "succeeded" else None,
            "error_code": None if status == "succeeded" or live else status,
            "next_check_at": created + 5 if live else None,
        }
        chunk.append(tuple(row[c] for c in COLUMNS))
        if not live:
            settled.append({**row, "output": json.loads(row["output"]) if row["output"] else None})
        if status == "succeeded" and not call:
            visit["task"] = row["id"]
        if len(chunk) == 50_000:
            flush()
            chunk, settled = [], []
    flush()
    conn.close()
    return visit


async def measure(app: Any, gw: Gateway, operator: str, password: str, paths: dict[str, str],
                  requests: int) -> dict[str, Any]:
    transport = httpx.ASGITransport(app, client=("127.0.0.1", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        page = await http.get("/console/login")
        token = page.text.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
        signed = await http.post("/console/login", data={"name": operator, "password": password, "csrf_token": token})
        assert signed.status_code == 303, signed.text[:300]
        found = {}
        for name, path in paths.items():
            times = []
            for i in range(requests + 3):
                started = time.perf_counter()
                response = await http.get(path)
                took = (time.perf_counter() - started) * 1000
                assert response.status_code == 200, (path, response.status_code, response.text[:300])
                if i >= 3:  # the first few warm the caches
                    times.append(took)
            times.sort()
            found[name] = {"p50_ms": round(statistics.median(times), 1),
                           "p95_ms": round(times[int(0.95 * (len(times) - 1))], 1), "path": path}
        return found


def open_gateway(data_dir: Path, operator: str = "bench") -> tuple[Gateway, Any, str]:
    settings = Settings(data_dir=data_dir, engine_enabled=False, secret_key="bench-secret", fal_key="bench",
                        fal_base_url="http://127.0.0.1:9")
    gw = Gateway.open(settings)
    _, password = gw.operators.create(operator, "admin")
    return gw, create_app(settings, gw), password


def seeded_visit(gw: Gateway) -> dict[str, Any]:
    """What to visit in a database seeded by an earlier run."""
    with gw.store.engine.connect() as conn:
        task, model, account = conn.exec_driver_sql(
            "SELECT id, model, account_id FROM tasks WHERE status = 'succeeded' AND id LIKE 'hub-%' "
            "ORDER BY created_at DESC LIMIT 1").one()
    return {"task": task, "model": model, "account": account}


def count_tasks(gw: Gateway) -> int:
    with gw.store.engine.connect() as conn:
        return conn.exec_driver_sql("SELECT max(rowid) FROM tasks").scalar() or 0


def pages(visit: dict[str, Any]) -> dict[str, str]:
    found = {"health": "/api/health", "tasks_24h": "/console/tasks", "tasks_all": "/console/tasks?window=all",
             "tasks_failed_7d": "/console/tasks?status=failed&window=7d",
             "tasks_account_30d": f"/console/tasks?account={visit.get('account', 'none')}&window=30d",
             "tasks_model_24h": f"/console/tasks?model={visit.get('model', 'none')}",
             "dashboard_24h": "/console/", "dashboard_7d": "/console/?window=7d",
             "dashboard_30d": "/console/?window=30d", "usage_30d_by_model": "/console/usage?window=30d&group_by=model"}
    if "task" in visit:
        found["task_page"] = f"/console/tasks/{visit['task']}"
    return found


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--keep", type=Path, help="keep the seeded database in this directory; a database "
                        "already there is measured as it is (no seeding)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="tidehub-console-bench-"))
    try:
        empty, empty_app, empty_password = open_gateway(tmp / "empty")
        big_dir = args.keep or tmp / "big"
        reuse = (big_dir / "tidehub.db").exists()
        big_operator = f"bench-{uuid.uuid4().hex[:6]}" if reuse else "bench"
        big, big_app, big_password = open_gateway(big_dir, big_operator)
        started = time.perf_counter()
        visit = seeded_visit(big) if reuse else seed(big, big_dir / "tidehub.db", args.tasks, time.time())
        seeded_s = None if reuse else time.perf_counter() - started
        # A task on the empty database too, so its task page has something to show.
        empty_visit = seed(empty, tmp / "empty" / "tidehub.db", 20, time.time())
        with big.store.engine.connect() as conn:
            rollup_rows = conn.exec_driver_sql("SELECT count(*) FROM usage_rollups").scalar()
        result = {
            "machine": machine(), "tasks": count_tasks(big), "seed_s": seeded_s and round(seeded_s, 1),
            "database_mb": round((big_dir / "tidehub.db").stat().st_size / 2**20, 1), "rollup_rows": rollup_rows,
            "empty": await measure(empty_app, empty, "bench", empty_password, pages(empty_visit), args.requests),
            "seeded": await measure(big_app, big, big_operator, big_password, pages(visit), args.requests),
        }
        print(json.dumps(result, indent=2))
        await empty.close()
        await big.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
