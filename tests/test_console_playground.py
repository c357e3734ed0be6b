"""A task's page updating itself (the live fragment htmx polls until the task is final), and the
playground: forms made from a model's input schema, submitted through core and charged to the
customer (or, for an operator, to the account they choose), with bad input naming the field and
the form kept; and the streaming chat."""

from __future__ import annotations

import re
from pathlib import Path
from typing import AsyncIterator

import pytest

from console_client import Console, console_settings, opened_console
from tidehub.core.auth import Principal

POLLING = re.compile(r'<div id="task-live"[^>]* hx-get="/console/tasks/([^"]+)/live" hx-trigger="every 1s"')


@pytest.fixture
async def console(tmp_path: Path, database_url: str) -> AsyncIterator[Console]:
    async with opened_console(console_settings(tmp_path, database_url)) as c:
        yield c


async def test_a_running_tasks_page_polls_its_live_part_until_the_task_is_final(console) -> None:
    c = console
    customer = await c.as_role("other_customer")
    task_id = c.fixtures["task_b"]
    page = await customer.get(f"/console/tasks/{task_id}")
    assert POLLING.search(page.text).group(1) == task_id
    fragment = await customer.get(f"/console/tasks/{task_id}/live", headers={"HX-Request": "true"})
    assert fragment.status_code == 200 and "<!doctype" not in fragment.text
    assert POLLING.search(fragment.text) and 'data-status="queued"' in fragment.text and "Cancel task" in fragment.text
    # The task ends: the next poll shows it and carries no trigger, so the polling stops.
    await c.gw.tasks.cancel(Principal(c.fixtures["key_b_id"], c.fixtures["account_b"]), task_id)
    final = await customer.get(f"/console/tasks/{task_id}/live", headers={"HX-Request": "true"})
    assert 'data-status="canceled"' in final.text and "hx-trigger" not in final.text and "Cancel task" not in final.text
    assert (await customer.get(f"/console/tasks/{task_id}/live?format=json")).json()["task"]["status"] == "canceled"
    # Another account's task: the same 404 as for the page itself.
    assert (await customer.get(f"/console/tasks/{c.fixtures['task_a']}/live")).status_code == 404


async def test_the_playground_form_is_made_from_the_models_schema(console) -> None:
    c = console
    customer = await c.as_role("customer")
    page = await customer.get("/console/playground")
    assert page.status_code == 200
    text = page.text
    # The example's prompt as the default, an enum as a select with the default chosen, a number,
    # a boolean as a checkbox (after a hidden "false"), and every field labelled.
    assert re.search(r'<textarea id="f-prompt" name="prompt"[^>]*>A watercolor fox', text)
    assert re.search(r'<select id="f-aspect_ratio" name="aspect_ratio"', text)
    assert '<option value="1:1" selected>' in text and '<option value="png" selected>' in text
    assert re.search(r'<input id="f-num_images" name="num_images" type="text" value="1" inputmode="numeric"', text)
    assert '<input type="hidden" name="sync_mode" value="false">' in text
    assert re.search(r'<input id="f-sync_mode" type="checkbox" role="switch" name="sync_mode" value="true"', text)
    assert 'name="account"' not in text  # a customer pays from their own account
    # Arrays of plain values are comma lists, nested values JSON.
    edit = await customer.get("/console/playground?model=google/nano-banana/edit")
    assert "comma-separated" in edit.text and 'name="image_urls"' in edit.text
    chat = await customer.get("/console/playground?model=openai/gpt-4o-mini")
    assert 'id="chat-form"' in chat.text and "Say hello in three words." in chat.text
    assert (await customer.get("/console/playground?model=no/such/model")).status_code == 404


async def test_a_customer_runs_a_task_charged_to_their_account(console) -> None:
    c = console
    customer = await c.as_role("customer")
    before = c.gw.store.accounts.get(c.fixtures["account_a"])
    ran = await customer.post("/console/playground", {
        "model": "google/nano-banana/text-to-image", "prompt": "a red kite over the sea", "aspect_ratio": "16:9",
        "num_images": "2", "sync_mode": ["false", "true"], "limit_generations": "false", "seed": ""})
    assert ran.status_code == 303, ran.text
    task_id = re.search(r"task=([\w-]+)", ran.headers["location"]).group(1)
    task = c.gw.store.tasks.get(task_id)
    assert task["account_id"] == c.fixtures["account_a"] and task["key_id"] == c.fixtures["key_a_id"]
    assert task["input"]["prompt"] == "a red kite over the sea" and task["input"]["num_images"] == 2
    assert task["input"]["sync_mode"] is True and task["input"]["limit_generations"] is False
    assert "seed" not in task["input"]  # an empty field is left to the schema's default
    after = c.gw.store.accounts.get(c.fixtures["account_a"])
    assert task["held"] > 0 and after["held"] == before["held"] + task["held"]
    # The playground shows the run live below the form, which keeps the run's values.
    page = await customer.get(ran.headers["location"])
    assert POLLING.search(page.text).group(1) == task_id
    assert re.search(r'<textarea id="f-prompt"[^>]*>a red kite over the sea', page.text)
    assert '<option value="16:9" selected>' in page.text
    # Another account's task is not shown (the defaults are).
    other = await c.as_role("other_customer")
    theirs = await other.get(ran.headers["location"])
    assert task_id not in theirs.text and "A watercolor fox" in theirs.text


async def test_bad_playground_input_names_the_field_and_keeps_the_form(console) -> None:
    c = console
    customer = await c.as_role("customer")
    base = {"model": "google/nano-banana/text-to-image", "prompt": "kept prompt"}
    count = len(c.gw.store.task_list.page(account_id=c.fixtures["account_a"]).rows)
    for change, field, message in (
        ({"num_images": "many"}, "num_images", "must be a whole number"),
        ({"num_images": "9"}, "num_images", "num_images"),  # the schema's maximum, found by core
        ({"prompt": ""}, "prompt", "prompt"),
        ({"aspect_ratio": "7:1"}, "aspect_ratio", "must be one of"),
    ):
        response = await customer.post("/console/playground", {**base, **change})
        assert response.status_code == 422, (change, response.status_code)
        assert f'id="e-{field}"' in response.text and message in response.text, change
        assert 'aria-invalid="true"' in response.text
        if "prompt" not in change:
            assert "kept prompt" in response.text
    edit = await customer.post("/console/playground", {"model": "google/nano-banana/edit", "prompt": "x",
                                                       "image_urls": "http://169.254.169.254/latest/meta-data.png"})
    assert edit.status_code == 422 and 'id="e-image_urls"' in edit.text  # the SSRF rule, named
    assert len(c.gw.store.task_list.page(account_id=c.fixtures["account_a"]).rows) == count
    # A key limited to other models: refused with the reason, nothing run.
    limited = c.gw.keys.create(name="limited", account_id=c.fixtures["account_a"], allowed_models=["veo-3.1"])
    client = c.client()
    await client.sign_in_with_key(limited.secret)
    refused = await client.post("/console/playground", base)
    assert refused.status_code == 403 and "may not use" in refused.text and "kept prompt" in refused.text


async def test_an_operator_runs_a_task_for_the_account_they_choose(console) -> None:
    c = console
    admin = await c.as_role("admin")
    account_page = await admin.get(f"/console/accounts/{c.fixtures['account_b']}")
    assert f'href="/console/playground?account={c.fixtures["account_b"]}"' in account_page.text
    page = await admin.get(f"/console/playground?account={c.fixtures['account_b']}")
    assert f'name="account" type="text" value="{c.fixtures["account_b"]}"' in page.text
    base = {"model": "google/nano-banana/text-to-image", "prompt": "for beta"}
    missing = await admin.post("/console/playground", base)
    assert missing.status_code == 422 and 'id="e-account"' in missing.text and "for beta" in missing.text
    unknown = await admin.post("/console/playground", {**base, "account": "acct_nobody"})
    assert unknown.status_code == 422 and "no active key" in unknown.text
    ran = await admin.post("/console/playground", {**base, "account": c.fixtures["account_b"]})
    assert ran.status_code == 303
    task_id = re.search(r"task=([\w-]+)", ran.headers["location"]).group(1)
    task = c.gw.store.tasks.get(task_id)
    assert task["account_id"] == c.fixtures["account_b"] and task["key_id"] == c.fixtures["key_b_id"]
    entry = next(e for e in c.gw.store.audit.page().rows if e["action"] == "task.submit")
    assert entry["actor"] == "operator:admin" and entry["target"] == task_id
    assert entry["details"]["account_id"] == c.fixtures["account_b"]
    again = await admin.get(ran.headers["location"])
    assert f'value="{c.fixtures["account_b"]}"' in again.text


async def test_the_playground_runs_to_a_preview_and_streams_a_chat(gateway) -> None:
    """On a real gateway with the simulator upstream: a run ends with its image on the page, and a
    chat's answer arrives as a stream, charged to the customer."""
    import asyncio

    import httpx

    from conftest import wait_for
    from console_client import ConsoleClient

    secret = gateway.new_key(credits=10**6)
    customer = ConsoleClient(httpx.AsyncClient(base_url=gateway.url, timeout=30))
    try:
        assert (await customer.sign_in_with_key(secret)).status_code == 303
        await customer.get("/console/playground")
        ran = await customer.post("/console/playground", {"model": "google/nano-banana/text-to-image",
                                                          "prompt": "a lighthouse at dusk"})
        assert ran.status_code == 303, ran.text
        task_id = re.search(r"task=([\w-]+)", ran.headers["location"]).group(1)

        async def final() -> str | None:
            fragment = await customer.get(f"/console/tasks/{task_id}/live", headers={"HX-Request": "true"})
            return fragment.text if "hx-trigger" not in fragment.text else None

        async def poll() -> str:
            while True:
                found = await final()
                if found:
                    return found
                await asyncio.sleep(0.2)

        done = await asyncio.wait_for(poll(), 60)
        assert 'data-status="succeeded"' in done, done[:500]
        image = re.search(r'<img src="([^"]+/files/[^"]+)"', done).group(1)
        assert httpx.get(image).headers["content-type"].startswith("image/")
        # The task list and the overview preview it too.
        for path in ("/console/tasks", "/console/account"):
            listing = (await customer.get(path)).text
            assert f'<td class="thumb"><a href="/console/tasks/{task_id}"><img src="{image}"' in listing, path

        account = gateway.gateway.store.accounts.get(
            (await gateway.gateway.auth.authenticate(f"Bearer {secret}")).account_id)
        spent = account["spent"]
        await customer.get("/console/playground?model=openai/gpt-4o-mini")
        form = {"csrf_token": customer.csrf, "model": "openai/gpt-4o-mini",
                "messages": '[{"role": "user", "content": "Say hello in three words."}]'}
        async with customer.http.stream("POST", "/console/playground/chat", data=form) as response:
            assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
            body = "".join([chunk async for chunk in response.aiter_text()])
        assert '"delta"' in body and body.rstrip().endswith("data: [DONE]")
        store = gateway.gateway.store
        wait_for(lambda: store.accounts.get(account["id"])["spent"] > spent, timeout=30, what="the chat's charge")
        # Mistakes come back as JSON naming the field, before any stream.
        bad = await customer.http.post("/console/playground/chat", data={**form, "messages": "[]"},
                                       headers={"Accept": "application/json"})
        assert bad.status_code == 422 and bad.json()["error"]["field"] == "messages"
        no_csrf = await customer.http.post("/console/playground/chat", data={**form, "csrf_token": "x"})
        assert no_csrf.status_code == 403
    finally:
        await customer.aclose()
