"""Several gateway processes over one database: `serve --workers N`, `serve --no-engine` beside
`tidehub worker`, and two gateways with one killed (kill -9) in the middle of 500 tasks over faulty
channels. Every process here is a real `tidehub` subprocess in a session of its own, killed (with
its workers) in a ``finally``."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
from collections import defaultdict
from pathlib import Path
from typing import Any
import httpx
import pytest
import sqlalchemy as sa
import yaml
from standardwebhooks.webhooks import Webhook

from chaos_upstream import POISONED, TASKS, start_faulty_upstream
from conftest import free_port, wait_for
from receivers import Receiver
from tidehub.catalog import load_catalog
from tidehub.sim.behaviour import SimBehaviour
from tidehub.sim.server import SimServer
from tidehub.sim.settings import SimSettings
from tidehub.store import Store
from tidehub.store.schema import ledger, webhook_deliveries

SCALE = 0.02
PRICE = load_catalog().hub_model("nano-banana").primary.price.quote({"num_images": 1}).credits


class Processes:
    """`tidehub` subprocesses started by one test; ``stop_all`` kills each one's whole session
    (its worker processes too)."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.started: list[subprocess.Popen] = []

    def start(self, *args: str, env: dict[str, str], port: int | None = None) -> subprocess.Popen:
        log = open(self.tmp_path / f"tidehub-{len(self.started)}.log", "wb")
        proc = subprocess.Popen([sys.executable, "-m", "tidehub", *args], env={**os.environ, **env},
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        proc.log_path = log.name  # type: ignore[attr-defined]
        self.started.append(proc)
        if port is not None:
            wait_for(lambda: self.healthy(proc, port), timeout=45, interval=0.1, what=f"a gateway on port {port}")
        return proc

    def healthy(self, proc: subprocess.Popen, port: int) -> bool:
        if proc.poll() is not None:
            log = Path(proc.log_path).read_text()  # type: ignore[attr-defined]
            raise AssertionError(f"tidehub exited: {log[-3000:]}")
        try:
            return httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    @staticmethod
    def kill(proc: subprocess.Popen) -> None:
        """kill -9 of the process and everything in its session."""
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)

    def stop_all(self) -> None:
        for proc in self.started:
            self.kill(proc)


@pytest.fixture
def processes(tmp_path: Path):
    procs = Processes(tmp_path)
    try:
        yield procs
    finally:
        procs.stop_all()


def children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(entry.name))
    return found


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


# -- serve --workers N ----------------------------------------------------------------------------

def test_serve_workers_2_demo_serves_one_port_from_both_and_replaces_a_killed_one(processes, tmp_path: Path, database_url: str) -> None:
    port, sim_port = free_port(), free_port()
    data_dir = tmp_path / "data"
    env = {"TIDEHUB_DATABASE_URL": database_url, "TIDEHUB_SIM_PORT": str(sim_port),
           "TIDEHUB_SIM_TIME_SCALE": str(SCALE), "TIDEHUB_TIME_SCALE": str(SCALE),
           # A relay credit block stays open (and names its process) for the whole test.
           "TIDEHUB_RELAY_BLOCK_IDLE_S": "600", "TIDEHUB_RELAY_BLOCK_MAX_S": "600"}
    parent = processes.start("serve", "--demo", "--workers", "2", "--port", str(port), "--data-dir", str(data_dir),
                             env=env, port=port)
    store = Store(database_url)
    try:
        key = (data_dir / "demo-key").read_text().strip()
        workers = {p for p in children(parent.pid) if "spawn_main" in Path(f"/proc/{p}/cmdline").read_text()}
        # The simulator and the demo's setup ran once, in the parent.
        assert len(workers) == 2, workers
        assert sorted(row["name"] for row in store.channels.list()) == sorted(
            ["sim-primary", "sim-secondary", "sim-backup", "sim-openai", "sim-replicate", "sim-nexus"])
        # Each worker has prometheus-client's multi-process directory, made fresh by the parent.
        dirs = {environ_of(p).get("PROMETHEUS_MULTIPROC_DIR") for p in workers}
        assert len(dirs) == 1 and None not in dirs and Path(dirs.pop()).is_dir()

        # Calls on fresh connections, many at once: the kernel hands them to both workers. Each
        # worker's relay holds a credit block of its own, leased in its own name (with its pid).
        async def calls(n: int) -> None:
            async def one() -> None:
                async with httpx.AsyncClient(timeout=30) as c:
                    resp = await c.post(f"http://127.0.0.1:{port}/v1/chat/completions",
                                        headers={"Authorization": f"Bearer {key}"},
                                        json={"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]})
                    assert resp.status_code == 200, resp.text
            await asyncio.gather(*(one() for _ in range(n)))

        def serving_pids() -> set[int]:
            with store.engine.connect() as conn:
                owners = conn.exec_driver_sql(
                    "SELECT lease_owner FROM tasks WHERE mode = 'credit-block' AND lease_owner IS NOT NULL").scalars()
                return {int(owner.rsplit("-", 2)[1]) for owner in owners}

        def both_serve() -> bool:
            asyncio.run(calls(16))
            return serving_pids() == workers

        wait_for(both_serve, timeout=60, interval=0, what="calls answered by both workers")

        # A worker killed (kill -9) is replaced by the supervisor, and the port serves throughout.
        victim = min(workers)
        os.kill(victim, signal.SIGKILL)

        def replaced() -> bool:
            now = {p for p in children(parent.pid) if "spawn_main" in Path(f"/proc/{p}/cmdline").read_text()}
            return len(now) == 2 and victim not in now

        wait_for(replaced, timeout=30, interval=0.2, what="a new worker in place of the killed one")
        assert parent.poll() is None
        asyncio.run(calls(8))
        # Tasks run too: the engine of whichever worker claims them.
        headers = {"Authorization": f"Bearer {key}"}
        ids = [httpx.post(f"http://127.0.0.1:{port}/hub/v1/image", headers=headers, timeout=10,
                          json={"model": "nano-banana", "input": {"prompt": f"lighthouse {i}"}}).json()["task_id"]
               for i in range(6)]
        wait_for(lambda: all(store.tasks.get(t)["status"] == "succeeded" for t in ids), timeout=60, interval=0.2,
                 what="the tasks to succeed")
    finally:
        store.close()


# -- serve --no-engine and tidehub worker ---------------------------------------------------------

def test_no_engine_gateway_and_a_separate_worker_run_tasks_and_webhooks(
    processes, tmp_path: Path, sim: SimServer, database_url: str
) -> None:
    from conftest import SIM_KEY, sim_allowance

    port, data_dir = free_port(), tmp_path / "data"
    env = {"TIDEHUB_DATABASE_URL": database_url, "TIDEHUB_FAL_BASE_URL": sim.base_url, "TIDEHUB_FAL_KEY": SIM_KEY,
           "TIDEHUB_TIME_SCALE": str(SCALE), "TIDEHUB_SSRF_ALLOW": sim_allowance(sim.base_url) + ",127.0.0.1"}
    processes.start("serve", "--no-engine", "--port", str(port), "--data-dir", str(data_dir), env=env, port=port)
    store = Store(database_url)
    hooks = Receiver()
    try:
        from tidehub.core.auth import create_key

        key = create_key(store, name="split", credits=10**6).secret
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {key}"},
                          timeout=10) as c:
            task = c.post("/hub/v1/image", json={"model": "nano-banana", "input": {"prompt": "split roles"},
                                                 "webhook_url": hooks.url}).json()["task_id"]
            # The HTTP-only gateway takes the task but never runs it: nothing claims it.
            assert store.tasks.get(task)["status"] == "queued" and store.tasks.get(task)["lease_owner"] is None
            processes.start("worker", "--data-dir", str(data_dir), env=env)
            wait_for(lambda: c.get(f"/hub/v1/tasks/{task}").json()["status"] == "completed", timeout=60,
                     interval=0.1, what="the worker to run the task")
        wait_for(lambda: hooks.received, timeout=30, what="the webhook, sent by the worker")
        body = json.loads(hooks.received[0]["body"])
        assert body["data"]["task_id"] == task and body["data"]["status"] == "completed"  # rendered as Hub
    finally:
        hooks.stop()
        store.close()


# -- two gateways, one killed mid-run -------------------------------------------------------------


def test_chaos_across_two_processes_with_one_killed(processes, tmp_path: Path, postgres_url: str,
                                                    redis_settings: dict[str, str]) -> None:
    limit = 12  # bursty's concurrency limit, across both processes
    sim = start_faulty_upstream(tmp_path / "channels.yaml", bursty_limit=limit, time_scale=SCALE)
    hooks = Receiver()
    env = {"TIDEHUB_DATABASE_URL": postgres_url, "TIDEHUB_CHANNELS_FILE": str(tmp_path / "channels.yaml"),
           "TIDEHUB_SECRET_KEY": "chaos-secret", "TIDEHUB_TIME_SCALE": str(SCALE), "TIDEHUB_LEASE_S": "2",
           "TIDEHUB_DEADLINE_IMAGE_S": "6000", "TIDEHUB_SSRF_ALLOW": "127.0.0.1", "TIDEHUB_UPSTREAM_CALLBACKS": "true",
           "TIDEHUB_FAL_JWKS_URL": f"{sim.base_url}/.well-known/jwks.json", "TIDEHUB_FAL_KEY": "",
           "TIDEHUB_REDIS_URL": redis_settings["redis_url"], "TIDEHUB_REDIS_PREFIX": redis_settings["redis_prefix"]}
    ports = [free_port(), free_port()]
    store = Store(postgres_url)
    sampling = threading.Event()
    busiest: list[int] = [0]
    try:
        # One after the other: each syncs the channels file at start.
        procs = [processes.start("serve", "--port", str(p), "--data-dir", str(tmp_path / f"data{i}"), env=env, port=p)
                 for i, p in enumerate(ports)]
        from tidehub.core.auth import create_key

        credits = 10 * TASKS * PRICE
        key = create_key(store, name="chaos", credits=credits).secret
        headers = {"Authorization": f"Bearer {key}"}
        ids: list[str] = []
        poisoned: set[str] = set()
        bursty = next(row["id"] for row in store.channels.list() if row["name"] == "bursty")

        def sample() -> None:
            query = sa.text("SELECT count(*) FROM tasks WHERE channel_id = :c AND status IN ('queued', 'running')")
            with store.engine.connect() as conn:
                while not sampling.wait(0.1):
                    busiest[0] = max(busiest[0], conn.execute(query, {"c": bursty}).scalar_one())
                    conn.rollback()

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()

        async def submit_all() -> None:
            # Idle connections are dropped before uvicorn's keep-alive timeout (5 s) closes them: a
            # request sent on a connection the server is closing at that moment fails to read.
            clients = [httpx.AsyncClient(base_url=f"http://127.0.0.1:{p}", headers=headers, timeout=30,
                                         limits=httpx.Limits(keepalive_expiry=2)) for p in ports]
            sem = asyncio.Semaphore(32)

            async def one(i: int) -> None:
                prompt = f"scene {i}" + (" [sim:content-policy]" if i < POISONED else "")
                async with sem:
                    resp = await clients[i % 2].post("/hub/v1/image", json={
                        "model": "nano-banana", "input": {"prompt": prompt}, "webhook_url": hooks.url})
                assert resp.status_code == 200, resp.text
                ids.append(resp.json()["task_id"])
                if i < POISONED:
                    poisoned.add(resp.json()["task_id"])

            async def twins(i: int) -> set[str]:
                # One idempotency key sent to both processes at once: one task.
                body = {"model": "nano-banana", "input": {"prompt": f"twin {i}"}, "webhook_url": hooks.url}
                answers = await asyncio.gather(*(c.post("/hub/v1/image", json=body,
                                                        headers={"Idempotency-Key": f"twin-{i}"}) for c in clients))
                assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
                return {a.json()["task_id"] for a in answers}

            try:
                pairs = await asyncio.gather(*(twins(i) for i in range(10)))
                assert all(len(p) == 1 for p in pairs), pairs
                ids.extend(p.pop() for p in pairs)
                await asyncio.gather(*(one(i) for i in range(TASKS)))
            finally:
                for c in clients:
                    await c.aclose()

        asyncio.run(submit_all())
        wait_for(lambda: store.tasks.count(["succeeded"]) >= TASKS // 5, timeout=60, interval=0.2,
                 what="a fifth of the tasks to finish")
        processes.kill(procs[0])
        assert store.tasks.count(["queued", "running"]) > 0, "the kill came after everything finished"
        # The survivor takes up the killed one's tasks once their leases run out.
        wait_for(lambda: store.tasks.count(["queued", "running"]) == 0, timeout=120, interval=0.5,
                 what="every task to end")
        sampling.set()
        sampler.join(timeout=5)

        tasks = {t: store.tasks.get(t) for t in ids}
        statuses: dict[str, list[str]] = defaultdict(list)
        for t in tasks.values():
            statuses[t["status"]].append(t["id"])
        assert sorted(statuses["succeeded"]) == sorted(set(ids) - poisoned), {k: len(v) for k, v in statuses.items()}
        assert sorted(statuses["failed"]) == sorted(poisoned)
        assert all(tasks[t]["error_code"] == "content_policy" and tasks[t]["captured"] == 0 for t in poisoned)
        names = {row["id"]: row["name"] for row in store.channels.list()}
        used = {names[t["channel_id"]] for t in tasks.values() if t["status"] == "succeeded"}
        assert "down" not in used and used == {"flaky", "bursty"}
        assert 0 < busiest[0] <= limit, busiest
        # Nothing finished twice: one capture per succeeded task, one release per failed one, and
        # one webhook delivery per task.
        with store.engine.connect() as conn:
            kinds = defaultdict(list)
            for task_id, kind in conn.execute(sa.select(ledger.c.task_id, ledger.c.kind)
                                              .where(ledger.c.task_id.in_(ids))):
                kinds[task_id].append(kind)
            deliveries = defaultdict(int)
            for (task_id,) in conn.execute(sa.select(webhook_deliveries.c.task_id)
                                           .where(webhook_deliveries.c.task_id.in_(ids))):
                deliveries[task_id] += 1
        assert all(kinds[t].count("capture") == 1 for t in statuses["succeeded"]), "a task was captured twice"
        assert all("capture" not in kinds[t] for t in poisoned)
        assert set(deliveries) == set(ids) and set(deliveries.values()) == {1}
        # Money: exactly the completed tasks were charged, nothing is still held.
        account = store.accounts.get(tasks[ids[0]]["account_id"])
        assert account["spent"] == len(statuses["succeeded"]) * PRICE
        assert account["held"] == 0 and account["credits"] == credits - account["spent"]
        assert store.tasks.live_holds() == {}
        # Webhooks: each task's arrived, with one id, signed; sent again only if it was on the wire
        # when its process was killed.
        secret = account["webhook_secret"]
        hits: dict[str, list[str]] = defaultdict(list)

        def all_delivered() -> bool:
            hits.clear()
            for hit in list(hooks.received):
                payload = Webhook(secret).verify(hit["body"], hit["headers"])
                hits[payload["data"]["task_id"]].append(hit["headers"]["webhook-id"])
            return set(hits) == set(ids)

        wait_for(all_delivered, timeout=60, interval=0.5, what="every webhook")
        assert all(len(set(v)) == 1 for v in hits.values())
        assert sum(len(v) - 1 for v in hits.values()) <= 50, "webhooks were sent again beyond the killed batch"
    finally:
        sampling.set()
        processes.stop_all()
        store.close()
        hooks.stop()
        sim.stop()


@pytest.fixture
def postgres_url() -> str:
    from conftest import _fresh_postgres_database

    return _fresh_postgres_database()


# -- notifications through Redis --------------------------------------------------------------------

def test_revoked_key_fails_at_once_in_both_processes(processes, tmp_path: Path, postgres_url: str,
                                                     redis_settings: dict[str, str]) -> None:
    ports = [free_port(), free_port()]
    env = {"TIDEHUB_DATABASE_URL": postgres_url, "TIDEHUB_REDIS_URL": redis_settings["redis_url"],
           "TIDEHUB_REDIS_PREFIX": redis_settings["redis_prefix"],
           "TIDEHUB_KEY_CACHE_TTL_S": "3600"}  # without a notification, a cached key would work for an hour
    for i, port in enumerate(ports):
        processes.start("serve", "--no-engine", "--port", str(port), "--data-dir", str(tmp_path / f"d{i}"),
                        env=env, port=port)
    store = Store(postgres_url)
    try:
        from tidehub.core.auth import create_key

        key = create_key(store, name="doomed", credits=1000)
        headers = {"Authorization": f"Bearer {key.secret}"}
        urls = [f"http://127.0.0.1:{p}/hub/v1/account" for p in ports]
        assert [httpx.get(u, headers=headers, timeout=10).status_code for u in urls] == [200, 200]  # cached
        revoke = subprocess.run([sys.executable, "-m", "tidehub", "keys", "revoke", key.key_id,
                                 "--data-dir", str(tmp_path / "cli")], env={**os.environ, **env},
                                capture_output=True, timeout=60)
        assert revoke.returncode == 0, revoke.stderr

        def refused_everywhere() -> bool:
            answers = [httpx.get(u, headers=headers, timeout=10) for u in urls]
            return all(a.status_code == 403 and a.json()["error_code"] == "key_revoked" for a in answers)

        wait_for(refused_everywhere, timeout=10, interval=0.1, what="the revoked key refused by both gateways")
    finally:
        store.close()


def test_callback_wakes_and_cancel_stops_the_step_in_the_other_process(
    processes, tmp_path: Path, postgres_url: str, redis_settings: dict[str, str]
) -> None:
    """An HTTP-only gateway and a worker: the worker never looks for work on its own (its tick and
    polls are ten minutes), so only notifications through Redis make it act in time."""
    sim = SimServer(SimSettings(port=0, api_key="wake-key", time_scale=0.05, seed=3))
    sim.start()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {"TIDEHUB_DATABASE_URL": postgres_url, "TIDEHUB_REDIS_URL": redis_settings["redis_url"],
           "TIDEHUB_REDIS_PREFIX": redis_settings["redis_prefix"], "TIDEHUB_PUBLIC_URL": base,
           "TIDEHUB_FAL_BASE_URL": sim.base_url, "TIDEHUB_FAL_KEY": "wake-key", "TIDEHUB_SSRF_ALLOW": "127.0.0.1",
           "TIDEHUB_UPSTREAM_CALLBACKS": "true", "TIDEHUB_FAL_JWKS_URL": f"{sim.base_url}/.well-known/jwks.json",
           "TIDEHUB_ENGINE_TICK_S": "600", "TIDEHUB_POLL_MIN_S": "600", "TIDEHUB_POLL_MAX_S": "600"}
    store = Store(postgres_url)

    def held() -> int:
        return httpx.get(f"{sim.base_url}/_sim/stats", timeout=5).json()["channels"]["wake-key"]["held"]

    def knobs(**values: float) -> None:
        assert httpx.put(f"{sim.base_url}/_sim/channels/wake-key", json=values, timeout=5).status_code == 200

    try:
        processes.start("serve", "--no-engine", "--port", str(port), "--data-dir", str(tmp_path / "http"),
                        env=env, port=port)
        worker = processes.start("worker", "--data-dir", str(tmp_path / "engine"), env=env)
        from tidehub.core.auth import create_key

        key = create_key(store, name="wake", credits=10**7).secret
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=10) as c:
            # A submit here wakes the worker; the upstream's callback, received here, wakes it again.
            image = c.post("/hub/v1/image", json={"model": "nano-banana", "input": {"prompt": "wake up"}})
            assert image.status_code == 200, image.text
            wait_for(lambda: c.get(f"/hub/v1/tasks/{image.json()['task_id']}").json()["status"] == "completed",
                     timeout=30, interval=0.1, what="the image, finished on the callback's wake-up")

            video = c.post("/hub/v1/video", json={"model": "veo-3.1", "input": {
                "prompt": "waves", "duration": "4s", "resolution": "720p"}}).json()["task_id"]
            wait_for(lambda: store.tasks.get(video)["upstream_ref"], timeout=30, interval=0.1,
                     what="the video submitted upstream")
            # The worker's poll on the callback hangs upstream (it would wait 30 s for its timeout).
            knobs(hang_rate=1.0, hang_s=120)
            wait_for(lambda: held() >= 1, timeout=30, interval=0.1, what="the worker's poll to hang")
            knobs(hang_rate=0.0)
            cancelled = c.post(f"/hub/v1/tasks/{video}/cancel")
            assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled", cancelled.text
            wait_for(lambda: held() == 0, timeout=15, interval=0.05, what="the worker to stop the hung step")
            assert worker.poll() is None
            wait_for(lambda: not store.tasks.get(video)["cancel_upstream"], timeout=30, interval=0.1,
                     what="the worker to tell the upstream to stop")
            task = store.tasks.get(video)
            assert task["status"] == "canceled" and task["captured"] == 0
            account = store.accounts.get(task["account_id"])
            assert account["held"] == 0
    finally:
        processes.stop_all()
        store.close()
        sim.stop()


# -- breakers and budgets shared through Redis ----------------------------------------------------

def _two_relays(processes, tmp_path: Path, postgres_url: str, redis_settings: dict[str, str], sim: SimServer,
                channel: dict[str, Any], **extra: str) -> list[int]:
    (tmp_path / "channels.yaml").write_text(yaml.safe_dump({"channels": [
        {"adapter": "openai", "base_url": f"{sim.base_url}/v1", "priority": 10, **channel}]}))
    env = {"TIDEHUB_DATABASE_URL": postgres_url, "TIDEHUB_REDIS_URL": redis_settings["redis_url"],
           "TIDEHUB_REDIS_PREFIX": redis_settings["redis_prefix"], "TIDEHUB_SECRET_KEY": "shared-secret",
           "TIDEHUB_CHANNELS_FILE": str(tmp_path / "channels.yaml"), "TIDEHUB_SSRF_ALLOW": "127.0.0.1",
           "TIDEHUB_RELAY_ATTEMPTS": "1", **extra}
    ports = [free_port(), free_port()]
    for i, port in enumerate(ports):
        processes.start("serve", "--port", str(port), "--data-dir", str(tmp_path / f"d{i}"), env=env, port=port)
    return ports


def _chat(port: int, key: str) -> int:
    return httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                      json={"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}, timeout=30).status_code


def test_a_breaker_opened_in_one_process_is_open_in_the_other_with_one_probe_between_them(
    processes, tmp_path: Path, postgres_url: str, redis_settings: dict[str, str]
) -> None:
    import redis as redis_sync

    sim = SimServer(SimSettings(port=0, api_key="unused", seed=4, channels={"dead": SimBehaviour(outage=True)}))
    sim.start()
    store = Store(postgres_url)
    r = redis_sync.Redis.from_url(redis_settings["redis_url"])

    def upstream_errors() -> int:
        return httpx.get(f"{sim.base_url}/_sim/stats", timeout=5).json()["channels"]["dead"]["outage_errors"]

    try:
        a, b = _two_relays(processes, tmp_path, postgres_url, redis_settings, sim,
                           {"name": "dead", "secret": "dead"},
                           TIDEHUB_BREAKER_FAILURES="3", TIDEHUB_BREAKER_COOL_DOWN_S="4")
        from tidehub.core.auth import create_key

        key = create_key(store, name="breaker", credits=10**7).secret
        # Three failures in process A open its breaker; A refuses from then on.
        assert [_chat(a, key) for _ in range(3)] == [502, 502, 502]
        assert _chat(a, key) == 503
        channel = store.channels.list()[0]["id"]
        wait_for(lambda: r.hexists(redis_settings["redis_prefix"] + "breakers", channel), timeout=10,
                 what="the open breaker recorded in Redis")
        before = upstream_errors()
        # B never saw a failure, yet refuses without calling the upstream.
        assert [_chat(b, key) for _ in range(3)] == [503, 503, 503]
        assert upstream_errors() == before == 3

        # After the cool-down, requests to both at once: exactly one probe goes upstream (and fails).
        async def burst() -> None:
            async with httpx.AsyncClient(timeout=30) as c:
                await asyncio.gather(*(c.post(f"http://127.0.0.1:{p}/v1/chat/completions",
                                              headers={"Authorization": f"Bearer {key}"},
                                              json={"model": "gpt-4", "messages": [{"role": "user", "content": "x"}]})
                                       for p in (a, b, a, b, a, b)))

        def probed() -> bool:
            asyncio.run(burst())
            return upstream_errors() > before

        wait_for(probed, timeout=30, interval=0.05, what="the probe after the cool-down")
        for _ in range(5):  # the probe failed: open again everywhere, for another cool-down
            asyncio.run(burst())
        assert upstream_errors() == before + 1

        # The channel recovers: the next probe succeeds and closes the breaker in both processes.
        assert httpx.put(f"{sim.base_url}/_sim/channels/dead", json={"outage": False}, timeout=5).status_code == 200
        wait_for(lambda: _chat(a, key) == 200 or _chat(b, key) == 200, timeout=30, interval=0.2,
                 what="a successful probe")
        wait_for(lambda: _chat(a, key) == 200 and _chat(b, key) == 200, timeout=10, interval=0.1,
                 what="both processes to use the channel again")
    finally:
        processes.stop_all()
        r.close()
        store.close()
        sim.stop()


def test_a_channel_rpm_holds_across_processes(processes, tmp_path: Path, postgres_url: str,
                                              redis_settings: dict[str, str]) -> None:
    sim = SimServer(SimSettings(port=0, api_key="paced", seed=4))
    sim.start()
    store = Store(postgres_url)
    try:
        a, b = _two_relays(processes, tmp_path, postgres_url, redis_settings, sim,
                           {"name": "paced", "secret": "paced", "rpm": 6})
        from tidehub.core.auth import create_key

        key = create_key(store, name="rpm", credits=10**7).secret
        answers = [_chat(port, key) for _ in range(7) for port in (a, b)]
        assert answers.count(200) == 6, answers  # one minute's budget, shared
        assert set(answers) == {200, 503}, answers
        submits = httpx.get(f"{sim.base_url}/_sim/stats", timeout=5).json()["channels"]["paced"]["submits"]
        assert submits == 6
    finally:
        processes.stop_all()
        store.close()
        sim.stop()
