"""The customer's own pages through HTTP (the ASGI client): redeem a code, usage, their keys (a new
one's secret shown once, revoke), their webhook secret and deliveries; another account's key or
delivery is a 404, as if it did not exist."""

from __future__ import annotations

import re
from pathlib import Path
from typing import AsyncIterator

import pytest

from console_client import Console, console_settings, opened_console
from tidehub.core.accounts import create_codes
from tidehub.core.auth import Principal, hash_key

SECRET = re.compile(r'id="secret-value" type="text" readonly value="([^"]+)"')


@pytest.fixture
async def console(tmp_path: Path, database_url: str) -> AsyncIterator[Console]:
    async with opened_console(console_settings(tmp_path, database_url)) as c:
        yield c


async def test_a_customer_redeems_a_code_and_mistakes_name_the_field(console) -> None:
    c = console
    customer = await c.as_role("customer")
    code = create_codes(c.gw.store, 750, 1)[0]
    before = c.gw.store.accounts.get(c.fixtures["account_a"])["credits"]
    done = await customer.post("/console/account/redeem", {"code": code.lower()})
    assert done.status_code == 200 and "750 credits added" in done.text
    assert c.gw.store.accounts.get(c.fixtures["account_a"])["credits"] == before + 750
    again = await customer.post("/console/account/redeem", {"code": code})
    assert again.status_code == 400
    assert 'id="e-code"' in again.text and "already been used" in again.text and f'value="{code}"' in again.text
    empty = await customer.post("/console/account/redeem", {"code": ""})
    assert empty.status_code == 422 and "Code: is required" in empty.text
    assert c.gw.store.accounts.get(c.fixtures["account_a"])["credits"] == before + 750
    # The other account's balance did not move.
    assert c.gw.store.accounts.get(c.fixtures["account_b"])["credits"] == 100_000 - c.gw.store.tasks.get(
        c.fixtures["task_b"])["held"]


async def test_a_customer_sees_their_usage_only(console) -> None:
    c = console
    customer = await c.as_role("customer")
    overview = await customer.get("/console/account")
    assert overview.status_code == 200 and 'data-chart="usage"' in overview.text
    by_model = (await customer.get("/console/account/usage?group_by=model&format=json")).json()
    assert [r["model"] for r in by_model["rows"]] == ["nano-banana"] and by_model["totals"]["tasks"] == 1
    by_user = (await customer.get("/console/account/usage?group_by=user_identifier&format=json")).json()
    assert [r["user_identifier"] for r in by_user["rows"]] == ["user-a"]
    csv = await customer.get("/console/account/usage?group_by=model&format=csv")
    assert csv.headers["content-type"].startswith("text/csv") and csv.text.splitlines()[1].startswith("nano-banana,1,")
    # Nonsense parameters fall back to the defaults, never a 500.
    odd = await customer.get("/console/account/usage?group_by=account&window=9y")
    assert odd.status_code == 200 and 'value="day" selected' in odd.text


async def test_a_customer_makes_a_key_seen_once_and_revokes_their_own_only(console) -> None:
    c = console
    customer = await c.as_role("customer")
    balance = c.gw.store.accounts.get(c.fixtures["account_a"])["credits"]
    created = await customer.post("/console/account/keys", {"name": "ci", "spend_cap": "300",
                                                           "allowed_models": "nano-banana", "expires_at": "30d"})
    assert created.status_code == 201, created.text
    secret = SECRET.search(created.text).group(1)
    principal = await c.gw.auth.authenticate(f"Bearer {secret}")
    assert principal.account_id == c.fixtures["account_a"]  # their own account, sharing its balance
    row = c.gw.store.keys.get(principal.key_id)
    assert row["spend_cap"] == 300 and row["allowed_models"] == ["nano-banana"] and row["expires_at"] is not None
    assert c.gw.store.accounts.get(c.fixtures["account_a"])["credits"] == balance  # no credits made
    listing = await customer.get("/console/account/keys")
    assert listing.status_code == 200 and secret not in listing.text and hash_key(secret) not in listing.text
    assert row["prefix"] in listing.text and c.fixtures["key_b_id"] not in listing.text
    as_json = (await customer.get("/console/account/keys?format=json")).json()
    assert {k["id"] for k in as_json["keys"]} == {c.fixtures["key_a_id"], principal.key_id}
    assert "key_hash" not in as_json["keys"][0]
    audit = c.gw.store.audit.page().rows
    assert any(e["action"] == "key.create" and e["target"] == principal.key_id
               and e["actor"] == f"customer:{c.fixtures['account_a']}" for e in audit)

    # Bad input: the field named, the form kept, nothing made.
    bad = await customer.post("/console/account/keys", {"name": "kept", "spend_cap": "lots"})
    assert bad.status_code == 422 and 'id="e-spend_cap"' in bad.text and 'value="kept"' in bad.text
    unknown = await customer.post("/console/account/keys", {"name": "m", "allowed_models": "no-such-model"})
    assert unknown.status_code == 422 and "unknown model" in unknown.text
    assert len(c.gw.store.keys.page(account_id=c.fixtures["account_a"]).rows) == 2

    # Another account's key: as if it did not exist, and untouched.
    theirs = await customer.post(f"/console/account/keys/{c.fixtures['key_b_id']}/revoke")
    assert theirs.status_code == 404
    assert c.gw.store.keys.get(c.fixtures["key_b_id"])["revoked_at"] is None
    revoked = await customer.post(f"/console/account/keys/{principal.key_id}/revoke")
    assert revoked.status_code == 303 and revoked.headers["location"].endswith(principal.key_id)
    assert c.gw.store.keys.get(principal.key_id)["revoked_at"] is not None
    # Revoking the key the session rests on ends the session.
    ended = await customer.post(f"/console/account/keys/{c.fixtures['key_a_id']}/revoke")
    assert ended.status_code == 303 and ended.headers["location"] == "/console/login"
    assert (await customer.get("/console/account")).status_code == 303


async def test_a_customer_sees_their_webhook_secret_on_request_and_their_deliveries_only(console) -> None:
    c = console
    gw = c.gw
    b = Principal(c.fixtures["key_b_id"], c.fixtures["account_b"])
    endpoint = gw.catalog.endpoint(c.fixtures["slug"])
    task = await gw.tasks.submit(b, endpoint, {"prompt": "b2"}, id_prefix="hub", webhook_url="http://127.0.0.1:9/b")
    await gw.tasks.cancel(b, task["id"])
    theirs = (await gw.webhooks.deliveries(b, task["id"]))[0]["id"]

    customer = await c.as_role("customer")
    page = await customer.get("/console/account/webhooks")
    assert page.status_code == 200 and c.fixtures["delivery_id"] in page.text and theirs not in page.text
    secret = await gw.webhooks.secret(Principal(c.fixtures["key_a_id"], c.fixtures["account_a"]))
    assert secret not in page.text and not re.search(r"whsec_[\w+/]{8}", page.text)  # never on the page itself
    shown = await customer.post("/console/account/webhooks/secret")
    assert shown.status_code == 200 and SECRET.search(shown.text).group(1) == secret
    rotated = await customer.post("/console/account/webhooks/secret/rotate")
    new = SECRET.search(rotated.text).group(1)
    assert new != secret and new.startswith("whsec_") and "New webhook secret" in rotated.text
    assert new not in (await customer.get("/console/account/webhooks")).text

    assert (await customer.post(f"/console/account/webhooks/{theirs}/redeliver")).status_code == 404
    assert (await gw.webhooks.deliveries(b, task["id"]))[0]["attempts"] == 0
    mine = await customer.post(f"/console/account/webhooks/{c.fixtures['delivery_id']}/redeliver")
    assert mine.status_code == 303
    filtered = (await customer.get(f"/console/account/webhooks?task={c.fixtures['task_a']}&format=json")).json()
    assert [d["id"] for d in filtered["deliveries"]] == [c.fixtures["delivery_id"]]
    # The other customer sees theirs and not this one's.
    other = await c.as_role("other_customer")
    listing = await other.get("/console/account/webhooks")
    assert theirs in listing.text and c.fixtures["delivery_id"] not in listing.text
