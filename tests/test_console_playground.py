"""A task's page updating itself (the live fragment htmx polls until the task is final), and the
playground: forms made from a model's input schema, submitted through core and charged to the
customer (or, for an operator, to the account they choose), with bad input naming the field and
the form kept; and the streaming chat."""

from __future__ import annotations

import re
from pathlib import Path
from typing import AsyncIterator

import pytest

from test_console import Console, console_settings, open_console
from tidehub.core.auth import Principal

POLLING = re.compile(r'<div id="task-live"[^>]* hx-get="/console/tasks/([^"]+)/live" hx-trigger="every 1s"')


@pytest.fixture
async def console(tmp_path: Path, database_url: str) -> AsyncIterator[Console]:
    c = await open_console(console_settings(tmp_path, database_url))
    yield c
    for client in c.clients:
        await client.aclose()
    await c.gw.close()


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
