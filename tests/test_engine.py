"""Engine behaviour: deadlines, upstream refusals, operator-added models, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import httpx
import yaml

from conftest import wait_for, wait_task


def hub_done(body: dict) -> bool:
    return body["ready"]


def test_deadline_turns_a_stuck_task_into_timeout_and_stops_the_upstream(make_gateway, database_url: str) -> None:
    # 10 s of deadline at the test time scale is 0.2 s: shorter than any video run.
    gateway = make_gateway(database_url, deadline_video_s=10)
    with gateway.client(gateway.new_key()) as client:
        task_id = client.post("/hub/v1/video", json={"model": "veo-3.1", "input": {"prompt": "slow"}}).json()["task_id"]
        task = wait_task(client, f"/hub/v1/tasks/{task_id}", hub_done)
        assert task["status"] == "timeout" and task["error_code"] == "timeout", task
        assert client.get(f"/ms/v1/tasks/{task_id}").json()["status"] == "timeout"
    store = gateway.gateway.store
    wait_for(lambda: not store.tasks.get(task_id)["cancel_upstream"], what="upstream told to stop")


def test_operator_added_model_and_upstream_validation_error(make_gateway, tmp_path: Path, database_url: str) -> None:
    """A model added by a data file alone; its schema is looser than the upstream's, so the upstream's 422
    comes back as a failed task naming the field, and costs a single attempt."""
    extra = tmp_path / "catalog"
    extra.mkdir()
    (extra / "acme.yaml").write_text(yaml.safe_dump({
        "vendor": "acme",
        "endpoints": [{
            "slug": "acme/banana-lite/text-to-image",
            "model": "banana-lite",
            "hub_ids": ["banana-lite"],
            "capability": "image",
            "mode": "text-to-image",
            "description": "An operator's own entry for a fal model.",
            "tags": ["acme"],
            "upstream": {"fal": {"model": "fal-ai/nano-banana"}},
            "input_schema": {"type": "object", "properties": {"prompt": {"type": "string"},
                                                              "num_images": {"type": "integer"}}},
            "examples": [{"prompt": "a banana"}],
            "price": {"unit": "image", "credits": 10, "quantity": {"field": "num_images"}},
        }],
    }))
    gateway = make_gateway(database_url, catalog_dirs=str(extra))
    with gateway.client(gateway.new_key()) as client:
        ok = client.post("/hub/v1/image", json={"model": "banana-lite", "input": {"prompt": "a banana"}}).json()
        assert wait_task(client, f"/hub/v1/tasks/{ok['task_id']}", hub_done)["status"] == "completed"
        bad = client.post("/ms/v1/run/acme/banana-lite/text-to-image", json={"input": {"num_images": 1}}).json()
        task = wait_task(client, f"/ms/v1/tasks/{bad['task_id']}", lambda b: b["status"] != "queued" and b["status"] != "processing")
        assert task["status"] == "failed"
        assert task["error"]["code"] == "invalid_input" and "prompt" in task["error"]["message"]
    assert gateway.gateway.store.tasks.get(bad["task_id"])["attempts"] == 0


def test_unreachable_upstream_retries_then_fails(make_gateway, database_url: str) -> None:
    gateway = make_gateway(database_url, fal_base_url="http://127.0.0.1:9")  # nothing listens on port 9
    with gateway.client(gateway.new_key()) as client:
        task_id = client.post("/hub/v1/image", json={"model": "nano-banana", "input": {"prompt": "x"}}).json()["task_id"]
        task = wait_task(client, f"/hub/v1/tasks/{task_id}", hub_done)
    assert task["status"] == "failed" and task["error_code"] == "upstream_unavailable", task
    assert gateway.gateway.store.tasks.get(task_id)["attempts"] >= 4


def test_result_files_outlive_the_upstream_copy(make_gateway, sim) -> None:
    gateway = make_gateway()
    with gateway.client(gateway.new_key()) as client:
        task_id = client.post("/hub/v1/image", json={"model": "nano-banana", "input": {"prompt": "keep me"}}).json()["task_id"]
        task = wait_task(client, f"/hub/v1/tasks/{task_id}", hub_done)
    store = gateway.gateway.store
    asset = store.assets.of_task(task_id)[0]
    # The simulator's link is its own and expires; ours is a copy on our disk.
    assert asset["source_url"].startswith(sim.base_url)
    url = task["data"]["images"][0]["url"]
    assert url.startswith(gateway.url + "/files/")
    copy = httpx.get(url)
    assert copy.status_code == 200 and copy.content == httpx.get(asset["source_url"]).content
    assert httpx.get(url.rsplit("/", 1)[0] + "/other-name.png").status_code == 404
    assert httpx.get(gateway.url + "/files/not-a-token/x.png").status_code == 404


def test_expired_files_are_swept(make_gateway) -> None:
    # Retention of ~1 s (in days), swept every 0.2 s.
    gateway = make_gateway(asset_retention_days=1 / 86400, asset_sweep_interval_s=0.2)
    with gateway.client(gateway.new_key()) as client:
        task_id = client.post("/hub/v1/image", json={"model": "nano-banana", "input": {"prompt": "brief"}}).json()["task_id"]
        task = wait_task(client, f"/hub/v1/tasks/{task_id}", hub_done)
    url = task["data"]["images"][0]["url"]
    path = gateway.settings.asset_dir / gateway.gateway.store.assets.of_task(task_id)[0]["path"] if gateway.gateway.store.assets.of_task(task_id) else None
    wait_for(lambda: httpx.get(url).status_code == 404, timeout=15, what="expiry")
    wait_for(lambda: not gateway.gateway.store.assets.of_task(task_id), timeout=15, what="sweep")
    assert path is None or not path.exists()


def test_a_step_that_fails_and_then_fails_to_reschedule_is_logged_and_retried(make_gateway, caplog) -> None:
    """A bug in a step, then a database error while rescheduling it: both are logged, and the task
    still finishes once its lease runs out (nothing is lost in the step's fire-and-forget task)."""
    gateway = make_gateway(lease_s=1)
    engine = gateway.gateway.engine
    step, reschedule = engine._step, engine._reschedule
    broken: set[str] = set()

    async def failing_step(task):
        if task["id"] not in broken:
            broken.add(task["id"])
            raise RuntimeError("a bug in a step")
        await step(task)

    async def failing_reschedule(task, **kwargs):
        if task["id"] in broken and not kwargs.get("progress") and kwargs.get("attempts") == task["attempts"] + 1:
            raise OSError("the database went away")
        await reschedule(task, **kwargs)

    engine._step, engine._reschedule = failing_step, failing_reschedule
    with caplog.at_level("INFO", logger="tidehub.engine"):
        with gateway.client(gateway.new_key()) as client:
            task_id = client.post("/hub/v1/image", json={"model": "nano-banana", "input": {"prompt": "x"}}).json()["task_id"]
            task = wait_task(client, f"/hub/v1/tasks/{task_id}", hub_done)
    assert task["status"] == "completed", task
    messages = [r.getMessage() for r in caplog.records if task_id in r.getMessage()]
    assert any("step failed" in m for m in messages), messages
    assert any("rescheduling after the failed step failed too" in m and "the database went away" in m
               for m in messages), messages


def test_a_finished_step_frees_its_slot_for_due_work_at_once(make_gateway, tmp_path: Path) -> None:
    """Eight tasks due at once, two step slots, and a dispatch tick far longer than the test may
    wait: they can only all finish if every step that ends hands its slot straight to the next
    due task. Each takes one step (the upstream refuses its input), so none waits on a clock."""
    extra = tmp_path / "catalog"
    extra.mkdir()
    (extra / "acme.yaml").write_text(yaml.safe_dump({"vendor": "acme", "endpoints": [{
        "slug": "acme/banana-lite/text-to-image", "model": "banana-lite", "hub_ids": ["banana-lite"],
        "capability": "image", "mode": "text-to-image", "description": "Looser than the upstream.",
        "tags": ["acme"], "upstream": {"fal": {"model": "fal-ai/nano-banana"}},
        "input_schema": {"type": "object", "properties": {"num_images": {"type": "integer"}}},
        "examples": [{"num_images": 1}], "price": {"unit": "image", "credits": 10},
    }]}))
    shared = dict(catalog_dirs=str(extra), more_upstreams=False)
    database = f"sqlite:///{tmp_path / 'shared.db'}"  # both gateways' data
    api_only = make_gateway(database, engine_enabled=False, **shared)  # the tasks wait, all due, for an engine
    key = api_only.new_key()
    with api_only.client(key) as client:
        ids = [client.post("/ms/v1/run/acme/banana-lite/text-to-image", json={"input": {"num_images": 1}}).json()["task_id"]
               for _ in range(8)]
    api_only.stop()
    gateway = make_gateway(database, engine_concurrency=2, engine_tick_s=10_000, **shared)
    with gateway.client(key) as client:
        for task_id in ids:
            task = wait_task(client, f"/ms/v1/tasks/{task_id}", lambda b: b["status"] not in ("queued", "processing"))
            assert task["status"] == "failed" and task["error"]["code"] == "invalid_input", task
