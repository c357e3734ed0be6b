"""The Python client (tidehub.client) against ``tidehub serve --demo``, and across a gateway restart."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

import tidehub.webhooks
from conftest import SIM_KEY, free_port, serve_process, sim_allowance, wait_for
from demo_gateway import WORK, Demo, check_file, run_demo
from tidehub.client import (
    APIError, AsyncTidehub, InvalidSignature, TaskCancelled, TaskEvent, TaskFailed, Tidehub, WaitTimeout,
)
from tidehub.sim.server import SimServer
from tidehub.sim.settings import SimSettings


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    yield from run_demo(tmp_path_factory.mktemp("demo"))


def check_events(events: list[TaskEvent], task_id: str) -> None:
    """In order (stored events' ids strictly increase), about this task, ending with it finished."""
    ids = [int(e.id) for e in events if e.id and e.type != "task"]
    assert ids and ids == sorted(set(ids)), ids
    assert events[-1].type == "task" and events[-1].task is not None and events[-1].task.finished
    assert all(e.data["task_id"] == task_id for e in events)
    assert [e.type for e in events].count("task") == 1
    assert events[0].type == "status" and events[0].data["status"] == "pending"


@pytest.mark.parametrize("capability", list(WORK))
def test_run_follows_every_capability_to_its_files(demo: Demo, capability: str, tmp_path: Path) -> None:
    model, input = WORK[capability]
    seen: list[TaskEvent] = []
    with Tidehub(demo.url, key=demo.key) as hub:
        task = hub.run(model, input, on_event=seen.append, timeout=120)
        assert task.status == "completed" and task.progress == 100
        check_events(seen, task.id)
        assert seen[-1].task == task
        assert any(e.type == "log" for e in seen) and task.logs
        paths = hub.download(task, tmp_path)
    if capability == "transcribe":
        assert paths == [] and task.output["text"].strip()
        return
    assert len(paths) == len(task.files) >= (2 if capability == "image" else 1)
    assert len(set(paths)) == len(paths)
    for path in paths:
        check_file(capability, path)


def test_the_async_client_does_the_same(demo: Demo, tmp_path: Path) -> None:
    async def main() -> tuple[Any, list[TaskEvent], list[Path], dict[str, Any], list[dict[str, Any]]]:
        seen: list[TaskEvent] = []

        async def note(event: TaskEvent) -> None:
            seen.append(event)

        async with AsyncTidehub(demo.url, key=demo.key) as hub:
            task = await hub.run(*WORK["video"], on_event=note, timeout=120)
            paths = await hub.download(task, tmp_path)
            return task, seen, paths, await hub.account(), await hub.models("audio")

    task, seen, paths, account, models = asyncio.run(main())
    assert task.status == "completed"
    check_events(seen, task.id)
    check_file("video", paths[0])
    assert account["balance"] >= 0 and account["spent"] > 0
    assert models and all(m["capability"] == "audio" for m in models)


def test_submit_get_wait_cancel_and_models(demo: Demo) -> None:
    with Tidehub(demo.url, key=demo.key) as hub:
        task = hub.submit(*WORK["image"])
        assert task.status in ("pending", "processing") and not task.finished
        done = hub.wait(task.id, timeout=120)
        assert done.status == "completed" and done.files and hub.get(task.id) == done
        slow = hub.submit("veo-3.1", {"prompt": "a long take", "duration": "8s", "resolution": "1080p"})
        with pytest.raises(WaitTimeout):
            hub.wait(slow.id, timeout=0.5)
        cancelled = hub.cancel(slow.id)
        assert cancelled.status == "cancelled" and hub.wait(slow.id, timeout=30).status == "cancelled"
        events = list(hub.events(slow.id))
        assert events[-1].task is not None and events[-1].task.status == "cancelled"
        model = hub.model("nano-banana")
        assert model["capability"] == "image" and model["input_schema"]["properties"]["prompt"]
        assert {m["id"] for m in hub.models("image")} >= {"nano-banana"}
        with pytest.raises(APIError) as refused:
            hub.submit("nano-banana", {"num_images": 2})  # no prompt
        assert refused.value.status == 422 and refused.value.field and "prompt" in refused.value.field


def test_run_raises_a_typed_error_for_a_task_that_ends_badly(demo: Demo) -> None:
    with Tidehub(demo.url, key=demo.key) as hub:
        with pytest.raises(TaskFailed) as failed:
            # The simulator refuses this prompt as a content-policy violation.
            hub.run("nano-banana", {"prompt": "a cat [sim:content-policy]"}, timeout=120)
        assert failed.value.task.status == "failed" and failed.value.task.error_code

        cancelled: list[str] = []

        def cancel_on_first_event(event: TaskEvent) -> None:
            if not cancelled:
                cancelled.append(hub.cancel(event.data["task_id"]).id)

        with pytest.raises(TaskCancelled):
            hub.run("veo-3.1", {"prompt": "x", "duration": "8s", "resolution": "1080p"},
                    on_event=cancel_on_first_event, timeout=120)
        with pytest.raises(WaitTimeout):
            hub.run("veo-3.1", {"prompt": "y", "duration": "8s", "resolution": "1080p"}, timeout=0.3)


def test_transient_failures_are_retried_with_one_idempotency_key(demo: Demo) -> None:
    """A 503 and a dropped connection before the submit lands: retried, one task made."""
    real = httpx.HTTPTransport()
    keys: list[str] = []
    failures = iter(["503", "drop"])

    class Flaky(httpx.BaseTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            if request.method == "POST":
                keys.append(request.headers["idempotency-key"])
                failure = next(failures, None)
                if failure == "503":
                    return httpx.Response(503, headers={"Retry-After": "0"}, json={"error_code": "busy"})
                if failure == "drop":
                    real.handle_request(request).close()  # it reached the gateway; the answer was lost
                    raise httpx.ReadError("connection reset", request=request)
            return real.handle_request(request)

    def task_ids() -> set[str]:
        records = httpx.get(f"{demo.url}/hub/v1/usage/records", headers={"Authorization": f"Bearer {demo.key}"})
        return {r["task_id"] for r in records.json()["data"]}

    before = task_ids()
    with Tidehub(demo.url, key=demo.key, transport=Flaky()) as hub:
        task = hub.submit(*WORK["image"])
        assert len(keys) == 3 and len(set(keys)) == 1
        assert task_ids() - before == {task.id}  # one task, though the gateway saw two submits
        assert hub.wait(task.id, timeout=120).status == "completed"


def test_the_webhook_verifier_accepts_a_real_delivery_and_refuses_a_tampered_one(demo: Demo) -> None:
    receiver = demo.receiver
    with Tidehub(demo.url, key=demo.key) as hub:
        task = hub.run(*WORK["image"], webhook_url=receiver.url, timeout=120)
    secret = httpx.get(f"{demo.url}/hub/v1/webhooks/secret", headers={"Authorization": f"Bearer {demo.key}"}
                       ).json()["secret"]
    delivery = wait_for(lambda: next((r for r in receiver.received if task.id.encode() in r["body"]), None),
                        timeout=60, what="the webhook delivery")
    payload = tidehub.webhooks.verify(delivery["headers"], delivery["body"], secret)
    assert payload["type"] == "task.succeeded" and payload["data"]["task_id"] == task.id
    tampered = delivery["body"].replace(b'"completed"', b'"cancelled"', 1)
    assert tampered != delivery["body"]
    with pytest.raises(InvalidSignature):
        tidehub.webhooks.verify(delivery["headers"], tampered, secret)
    with pytest.raises(InvalidSignature):
        tidehub.webhooks.verify({**delivery["headers"], "webhook-id": "msg_other"}, delivery["body"], secret)
    with pytest.raises(InvalidSignature):
        tidehub.webhooks.verify(delivery["headers"], delivery["body"], "whsec_" + "A" * 44)


def test_an_event_stream_survives_a_gateway_restart(tmp_path: Path) -> None:
    """The gateway is killed mid-task and started again: the client's stream resumes with
    Last-Event-ID, misses nothing and repeats nothing, and ends with the finished task."""
    sim = SimServer(SimSettings(port=0, api_key=SIM_KEY, time_scale=0.1, seed=5))
    sim.start()
    data_dir, port = tmp_path / "data", free_port()
    env = {"TIDEHUB_FAL_BASE_URL": sim.base_url, "TIDEHUB_FAL_KEY": SIM_KEY, "TIDEHUB_TIME_SCALE": "0.1",
           "TIDEHUB_LEASE_S": "2", "TIDEHUB_SSRF_ALLOW": sim_allowance(sim.base_url)}
    proc = serve_process(port, data_dir, env)
    try:
        from tidehub.core.auth import create_key
        from tidehub.store import Store

        store = Store(f"sqlite:///{data_dir / 'tidehub.db'}")
        key = create_key(store, name="restart", credits=10**9).secret
        with Tidehub(f"http://127.0.0.1:{port}", key=key) as hub:
            task = hub.submit("veo-3.1", {"prompt": "waves", "duration": "8s", "resolution": "1080p"})
            events: list[TaskEvent] = []
            restarted = False
            for event in hub.events(task.id):
                events.append(event)
                if not restarted and event.type in ("log", "progress"):
                    assert event.type != "task"
                    proc.send_signal(signal.SIGKILL)
                    proc.wait(timeout=10)
                    restarted = True
                    assert store.tasks.get(task.id)["status"] in ("queued", "running"), "too late to test"
                    proc = serve_process(port, data_dir, env)
            assert restarted
            check_events(events, task.id)
            assert events[-1].task is not None and events[-1].task.status == "completed"
            # Exactly the stored story: every event once, in order, across the two connections.
            whole = list(hub.events(task.id))
            assert [(e.id, e.type, e.data) for e in events if e.id and e.type != "task"] == \
                   [(e.id, e.type, e.data) for e in whole if e.id and e.type != "task"]
        store.close()
    finally:
        proc.kill()
        proc.wait(timeout=10)
        sim.stop()
