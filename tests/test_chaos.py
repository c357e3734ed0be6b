"""Chaos: 500 tasks over three simulated channels with faults injected (one down, one failing 30%
of submits, one in 429 bursts) and one SIGKILL of the gateway mid-run.

Asserts: every task ends; every task that could succeed on a healthy channel succeeded; the
permanent failures failed fast and free; credits match the completed tasks exactly; every
terminal task's webhook arrived at least once, with a stable id and a valid signature.
"""

from __future__ import annotations

import asyncio
import signal
from collections import defaultdict
from pathlib import Path

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from chaos_upstream import POISONED, SCALE, TASKS, start_faulty_upstream
from conftest import free_port, serve_process, wait_for
from receivers import Receiver
from tidehub.catalog import load_catalog
from tidehub.store import Store

pytestmark = pytest.mark.slow

PRICE = load_catalog().hub_model("nano-banana").primary.price.quote({"num_images": 1}).credits


def test_chaos(tmp_path: Path, database_url: str) -> None:
    sim = start_faulty_upstream(tmp_path / "channels.yaml")
    hooks = Receiver()
    data_dir, port = tmp_path / "data", free_port()
    env = {"TIDEHUB_DATABASE_URL": database_url, "TIDEHUB_CHANNELS_FILE": str(tmp_path / "channels.yaml"),
           "TIDEHUB_SECRET_KEY": "chaos-secret", "TIDEHUB_TIME_SCALE": str(SCALE), "TIDEHUB_LEASE_S": "5",
           "TIDEHUB_DEADLINE_IMAGE_S": "15000",  # 5 minutes at this scale: room for a restart, retries and a busy machine
           "TIDEHUB_SSRF_ALLOW": "127.0.0.1", "TIDEHUB_UPSTREAM_CALLBACKS": "true",
           "TIDEHUB_FAL_JWKS_URL": f"{sim.base_url}/.well-known/jwks.json", "TIDEHUB_FAL_KEY": ""}
    proc = serve_process(port, data_dir, env)
    store = Store(database_url or f"sqlite:///{data_dir / 'tidehub.db'}")
    from tidehub.core.auth import create_key

    credits = 10 * TASKS * PRICE
    key = create_key(store, name="chaos", credits=credits).secret
    base = f"http://127.0.0.1:{port}"
    ids: list[str] = []
    poisoned: set[str] = set()
    try:
        async def submit_all() -> None:
            async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30) as c:
                sem = asyncio.Semaphore(32)

                async def one(i: int) -> None:
                    prompt = f"scene {i}" + (" [sim:content-policy]" if i < POISONED else "")
                    async with sem:
                        resp = await c.post("/hub/v1/image", json={"model": "nano-banana", "input": {"prompt": prompt},
                                                                   "webhook_url": hooks.url})
                    assert resp.status_code == 200, resp.text
                    ids.append(resp.json()["task_id"])
                    if i < POISONED:
                        poisoned.add(resp.json()["task_id"])

                await asyncio.gather(*(one(i) for i in range(TASKS)))

        asyncio.run(submit_all())

        def some_done() -> bool:
            return store.tasks.count(["succeeded"]) >= TASKS // 5

        wait_for(some_done, timeout=120, interval=0.2, what="a fifth of the tasks to finish")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        assert store.tasks.count(["queued", "running"]) > 0, "the kill came after everything finished"
        proc = serve_process(port, data_dir, env)

        wait_for(lambda: store.tasks.count(["queued", "running"]) == 0, timeout=420, interval=0.5,
                 what="every task to end")
        tasks = {t: store.tasks.get(t) for t in ids}
        statuses = defaultdict(list)
        for t in tasks.values():
            statuses[t["status"]].append(t["id"])
        # Every task that could succeed on a healthy channel did; the poisoned ones failed, fast and free.
        assert sorted(statuses["succeeded"]) == sorted(set(ids) - poisoned), {k: len(v) for k, v in statuses.items()}
        assert sorted(statuses["failed"]) == sorted(poisoned)
        for t in poisoned:
            assert tasks[t]["error_code"] == "content_policy" and tasks[t]["captured"] == 0
        # Fast: each refused prompt ran upstream once, and was not retried anywhere after that; a
        # job handed over just before the kill -9 may be handed over again after the restart (a
        # known gap, see the issue notes; on a busy machine more submits are in flight at the kill), so
        # a few more runs are tolerated, never a retry storm.
        stats = httpx.get(f"{sim.base_url}/_sim/stats").json()["channels"]
        assert POISONED <= sum(c["run_failures"] for c in stats.values()) <= POISONED + POISONED // 3, stats
        names = {row["id"]: row["name"] for row in store.channels.list()}
        used = {names[t["channel_id"]] for t in tasks.values() if t["status"] == "succeeded"}
        assert "down" not in used and used == {"flaky", "bursty"}
        # Money: exactly the completed tasks were charged, nothing is still held.
        account = store.accounts.get(tasks[ids[0]]["account_id"])
        assert account["spent"] == len(statuses["succeeded"]) * PRICE
        assert account["held"] == 0 and account["credits"] == credits - account["spent"]
        assert store.tasks.live_holds() == {}
        # Webhooks: each terminal task's arrived at least once, same id on every try, signed.
        secret = store.accounts.get(account["id"])["webhook_secret"]
        ids_by_task: dict[str, set[str]] = defaultdict(set)

        def all_delivered() -> bool:
            ids_by_task.clear()
            for hit in list(hooks.received):
                headers, body = hit["headers"], hit["body"]
                payload = Webhook(secret).verify(body, headers)
                ids_by_task[payload["data"]["task_id"]].add(headers["webhook-id"])
            return set(ids_by_task) == set(ids)

        wait_for(all_delivered, timeout=120, interval=0.5, what="every webhook")
        assert all(len(v) == 1 for v in ids_by_task.values())
    finally:
        proc.kill()
        proc.wait(timeout=10)
        store.close()
        hooks.stop()
        sim.stop()
