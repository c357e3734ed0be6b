"""Client webhooks (Standard Webhooks), idempotent submits, and the SSRF guard on webhook_url."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
import sqlalchemy as sa
from standardwebhooks.webhooks import Webhook

from conftest import wait_for, wait_task
from receivers import Receiver
from tidehub.store.schema import api_keys

IMAGE = {"model": "nano-banana", "input": {"prompt": "a lighthouse"}}


@pytest.fixture
def receiver():
    made: list[Receiver] = []

    def make(statuses: list[int] | None = None) -> Receiver:
        made.append(Receiver(statuses))
        return made[-1]

    yield make
    for r in made:
        r.stop()


@pytest.fixture
def hooked_gateway(make_gateway):
    # The receivers live on loopback, which the guard refuses unless the operator allows it.
    return make_gateway(ssrf_allow="127.0.0.1")


def test_terminal_webhook_is_signed_and_stable_across_retries(hooked_gateway, receiver) -> None:
    hook = receiver([500, 503])  # two failures, then success
    with hooked_gateway.client(hooked_gateway.new_key()) as c:
        secret = c.get("/hub/v1/webhooks/secret").json()["secret"]
        assert secret.startswith("whsec_") and c.get("/ms/v1/webhooks/secret").json()["secret"] == secret
        task_id = c.post("/hub/v1/image", json={**IMAGE, "webhook_url": hook.url}).json()["task_id"]
        task = wait_task(c, f"/hub/v1/tasks/{task_id}", lambda b: b["ready"])
        wait_for(lambda: len(hook.received) == 3, timeout=30, what="three delivery attempts")
        ids = {r["headers"]["webhook-id"] for r in hook.received}
        assert len(ids) == 1, ids  # the same id on every retry
        for r in hook.received:
            payload = Webhook(secret).verify(r["body"], r["headers"])  # raises on a bad signature
            assert payload["type"] == "task.succeeded" and payload["data"] == task
        [delivery] = c.get("/hub/v1/webhooks/deliveries", params={"task_id": task_id}).json()["data"]
        assert delivery["status"] == "delivered" and delivery["attempts"] == 3
        assert [a["status_code"] for a in delivery["attempt_log"]] == [500, 503, 200]

        # Manual redelivery sends it again, with the same id, signed with a rotated secret.
        rotated = c.post("/hub/v1/webhooks/secret/rotate").json()["secret"]
        assert rotated != secret
        assert c.post(f"/hub/v1/webhooks/deliveries/{delivery['id']}/redeliver").status_code == 200
        wait_for(lambda: len(hook.received) == 4, timeout=20, what="the redelivery")
        last = hook.received[-1]
        assert last["headers"]["webhook-id"] in ids
        Webhook(rotated).verify(last["body"], last["headers"])
        assert c.post("/hub/v1/webhooks/deliveries/msg_nope/redeliver").status_code == 404


def test_ms_tasks_get_ms_shaped_webhooks_for_every_end(hooked_gateway, receiver) -> None:
    hook = receiver()
    with hooked_gateway.client(hooked_gateway.new_key()) as c:
        secret = c.get("/ms/v1/webhooks/secret").json()["secret"]
        ok = c.post("/ms/v1/run/google/nano-banana/text-to-image", json={"input": IMAGE["input"], "webhook_url": hook.url}).json()
        gone = c.post("/ms/v1/run/google/veo-3.1/text-to-video", json={"input": {"prompt": "slow"}, "webhook_url": hook.url}).json()
        c.post(f"/ms/v1/tasks/{gone['task_id']}/cancel")
        wait_for(lambda: len(hook.received) == 2, timeout=30, what="two webhooks")
    events = {}
    for r in hook.received:
        payload = Webhook(secret).verify(r["body"], r["headers"])
        events[payload["data"]["task_id"]] = payload
    assert events[ok["task_id"]]["type"] == "task.succeeded" and events[ok["task_id"]]["data"]["status"] == "succeeded"
    assert events[gone["task_id"]]["type"] == "task.canceled" and events[gone["task_id"]]["data"]["endpoint"]


def test_gone_receiver_stops_retries(hooked_gateway, receiver) -> None:
    hook = receiver([410])
    with hooked_gateway.client(hooked_gateway.new_key()) as c:
        task_id = c.post("/hub/v1/image", json={**IMAGE, "webhook_url": hook.url}).json()["task_id"]
        def disabled() -> bool:
            rows = c.get("/hub/v1/webhooks/deliveries", params={"task_id": task_id}).json()["data"]
            return bool(rows) and rows[0]["status"] == "disabled"

        wait_for(disabled, timeout=30, what="the delivery to be disabled")
    assert len(hook.received) == 1


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:1/hook", "http://10.0.0.1/x", "http://169.254.169.254/latest/meta-data",
    "http://[::1]/x", "http://2130706433/", "http://[::ffff:127.0.0.1]/", "file:///etc/passwd",
])
def test_webhook_url_to_private_addresses_is_refused(gateway, url: str) -> None:
    with gateway.client(gateway.new_key()) as c:
        resp = c.post("/hub/v1/image", json={**IMAGE, "webhook_url": url})
        assert resp.status_code == 422, resp.text
        assert resp.json()["field"] == "webhook_url"


def test_idempotency_key_returns_the_same_task_and_charges_once(gateway) -> None:
    key = gateway.new_key(credits=10_000)
    with gateway.client(key) as c:
        first = c.post("/hub/v1/image", json=IMAGE, headers={"Idempotency-Key": "order-42"}).json()
        again = c.post("/hub/v1/image", json=IMAGE, headers={"Idempotency-Key": "order-42"}).json()
        assert first["task_id"] == again["task_id"]
        other = c.post("/hub/v1/image", json={**IMAGE, "input": {"prompt": "different"}},
                       headers={"Idempotency-Key": "order-42"})
        assert other.status_code == 409 and other.json()["error_code"] == "idempotency_key_reused"
        ms_first = c.post("/ms/v1/run/google/nano-banana/text-to-image", json={"input": {"prompt": "m"}},
                          headers={"Idempotency-Key": "ms-1"}).json()
        ms_again = c.post("/ms/v1/run/google/nano-banana/text-to-image", json={"input": {"prompt": "m"}},
                          headers={"Idempotency-Key": "ms-1"}).json()
        assert ms_first["task_id"] == ms_again["task_id"]
        account = c.get("/hub/v1/account").json()
    assert account["held"] + account["spent"] == 2 * 35
    # Keys belong to an account: another account may use the same key for its own task.
    with gateway.client(gateway.new_key()) as other_account:
        theirs = other_account.post("/hub/v1/image", json=IMAGE, headers={"Idempotency-Key": "order-42"}).json()
        assert theirs["task_id"] != first["task_id"]


@pytest.mark.parametrize("refusal", ["insufficient_credits", "key_spend_cap"])
def test_a_refused_submit_leaves_its_idempotency_key_free(gateway, refusal: str) -> None:
    """Refused for money, then retried with the same key once the money is there: the retry
    creates the task, charged once (the refusal left no idempotency record behind)."""
    limits = {"credits": 10} if refusal == "insufficient_credits" else {"credits": 10_000, "spend_cap": 10}
    key = gateway.new_key(**limits)
    store = gateway.gateway.store
    with gateway.client(key) as c:
        refused = c.post("/hub/v1/image", json=IMAGE, headers={"Idempotency-Key": "retry-me"})
        assert refused.status_code == 403 and refused.json()["error_code"] == refusal
        account_id = c.get("/hub/v1/account").json()["account_id"]
        if refusal == "insufficient_credits":
            store.accounts.add_credits(account_id, 10_000, time.time(), "top up")
        else:
            [key_row] = [k for k in store.keys.list() if k["account_id"] == account_id]
            with store.engine.begin() as conn:
                conn.execute(sa.update(api_keys).where(api_keys.c.id == key_row["id"]).values(spend_cap=None))
        first = c.post("/hub/v1/image", json=IMAGE, headers={"Idempotency-Key": "retry-me"})
        again = c.post("/hub/v1/image", json=IMAGE, headers={"Idempotency-Key": "retry-me"})
        assert first.status_code == again.status_code == 200, (first.text, again.text)
        assert first.json()["task_id"] == again.json()["task_id"]
        account = c.get("/hub/v1/account").json()
    assert account["held"] + account["spent"] == 35


def test_idempotency_under_a_race(gateway) -> None:
    key = gateway.new_key(credits=10_000)

    async def race() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=gateway.url, headers={"Authorization": f"Bearer {key}",
                                                                     "Idempotency-Key": "burst"}) as c:
            return await asyncio.gather(*[c.post("/hub/v1/image", json=IMAGE) for _ in range(10)])

    responses = asyncio.run(race())
    assert {r.status_code for r in responses} == {200}
    assert len({r.json()["task_id"] for r in responses}) == 1
    with gateway.client(key) as c:
        account = c.get("/hub/v1/account").json()
    assert account["held"] + account["spent"] == 35
