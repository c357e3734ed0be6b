"""Retention: settled task and call rows go after TIDEHUB_RECORD_RETENTION_DAYS, in batches, with
the rows that hang off them; live tasks, newer rows and the usage rollups stay."""

from __future__ import annotations

import time

import sqlalchemy as sa

from conftest import wait_for, wait_task
from tidehub.store import Store, rollups
from tidehub.store.schema import (idempotency_keys, ledger, task_events, tasks, usage_rollups, webhook_attempts,
                                  webhook_deliveries)

DAY = 86400


def task_row(task_id: str, created_at: float, status: str = "succeeded") -> dict:
    return {"id": task_id, "account_id": "acct", "key_id": "key", "model": "nano-banana", "endpoint": "e",
            "capability": "image", "mode": "text-to-image", "input": {}, "status": status, "held": 5,
            "captured": 5 if status == "succeeded" else 0, "deadline_at": created_at + 600,
            "created_at": created_at, "updated_at": created_at, "started_at": created_at,
            "finished_at": None if status == "running" else created_at + 2, "channel_id": "fal",
            "user_identifier": None}


def test_forget_deletes_old_settled_rows_in_batches_with_their_dependents(database_url: str) -> None:
    store = Store(database_url)
    now = time.time()
    old = [task_row(f"old-{i:04d}", now - 100 * DAY + i) for i in range(1100)]
    stuck = task_row("old-running", now - 100 * DAY, status="running")  # not settled: never deleted
    new = task_row("new-1", now - DAY)
    rows = [*old, stuck, new]
    with store.engine.begin() as conn:
        conn.execute(sa.insert(tasks), rows)
        conn.execute(sa.insert(ledger), [{"account_id": "acct", "task_id": r["id"], "kind": "hold", "amount": 5,
                                          "created_at": r["created_at"]} for r in rows])
        conn.execute(sa.insert(ledger).values(account_id="acct", task_id=None, kind="topup", amount=10**6,
                                              created_at=now - 200 * DAY))
        for r in (old[0], old[1050], new):
            conn.execute(sa.insert(webhook_deliveries).values(
                id=f"msg-{r['id']}", account_id="acct", task_id=r["id"], url="https://example.com/hook",
                status="delivered", created_at=r["created_at"]))
            conn.execute(sa.insert(webhook_attempts).values(delivery_id=f"msg-{r['id']}", attempt=1,
                                                            at=r["created_at"], status_code=200))
        conn.execute(sa.insert(idempotency_keys).values(account_id="acct", key="k1", request_hash="h",
                                                        task_id=old[3]["id"], created_at=old[3]["created_at"]))
        rollups.add(conn, [r for r in rows if r["status"] != "running"])
        conn.execute(sa.insert(task_events), [{"task_id": r["id"], "seq": 1, "at": now, "kind": "status",
                                               "data": {"status": r["status"]}} for r in (old[5], stuck, new)])
    with store.engine.connect() as conn:
        before = conn.execute(sa.select(usage_rollups).order_by(*usage_rollups.primary_key)).all()

    cutoff = now - 90 * DAY
    assert [store.tasks.forget(cutoff, 500) for _ in range(4)] == [500, 500, 100, 0]

    with store.engine.connect() as conn:
        left = set(conn.execute(sa.select(tasks.c.id)).scalars())
        assert left == {"old-running", "new-1"}
        assert set(conn.execute(sa.select(ledger.c.task_id)).scalars()) == {None, "old-running", "new-1"}
        assert set(conn.execute(sa.select(webhook_deliveries.c.task_id)).scalars()) == {"new-1"}
        assert set(conn.execute(sa.select(webhook_attempts.c.delivery_id)).scalars()) == {"msg-new-1"}
        assert conn.execute(sa.select(sa.func.count()).select_from(idempotency_keys)).scalar() == 0
        assert set(conn.execute(sa.select(task_events.c.task_id)).scalars()) == {"old-running", "new-1"}
        after = conn.execute(sa.select(usage_rollups).order_by(*usage_rollups.primary_key)).all()
    assert after == before and sum(r.count for r in after if r.period == "day" and r.grain == "key") == 1101
    store.close()


def test_the_engine_sweep_forgets_records_and_usage_stays(make_gateway, database_url: str) -> None:
    gateway = make_gateway(database_url, asset_sweep_interval_s=0.2)
    key = gateway.new_key(credits=10**6)
    with gateway.client(key) as c:
        task_id = c.post("/hub/v1/image", json={"model": "nano-banana", "input": {"prompt": "x"}}).json()["task_id"]
        assert wait_task(c, f"/hub/v1/tasks/{task_id}", lambda b: b["ready"])["status"] == "completed"
        chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}
        assert c.post("/v1/chat/completions", json=chat).status_code == 200
        wait_for(lambda: len(c.get("/hub/v1/usage/records").json()["data"]) == 2, what="the call recorded")
        spent = c.get("/hub/v1/account").json()["spent"]
        usage = c.get("/hub/v1/usage").json()["totals"]
        assert usage["tasks"] == 2 and usage["credits"] == spent > 0
        store = gateway.gateway.store
        gateway.gateway.settings.record_retention_days = 0  # from now on, every settled row is past it
        wait_for(lambda: store.tasks.get(task_id) is None, timeout=30, what="the task row deleted")
        wait_for(lambda: not c.get("/hub/v1/usage/records").json()["data"], timeout=30, what="the call row deleted")
        assert c.get(f"/hub/v1/tasks/{task_id}").status_code == 404
        again = c.get("/hub/v1/usage").json()["totals"]
        assert (again["tasks"], again["credits"]) == (2, spent)
        assert c.get("/hub/v1/account").json()["spent"] == spent
