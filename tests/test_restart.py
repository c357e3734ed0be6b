"""A gateway killed with SIGKILL mid-run loses no task and finishes none twice (SQLite and PostgreSQL)."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import httpx
import pytest

from conftest import SIM_KEY, free_port, serve_process, sim_allowance, wait_for
from mediacheck import files_in
from tidehub.sim.server import SimServer
from tidehub.sim.settings import SimSettings
from tidehub.store import Store

WORK = [
    ("video", {"model": "veo-3.1", "input": {"prompt": "waves", "duration": "4s", "resolution": "720p"}}),
    ("video", {"model": "wan-2.7", "input": {"prompt": "city", "duration": 2, "resolution": "720p"}}),
    ("image", {"model": "nano-banana", "input": {"prompt": "a cat", "num_images": 2}}),
    ("audio", {"model": "elevenlabs-music", "input": {"prompt": "drums", "music_length_ms": 5000}}),
    ("transcribe", {"model": "wizper", "input": {"audio_url": "https://example.com/a.mp3"}}),
]


def start_gateway(data_dir: Path, port: int, database_url: str, sim_url: str) -> subprocess.Popen:
    return serve_process(port, data_dir, {
        "TIDEHUB_FAL_BASE_URL": sim_url,
        "TIDEHUB_FAL_KEY": SIM_KEY,
        "TIDEHUB_TIME_SCALE": "0.1",
        "TIDEHUB_LEASE_S": "2",
        "TIDEHUB_DATABASE_URL": database_url,
        "TIDEHUB_SSRF_ALLOW": sim_allowance(sim_url),
    })


@pytest.fixture(scope="module")
def slow_sim():
    """Slower than the shared simulator, so that many tasks are mid-flight when the gateway dies."""
    server = SimServer(SimSettings(port=0, api_key=SIM_KEY, time_scale=0.1, seed=11))
    server.start()
    yield server
    server.stop()


def test_kill_9_mid_run_loses_nothing(tmp_path: Path, slow_sim, database_url: str) -> None:
    sim = slow_sim
    data_dir, port = tmp_path / "data", free_port()
    proc = start_gateway(data_dir, port, database_url, sim.base_url)
    store = Store(database_url or f"sqlite:///{data_dir / 'tidehub.db'}")
    from tidehub.core.auth import create_key

    key = create_key(store, name="restart", credits=10**9).secret
    base = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {key}"}
    ids = []
    try:
        for i in range(40):
            capability, body = WORK[i % len(WORK)]
            resp = httpx.post(f"{base}/hub/v1/{capability}", json=body, headers=headers, timeout=10)
            assert resp.status_code == 200, resp.text
            ids.append(resp.json()["task_id"])

        def mid_run() -> bool:
            statuses = [store.tasks.get(t)["status"] for t in ids]
            active = statuses.count("running") + statuses.count("queued")
            assert active, "every task finished before the kill: slow the simulator down"
            return active >= 5 and statuses.count("succeeded") >= 1

        wait_for(mid_run, timeout=60, what="tasks in flight")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        in_flight = [t for t in ids if store.tasks.get(t)["status"] in ("queued", "running")]
        assert in_flight, "the kill came too late to test anything"

        proc = start_gateway(data_dir, port, database_url, sim.base_url)

        def all_done() -> bool:
            return all(store.tasks.get(t)["status"] == "succeeded" for t in ids)

        wait_for(all_done, timeout=120, interval=0.2, what="every task to complete after the restart")
        for task_id in ids:
            task = store.tasks.get(task_id)
            urls = {f["url"] for f in files_in(task["output"])}
            assets = store.assets.of_task(task_id)
            # Finished once: exactly one recorded copy per output file, and each is the one served.
            assert len(assets) == len(urls), (task_id, assets, urls)
            assert {f"{base}/files/{a['token']}/{a['name']}" for a in assets} == urls
        for url in list(urls)[:1]:
            assert httpx.get(url, timeout=10).status_code == 200
        # Money: every hold was captured exactly once; nothing is left held; nothing was lost.
        account_id = store.tasks.get(ids[0])["account_id"]
        account = store.accounts.get(account_id)
        captured = sum(store.tasks.get(t)["captured"] for t in ids)
        assert account["held"] == 0 and account["spent"] == captured > 0
        assert account["credits"] + account["held"] + account["spent"] == account["added"] == 10**9
        entries = store.accounts.ledger(account_id)
        for kind in ("hold", "capture"):
            assert sorted(e["task_id"] for e in entries if e["kind"] == kind) == sorted(ids)
        assert store.tasks.live_holds() == {}
    finally:
        proc.kill()
        proc.wait(timeout=10)
        store.close()
