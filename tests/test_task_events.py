"""Live task events (SSE) and ``?wait=``, through both dialects, whichever process runs the task."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from conftest import GatewayServer
from mediacheck import files_in
from tidehub.store.events import MAX_EVENTS_PER_TASK

VIDEO = {"model": "veo-3.1", "input": {"prompt": "waves", "duration": "4s", "resolution": "720p"}}
IMAGE = {"model": "nano-banana", "input": {"prompt": "a cat", "num_images": 1}}


def read_events(client: httpx.Client, path: str, last_id: str | None = None, stop_after: int | None = None
                ) -> list[dict[str, Any]]:
    """The events of one SSE response: dicts of id, event and the parsed data."""
    headers = {"Last-Event-ID": last_id} if last_id else {}
    events: list[dict[str, Any]] = []
    current: dict[str, Any] = {}
    with client.stream("GET", path, headers=headers, timeout=120) as resp:
        assert resp.status_code == 200, resp.read()
        assert resp.headers["content-type"].startswith("text/event-stream")
        for line in resp.iter_lines():
            if line == "":
                if "event" in current:
                    events.append(current)
                    if stop_after is not None and len(events) >= stop_after:
                        break
                current = {}
            elif line.startswith(":"):
                continue
            else:
                field, _, value = line.partition(": ")
                current[field] = json.loads(value) if field == "data" else value
    return events


def check_story(events: list[dict[str, Any]], done: str) -> None:
    """Stored events have strictly increasing ids; the stream ends with the whole task, terminal."""
    ids = [int(e["id"]) for e in events if "id" in e and e["event"] != "task"]
    assert ids == sorted(set(ids)) and ids, ids
    assert events[-1]["event"] == "task" and events[-1]["data"]["status"] == done
    statuses = [e["data"]["status"] for e in events if e["event"] == "status"]
    assert statuses[-1] == done and len(statuses) >= 3, statuses  # queued, running, ..., done
    assert sum(e["event"] == "task" for e in events) == 1


@pytest.mark.parametrize("dialect", ["hub", "ms"])
def test_events_tell_the_story_in_order_and_end_with_the_task(gateway: GatewayServer, dialect: str) -> None:
    with gateway.client(gateway.new_key()) as c:
        if dialect == "hub":
            task_id = c.post("/hub/v1/video", json=VIDEO).json()["task_id"]
            done, queued = "completed", "pending"
        else:
            task_id = c.post("/ms/v1/run/google/veo-3.1/text-to-video", json={"input": VIDEO["input"]}).json()["task_id"]
            done, queued = "succeeded", "queued"
        events = read_events(c, f"/{dialect}/v1/tasks/{task_id}/events")
        check_story(events, done)
        assert events[0]["event"] == "status" and events[0]["data"]["status"] == queued
        kinds = {e["event"] for e in events}
        assert {"status", "progress", "log", "task"} <= kinds, kinds
        progress = [e["data"]["progress"] for e in events if e["event"] == "progress"]
        assert progress == sorted(progress) and progress[-1] == 100
        final = events[-1]["data"]
        assert final == c.get(f"/{dialect}/v1/tasks/{task_id}").json()
        # The upstream's log lines are kept on the task, and are those the stream showed.
        streamed = [e["data"]["message"] for e in events if e["event"] == "log"]
        assert [line["message"] for line in final["logs"]] == streamed and any("Completed" in m for m in streamed)
        assert files_in(final["data" if dialect == "hub" else "output"])


def test_a_resumed_stream_continues_after_its_last_event_id(gateway: GatewayServer) -> None:
    with gateway.client(gateway.new_key()) as c:
        task_id = c.post("/hub/v1/video", json=VIDEO).json()["task_id"]
        path = f"/hub/v1/tasks/{task_id}/events"
        first = read_events(c, path, stop_after=3)
        rest = read_events(c, path, last_id=[e["id"] for e in first if "id" in e][-1])
        whole = read_events(c, path)
    check_story(first + rest, "completed")
    # (The place in Tidehub's own queue is worked out as it is read, with no id: not replayed.)
    stored = lambda evs: [(e["id"], e["event"], e["data"]) for e in evs if e["event"] != "task" and "id" in e]  # noqa: E731
    assert stored(first + rest) == stored(whole)
    # A stream of a finished task resumed after its end: nothing but the task itself.
    with gateway.client(gateway.new_key()) as other:
        assert other.get(path).status_code == 404  # another account's task is nobody's
    with httpx.Client(base_url=gateway.url, headers=c.headers) as again:
        tail = read_events(again, path, last_id=whole[-1]["id"])
    assert [e["event"] for e in tail] == ["task"]


def test_wait_answers_when_the_task_ends(gateway: GatewayServer) -> None:
    with gateway.client(gateway.new_key()) as c:
        task_id = c.post("/hub/v1/image", json=IMAGE).json()["task_id"]
        started = time.monotonic()
        body = c.get(f"/hub/v1/tasks/{task_id}", params={"wait": 60}, timeout=90).json()
        assert body["status"] == "completed" and body["ready"] is True
        assert time.monotonic() - started < 55  # it did not sit out the whole minute
        slow = c.post("/hub/v1/video", json={"model": "veo-3.1", "input": {
            "prompt": "long", "duration": "8s", "resolution": "1080p"}}).json()["task_id"]
        c.post(f"/hub/v1/tasks/{slow}/cancel")
        body = c.get(f"/ms/v1/tasks/{slow}", params={"wait": "30"}, timeout=60).json()
        assert body["status"] == "canceled"
        ms = c.post("/ms/v1/run/google/veo-3.1/text-to-video", json={"input": VIDEO["input"]}).json()["task_id"]
        still = c.get(f"/ms/v1/tasks/{ms}", params={"wait": "0.2"}).json()
        assert still["task_id"] == ms and still["status"] in ("queued", "processing", "succeeded")


@pytest.mark.parametrize("value", ["abc", "-1", "61", "nan", "inf", "1e9"])
def test_a_bad_wait_is_a_400_naming_wait(client: httpx.Client, value: str) -> None:
    task_id = client.post("/hub/v1/image", json=IMAGE).json()["task_id"]
    hub = client.get(f"/hub/v1/tasks/{task_id}", params={"wait": value})
    assert hub.status_code == 400 and hub.json()["field"] == "wait", hub.text
    ms = client.get(f"/ms/v1/tasks/{task_id}", params={"wait": value})
    assert ms.status_code == 400 and ms.json()["error"]["field"] == "wait", ms.text


def test_a_bad_last_event_id_is_a_400(client: httpx.Client) -> None:
    task_id = client.post("/hub/v1/image", json=IMAGE).json()["task_id"]
    resp = client.get(f"/ms/v1/tasks/{task_id}/events", headers={"Last-Event-ID": "seven"})
    assert resp.status_code == 400 and resp.json()["error"]["field"] == "Last-Event-ID"
    assert client.get("/hub/v1/tasks/hub-missing/events").status_code == 404


def test_events_reach_a_process_that_does_not_run_the_task(make_gateway, database_url: str) -> None:
    """An API-only gateway streams a task that the other gateway's engine runs: the events come
    through the database, with no wake-up from the process that wrote them."""
    runner = make_gateway(database_url)
    url = database_url or runner.settings.db_url
    api_only = make_gateway(url, more_upstreams=False, engine_enabled=False, secret_key="test-secret-key")
    key = runner.new_key()
    with api_only.client(key) as c:
        task_id = c.post("/hub/v1/video", json=VIDEO).json()["task_id"]
        events = read_events(c, f"/hub/v1/tasks/{task_id}/events")
        check_story(events, "completed")
        waited = c.get(f"/hub/v1/tasks/{task_id}", params={"wait": 60}, timeout=90).json()
        assert waited["status"] == "completed"


def test_events_per_task_are_bounded_but_the_end_is_always_written(gateway: GatewayServer) -> None:
    store = gateway.gateway.store
    with gateway.client(gateway.new_key()) as c:
        task_id = c.post("/hub/v1/video", json=VIDEO).json()["task_id"]
        many = [("log", {"message": f"line {i}", "level": "INFO"}) for i in range(MAX_EVENTS_PER_TASK + 50)]
        assert store.tasks.update(task_id, {"updated_at": time.time()}, events=many)
        c.post(f"/hub/v1/tasks/{task_id}/cancel")
        events = read_events(c, f"/hub/v1/tasks/{task_id}/events")
    stored = [e for e in events if e["event"] != "task" and "id" in e]
    assert len(stored) == MAX_EVENTS_PER_TASK + 1
    assert stored[-1]["event"] == "status" and stored[-1]["data"]["status"] == "cancelled"


def test_events_go_with_the_task_files(gateway: GatewayServer) -> None:
    store = gateway.gateway.store
    with gateway.client(gateway.new_key()) as c:
        task_id = c.post("/hub/v1/image", json=IMAGE).json()["task_id"]
        read_events(c, f"/hub/v1/tasks/{task_id}/events")
    assert store.events.after(task_id, 0)
    assert store.events.forget(time.time() - 3600) == 0  # nothing that old yet
    assert store.events.forget(time.time() + 1) > 0
    assert store.events.after(task_id, 0) == []
    with store.engine.connect() as conn:
        assert conn.execute(sa.text("select count(*) from task_events where task_id = :t"), {"t": task_id}).scalar() == 0


def test_a_client_that_leaves_leaves_nothing_behind(gateway: GatewayServer) -> None:
    """A stream dropped by its client stops reading and stops watching the task."""
    from conftest import wait_for

    changes = gateway.gateway.events.changes
    with gateway.client(gateway.new_key()) as c:
        task_id = c.post("/hub/v1/video", json={"model": "veo-3.1", "input": {
            "prompt": "long", "duration": "8s", "resolution": "1080p"}}).json()["task_id"]
        first = read_events(c, f"/hub/v1/tasks/{task_id}/events", stop_after=1)
        assert first[0]["event"] == "status"
        wait_for(lambda: task_id not in changes._waiters, timeout=30, what="the dropped stream to let go")
        c.post(f"/hub/v1/tasks/{task_id}/cancel")
