"""The console through HTTP (the ASGI client): who may open and do what, CSRF, sessions, secrets
shown once and never again, bad form input, and the security headers on every page."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any, AsyncIterator

import pytest
from starlette.routing import Mount, Route

from console_client import CREDENTIAL, Console, ConsoleClient, console_settings, opened_console
from tidehub.core.auth import Principal, hash_key


@pytest.fixture
async def console(tmp_path: Path, database_url: str) -> AsyncIterator[Console]:
    async with opened_console(console_settings(tmp_path, database_url)) as c:
        yield c


@pytest.fixture
async def sqlite_console(tmp_path: Path) -> AsyncIterator[Console]:
    async with opened_console(console_settings(tmp_path)) as c:
        yield c


def console_routes(app: Any) -> list[Route]:
    """Every route of the console sub-application (found by walking the mounted apps)."""
    mount = next(r for r in app.routes if isinstance(r, Mount) and r.path == "/console")
    inner = mount.app
    while not hasattr(inner, "routes"):
        inner = inner.app
    return [r for r in inner.routes if isinstance(r, Route)]


def fill(path: str, fixtures: dict[str, str], *, own: bool = True) -> str:
    suffix = "a" if own else "b"
    values = {"account_id": fixtures[f"account_{suffix}"], "key_id": fixtures[f"key_{suffix}_id"],
              "task_id": fixtures[f"task_{suffix}"], "channel_id": fixtures["channel_id"],
              "code_id": fixtures["code_id"], "delivery_id": fixtures["delivery_id"], "slug": fixtures["slug"]}
    return re.sub(r"\{(\w+)(?::\w+)?\}", lambda m: values[m.group(1)], path)


# -- who may open what ---------------------------------------------------------------------------

async def test_every_route_declares_its_roles_and_sends_anonymous_visitors_to_sign_in(sqlite_console) -> None:
    c = sqlite_console
    anonymous = c.client()
    routes = console_routes(c.app)
    public = {"/login", "/login/key"}
    assert {r.path for r in routes if not hasattr(r, "roles")} == public
    for route in routes:
        if route.path in public:
            continue
        path = "/console" + fill(route.path, c.fixtures)
        for method in route.methods - {"HEAD"}:
            response = await anonymous.http.request(method, path)
            assert response.status_code == 303, (method, path, response.status_code)
            assert response.headers["location"].startswith("/console/login?next=")
    # htmx gets a full-page redirect, not a sign-in form swapped into a fragment.
    response = await anonymous.http.post(f"/console/channels/{c.fixtures['channel_id']}/test",
                                         headers={"HX-Request": "true"})
    assert response.status_code == 401 and response.headers["HX-Redirect"].startswith("/console/login")
    assert (await anonymous.get("/")).headers["location"] == "/console/"


async def test_each_role_opens_only_its_pages(console) -> None:
    c = console
    clients = {role: await c.as_role(role) for role in ("admin", "viewer", "customer")}
    for route in console_routes(c.app):
        roles = getattr(route, "roles", None)
        if roles is None or "GET" not in route.methods:
            continue
        path = "/console" + fill(route.path, c.fixtures)
        for role, client in clients.items():
            response = await client.get(path)
            if role in roles:
                assert response.status_code in (200, 303), (role, path, response.status_code, response.text[:300])
            else:
                assert response.status_code == 403, (role, path, response.status_code)
                assert "Not allowed" in response.text


async def test_a_viewer_sees_everything_and_changes_nothing(console) -> None:
    c = console
    viewer = await c.as_role("viewer")
    keys_page = await viewer.get("/console/keys")
    assert keys_page.status_code == 200 and "Create a key" not in keys_page.text
    for route in console_routes(c.app):
        if "POST" not in route.methods or route.path in ("/login", "/login/key", "/logout"):
            continue
        path = "/console" + fill(route.path, c.fixtures)
        response = await viewer.post(path, {"amount": "5", "credits": "5", "count": "1", "name": "x"})
        assert response.status_code == 403, (path, response.status_code)
    account = c.gw.store.accounts.get(c.fixtures["account_a"])
    assert account["added"] == 100_000  # nothing was topped up
    assert (await viewer.post("/console/logout")).status_code == 303  # but a viewer may sign out


async def test_a_customer_sees_only_their_own_account(console) -> None:
    c = console
    mine, theirs = c.fixtures["task_a"], c.fixtures["task_b"]
    customer = await c.as_role("customer")
    listing = await customer.get("/console/tasks?window=all")
    assert mine in listing.text and theirs not in listing.text
    as_json = (await customer.get("/console/tasks?window=all&account=" + c.fixtures["account_b"],
                                  headers={"Accept": "application/json"})).json()
    assert [t["id"] for t in as_json["tasks"]] == [mine]  # the account filter cannot widen the view
    assert "channel_id" not in as_json["tasks"][0]
    assert (await customer.get(f"/console/tasks/{mine}")).status_code == 200
    other = await customer.get(f"/console/tasks/{theirs}")
    assert other.status_code == 404 and theirs in other.text  # as if it did not exist
    assert (await customer.post(f"/console/tasks/{theirs}/cancel")).status_code == 404
    assert c.gw.store.tasks.get(theirs)["status"] == "queued"
    overview = await customer.get("/console/account")
    assert c.fixtures["account_a"] in overview.text and c.fixtures["account_b"] not in overview.text
    # The other customer, the other way round.
    other_customer = await c.as_role("other_customer")
    assert (await other_customer.get(f"/console/tasks/{mine}")).status_code == 404
    assert theirs in (await other_customer.get("/console/tasks?window=all")).text


async def test_a_customer_cancels_their_task_and_the_hold_goes_back(console) -> None:
    c = console
    key = c.gw.keys.create(account_id=c.fixtures["account_b"], name="second")
    endpoint = c.gw.catalog.endpoint(c.fixtures["slug"])
    task = await c.gw.tasks.submit(Principal(key.key_id, c.fixtures["account_b"]), endpoint, {"prompt": "x"},
                                   id_prefix="hub")
    held = c.gw.store.accounts.get(c.fixtures["account_b"])["held"]
    assert held > 0
    customer = await c.as_role("other_customer")
    response = await customer.post(f"/console/tasks/{task['id']}/cancel")
    assert response.status_code == 303
    assert c.gw.store.tasks.get(task["id"])["status"] == "canceled"
    assert c.gw.store.accounts.get(c.fixtures["account_b"])["held"] == held - task["held"]


# -- CSRF ------------------------------------------------------------------------------------------

async def test_state_changing_requests_need_the_sessions_csrf_token(console) -> None:
    c = console
    admin = await c.as_role("admin")
    path = f"/console/accounts/{c.fixtures['account_a']}/top-up"
    missing = await admin.post(path, {"amount": "7"}, csrf=False)
    assert missing.status_code == 403 and "CSRF" in missing.text
    wrong = await admin.post(path, {"amount": "7", "csrf_token": "not-the-token"})
    assert wrong.status_code == 403
    # Another session's token does not do either.
    other = await c.as_role("admin")
    await other.get("/console/")
    stolen = await admin.post(path, {"amount": "7", "csrf_token": other.csrf})
    assert stolen.status_code == 403
    assert c.gw.store.accounts.get(c.fixtures["account_a"])["added"] == 100_000
    ok = await admin.post(path, {"amount": "7"})
    assert ok.status_code == 303
    # htmx sends it as a header.
    await admin.get("/console/")
    by_header = await admin.http.post(path, data={"amount": "3"}, headers={"X-CSRF-Token": admin.csrf})
    assert by_header.status_code == 303
    assert c.gw.store.accounts.get(c.fixtures["account_a"])["added"] == 100_010


async def test_sign_in_forms_need_their_token_too(sqlite_console) -> None:
    c = sqlite_console
    fresh = c.client()
    refused = await fresh.http.post("/console/login", data={"name": "admin", "password": c.passwords["admin"]})
    assert refused.status_code == 403 and "tidehub_console=" not in refused.headers.get("set-cookie", "")
    refused = await fresh.http.post("/console/login/key", data={"api_key": c.fixtures["key_a"],
                                                                "csrf_token": "made-up-by-another-site"})
    assert refused.status_code == 403


# -- sessions --------------------------------------------------------------------------------------

async def test_session_cookie_is_httponly_samesite_and_scoped(sqlite_console) -> None:
    c = sqlite_console
    client = c.client()
    response = await client.sign_in("admin", c.passwords["admin"])
    cookie = response.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Path=/console" in cookie
    assert "Secure" not in cookie  # plain http, and no https public URL
    token = client.http.cookies.get("tidehub_console")
    # The database holds only its hash.
    assert c.gw.store.sessions.resolve(hash_key(token)) is not None
    assert c.gw.store.sessions.resolve(token) is None


async def test_secure_cookie_when_the_public_url_is_https(tmp_path: Path) -> None:
    async with opened_console(console_settings(tmp_path, public_url="https://gateway.example.com")) as c:
        response = await c.client().sign_in("admin", c.passwords["admin"])
        assert "Secure" in response.headers["set-cookie"]
        page = await c.client().get("/console/login")
        assert "https://gateway.example.com" in page.headers["content-security-policy"]


async def test_sign_out_ends_the_session_on_the_server(console) -> None:
    c = console
    admin = await c.as_role("admin")
    token = admin.http.cookies.get("tidehub_console")
    assert (await admin.get("/console/keys")).status_code == 200
    out = await admin.post("/console/logout")
    assert out.status_code == 303 and out.headers["location"] == "/console/login"
    assert c.gw.store.sessions.resolve(hash_key(token)) is None
    # The old cookie, replayed, opens nothing.
    replay = c.client()
    replay.http.cookies.set("tidehub_console", token, path="/console")
    assert (await replay.get("/console/keys")).status_code == 303


async def test_sessions_end_with_a_revoked_key_or_a_disabled_operator(console) -> None:
    c = console
    customer = await c.as_role("customer")
    viewer = await c.as_role("viewer")
    assert (await customer.get("/console/account")).status_code == 200
    c.gw.keys.revoke(c.fixtures["key_a_id"])
    assert (await customer.get("/console/account")).status_code == 303
    refused = await c.client().sign_in_with_key(c.fixtures["key_a"])
    assert refused.status_code in (401, 403) and "tidehub_console=" not in refused.headers.get("set-cookie", "")
    assert (await viewer.get("/console/")).status_code == 200
    c.gw.operators.disable("viewer")
    assert (await viewer.get("/console/")).status_code == 303
    again = await c.client().sign_in("viewer", c.passwords["viewer"])
    assert again.status_code == 401 and "wrong name or password" in again.text


async def test_idle_sessions_expire(tmp_path: Path) -> None:
    async with opened_console(console_settings(tmp_path, console_idle_s=0.3)) as c:
        admin = await c.as_role("admin")
        assert (await admin.get("/console/")).status_code == 200
        deadline = time.monotonic() + 10
        while (await admin.get("/console/")).status_code == 200:
            assert time.monotonic() < deadline, "the idle session never expired"
            await asyncio.sleep(0.05)
        assert (await admin.get("/console/")).headers["location"].startswith("/console/login")


async def test_sign_in_attempts_are_throttled_per_address_and_per_name(sqlite_console) -> None:
    c = sqlite_console
    guesser = c.client("198.51.100.7")
    for _ in range(10):
        wrong = await guesser.sign_in("admin", "not-the-password")
        assert wrong.status_code == 401
        assert 'value="admin"' in wrong.text  # the name is kept, the password is not
    blocked = await guesser.sign_in("admin", c.passwords["admin"])
    assert blocked.status_code == 429 and "too many failed sign-ins" in blocked.text
    assert int(blocked.headers["Retry-After"]) > 0
    # The same address trying another name or a key is blocked too...
    assert (await guesser.sign_in("viewer", c.passwords["viewer"])).status_code == 429
    assert (await guesser.sign_in_with_key(c.fixtures["key_a"])).status_code == 429
    # ...and so is the name, from elsewhere; another name from elsewhere is not.
    assert (await c.client("203.0.113.9").sign_in("admin", c.passwords["admin"])).status_code == 429
    assert (await c.client("203.0.113.9").sign_in("viewer", c.passwords["viewer"])).status_code == 303


async def test_sign_in_mistakes_name_the_field(sqlite_console) -> None:
    c = sqlite_console
    client = c.client()
    empty = await client.sign_in("", "")
    assert empty.status_code == 422 and "enter your operator name" in empty.text
    key = await client.sign_in_with_key("sk-th-not-a-key")
    assert key.status_code == 401 and 'aria-invalid="true"' in key.text and "not valid" in key.text
    assert "sk-th-not-a-key" not in key.text  # a key typed in is never echoed back


# -- secrets shown once ------------------------------------------------------------------------------

async def test_a_new_keys_secret_is_shown_once(console) -> None:
    c = console
    admin = await c.as_role("admin")
    created = await admin.post("/console/keys", {"name": "shown-once", "credits": "1000", "spend_cap": "500",
                                                 "allowed_models": "nano-banana"})
    assert created.status_code == 201
    secret = re.search(r'id="secret-value" type="text" readonly value="(sk-th-[^"]+)"', created.text).group(1)
    assert "data-copy=\"secret-value\"" in created.text and created.headers["cache-control"] == "no-store"
    principal = await c.gw.auth.authenticate(f"Bearer {secret}")
    row = c.gw.store.keys.get(principal.key_id)
    assert row["name"] == "shown-once" and row["spend_cap"] == 500 and row["allowed_models"] == ["nano-banana"]
    for path in ("/console/keys", f"/console/keys/{principal.key_id}", f"/console/accounts/{principal.account_id}",
                 "/console/keys?format=json", "/console/audit", "/console/audit?format=json"):
        page = await admin.get(path)
        assert page.status_code == 200 and secret not in page.text, path
        assert hash_key(secret) not in page.text, path


async def test_a_batch_of_codes_is_shown_once_and_the_list_exports_without_them(console) -> None:
    c = console
    admin = await c.as_role("admin")
    made = await admin.post("/console/codes", {"credits": "250", "count": "3", "expires_at": "30d"})
    assert made.status_code == 201
    codes = re.findall(r"REDEEM-[A-Z0-9]{4}-[A-Z0-9]{4}-[A-Z0-9]{4}-[A-Z0-9]{4}", made.text)
    assert len(set(codes)) == 3
    listing = await admin.get("/console/codes")
    exported = await admin.get("/console/codes?format=csv")
    assert exported.headers["content-type"].startswith("text/csv")
    assert len(exported.text.strip().splitlines()) == 1 + 5  # header, and the fixture's two codes and these three
    for code in codes:
        assert code not in listing.text and code not in exported.text
    download = await admin.post("/console/codes", {"credits": "10", "count": "2", "download": "1"})
    assert download.headers["content-disposition"].startswith("attachment")
    rows = download.text.strip().splitlines()
    assert rows[0] == "code,credits,expires_at" and len(rows) == 3 and rows[1].startswith("REDEEM-")
    # Disabling a code: redeem refuses it from then on.
    principal = Principal(c.fixtures["key_a_id"], c.fixtures["account_a"])
    code_id = next(r["id"] for r in c.gw.store.codes.page(state="unused").rows
                   if r["prefix"] == codes[0][:11] and r["credits"] == 250)
    target = next(code for code in codes if code[:11] == codes[0][:11])
    disabled = await admin.post(f"/console/codes/{code_id}/disable")
    assert disabled.status_code == 303
    from tidehub.errors import BadRequest

    matching = [code for code in codes if hash_key(code).startswith(code_id)]
    assert len(matching) == 1
    with pytest.raises(BadRequest) as refused:
        await c.gw.accounts.redeem(principal, matching[0])
    assert refused.value.code == "code_disabled"
    assert target


async def test_secrets_are_never_rendered(console) -> None:
    c = console
    admin = await c.as_role("admin")
    stored = next(r for r in c.gw.store.channels.list() if r["id"] == c.fixtures["channel_id"])
    password_hash = c.gw.store.operators.by_name("admin", with_hash=True)["password_hash"]
    key_hash = hash_key(c.fixtures["key_a"])
    forbidden = [CREDENTIAL, stored["secret"], password_hash, key_hash, c.fixtures["key_a"], c.passwords["admin"]]
    # An edit that leaves the credential field empty keeps the stored one.
    saved = await admin.post(f"/console/channels/{c.fixtures['channel_id']}",
                             {"base_url": "https://queue2.example.com", "secret": "", "priority": "3"})
    assert saved.status_code == 303
    assert c.gw.channels.load()[0].secret == CREDENTIAL
    for path in await crawl(admin, c.fixtures):
        for fmt in ("", "format=json"):
            page = await admin.get(path + (("&" if "?" in path else "?") + fmt if fmt else ""))
            for secret in forbidden:
                assert secret not in page.text, (path, fmt)


# -- forms ---------------------------------------------------------------------------------------------

async def test_bad_form_input_names_the_field_and_keeps_the_form(console) -> None:
    c = console
    admin = await c.as_role("admin")
    cases = [
        ("/console/keys", {"name": "keep-me", "spend_cap": "lots"}, "spend_cap", "whole number"),
        ("/console/keys", {"name": "keep-me", "allowed_models": "no-such-model"}, "allowed_models", "unknown model"),
        ("/console/keys", {"name": "keep-me", "allowed_ips": "999.1.1.1"}, "allowed_ips", "allowed_ips"),
        ("/console/keys", {"name": "keep-me", "expires_at": "next tuesday"}, "expires_at", "a date"),
        ("/console/keys", {"name": "keep-me", "account_id": "acct_missing"}, "account_id", "no account"),
        (f"/console/accounts/{c.fixtures['account_a']}/top-up", {"amount": "-5", "note": "keep-me"}, "amount",
         "at least 1"),
        ("/console/codes", {"credits": "keep-me", "count": "2"}, "credits", "whole number"),
        ("/console/codes", {"credits": "5", "count": "0", "expires_at": "keep-me"}, "count", "at least 1"),
        ("/console/channels", {"name": "keep-me", "adapter": "fal", "base_url": "ftp://x"}, "base_url", "http"),
        ("/console/channels", {"name": "keep-me", "adapter": "fal", "base_url": "https://x.example.com",
                               "models": "no/such/endpoint"}, "models", "no catalog endpoint"),
        ("/console/channels", {"name": "keep-me", "adapter": "nonsense", "base_url": "https://x.example.com"},
         "adapter", "must be one of"),
        (f"/console/channels/{c.fixtures['channel_id']}", {"base_url": "https://keep-me.example.com",
                                                          "weight": "0"}, "weight", "at least 1"),
        (f"/console/keys/{c.fixtures['key_a_id']}", {"spend_cap": "-1", "allowed_models": "keep-me"}, "spend_cap",
         "at least 0"),
    ]
    for path, form, field_name, message in cases:
        response = await admin.post(path, form)
        assert response.status_code in (400, 422), (path, form, response.status_code)
        assert f'id="e-{field_name}"' in response.text, (path, field_name, response.text[:2000])
        assert message in response.text, (path, message)
        assert "keep-me" in response.text, (path, "the form kept its values")
    assert len(c.gw.store.keys.page().rows) == 2  # nothing was created


async def test_nonsense_never_gets_a_500(console) -> None:
    c = console
    admin = await c.as_role("admin")
    probes = ["/console/tasks?after=garbage&window=forever&status=nope", "/console/tasks/%00",
              "/console/keys?after=1e400~x", "/console/accounts?q=%25_%5C", "/console/models/no/such/model",
              "/console/codes?state=whatever&after=~", "/console/audit?window=x&after=abc~1", "/console/nothing-here"]
    for path in probes:
        response = await admin.get(path)
        assert response.status_code in (200, 400, 404), (path, response.status_code)
    assert (await admin.post("/console/keys", {"name": "nul\x00byte"})).status_code == 422
    assert (await admin.post("/console/codes/not-hex/disable")).status_code == 422
    assert (await admin.post("/console/keys/key_missing/revoke")).status_code == 404
    assert (await admin.post("/console/webhooks/msg_missing/redeliver")).status_code == 404
    assert (await admin.get("/console/tasks/missing", headers={"Accept": "application/json"})).json()["error"][
        "code"] == "not_found"


# -- operator actions, audited -----------------------------------------------------------------------------

async def test_operator_actions_work_and_are_audited(console) -> None:
    c = console
    admin = await c.as_role("admin")
    f = c.fixtures
    assert (await admin.post(f"/console/accounts/{f['account_a']}/top-up", {"amount": "1234", "note": "invoice 9"})
            ).status_code == 303
    ledger = c.gw.store.accounts.ledger(f["account_a"])
    assert ledger[-1]["amount"] == 1234 and ledger[-1]["note"] == "invoice 9"
    assert (await admin.post(f"/console/keys/{f['key_b_id']}", {"spend_cap": "900", "allowed_ips": "10.0.0.0/8",
                                                               "expires_at": "2099-01-01"})).status_code == 303
    key = c.gw.store.keys.get(f["key_b_id"])
    assert key["spend_cap"] == 900 and key["allowed_ips"] == ["10.0.0.0/8"] and key["expires_at"] > time.time()
    assert (await admin.post(f"/console/keys/{f['key_b_id']}/revoke")).status_code == 303
    assert c.gw.store.keys.get(f["key_b_id"])["revoked_at"] is not None
    assert (await admin.post("/console/channels", {"name": "two", "adapter": "openai", "secret": "abc",
                                                   "base_url": "https://api.example.com/v1", "priority": "4"})
            ).status_code == 303
    two = next(ch for ch in c.gw.router.channels.values() if ch.name == "two")  # the router has it at once
    assert two.priority == 4 and two.secret == "abc"
    assert (await admin.post(f"/console/channels/{two.id}/disable")).status_code == 303
    assert c.gw.router.channels[two.id].enabled is False
    assert (await admin.post(f"/console/channels/{two.id}/enable")).status_code == 303
    assert (await admin.post(f"/console/webhooks/{f['delivery_id']}/redeliver")).status_code == 303
    assert (await admin.post(f"/console/tasks/{f['task_b']}/cancel")).status_code == 303
    task = c.gw.store.tasks.get(f["task_b"])
    assert task["status"] == "canceled" and task["error_message"] == "cancelled by an operator"
    assert (await admin.post("/console/codes", {"credits": "5", "count": "1"})).status_code == 201

    entries = (await admin.get("/console/audit?format=json")).json()["entries"]
    actions = [(e["action"], e["target"]) for e in entries]
    for expected in [("credits.add", f["account_a"]), ("key.update", f["key_b_id"]), ("key.revoke", f["key_b_id"]),
                     ("channel.create", "two"), ("channel.disable", "two"), ("channel.enable", "two"),
                     ("webhook.redeliver", f["delivery_id"]), ("task.cancel", f["task_b"])]:
        assert expected in actions, expected
    assert any(a == "codes.create" for a, _ in actions)
    assert {e["actor"] for e in entries} == {"operator:admin"}
    assert {e["address"] for e in entries} == {"127.0.0.1"}
    assert all(CREDENTIAL not in str(e["details"]) and "abc" not in str((e["details"] or {}).get("credential", ""))
               for e in entries)
    only_keys = (await admin.get("/console/audit?format=json&action=key")).json()["entries"]
    assert {e["action"] for e in only_keys} == {"key.update", "key.revoke"}


async def test_channel_list_shows_health_and_never_the_credential(console) -> None:
    c = console
    admin = await c.as_role("admin")
    data = (await admin.get("/console/channels", headers={"Accept": "application/json"})).json()
    row = next(ch for ch in data["channels"] if ch["id"] == c.fixtures["channel_id"])
    assert row["has_credential"] is True and "secret" not in row
    assert set(row["health"]) >= {"state", "in_flight", "latency_ms"}
    assert c.fixtures["slug"] in row["serves"]


async def test_lists_page_by_key(console) -> None:
    c = console
    for n in range(7):
        c.gw.keys.create(name=f"paged-{n}")
    admin = await c.as_role("admin")
    seen: list[str] = []
    after = None
    while True:
        page = (await admin.get("/console/keys", params={"format": "json", **({"after": after} if after else {})})
                ).json()
        seen.extend(k["id"] for k in page["keys"])
        after = page["next"]
        if after is None:
            break
        assert len(page["keys"]) == 50 or after is None
    assert len(seen) == len(set(seen)) == 9
    small = c.gw.store.keys.page(limit=4)
    second = c.gw.store.keys.page(limit=4, after=small.next)
    assert not {k["id"] for k in small.rows} & {k["id"] for k in second.rows}


async def test_models_page_shows_schema_price_and_channels(sqlite_console) -> None:
    c = sqlite_console
    admin = await c.as_role("admin")
    page = await admin.get(f"/console/models/{c.fixtures['slug']}")
    assert page.status_code == 200 and "<code>prompt</code>" in page.text and "upstream-one" in page.text
    data = (await admin.get("/console/models?format=json")).json()
    entry = next(m for m in data["models"] if m["endpoint"] == c.fixtures["slug"])
    assert entry["example_price"] > 0 and any(ch["name"] == "upstream-one" for ch in entry["channels"])


async def test_dashboard_and_usage_answer_in_html_json_and_csv(console) -> None:
    c = console
    admin = await c.as_role("admin")
    dashboard = await admin.get("/console/?format=json")
    body = dashboard.json()
    assert body["summary"]["task"]["total"] == 2 and body["summary"]["task"]["by_status"] == {"queued": 1,
                                                                                             "canceled": 1}
    assert len(body["series"]["labels"]) >= 24
    html = await admin.get("/console/")
    assert 'data-chart="outcomes"' in html.text and 'id="chart-data"' in html.text
    usage = await admin.get("/console/usage?group_by=account&format=csv")
    lines = usage.text.strip().splitlines()
    # Usage is what settled (the rollups): the cancelled task's account, not yet the queued one's.
    assert lines[0] == "account,tasks,succeeded,credits" and len(lines) == 2 and lines[1].endswith(",1,0,0")


# -- every page: headers, no inline script or style -------------------------------------------------------

async def crawl(client: ConsoleClient, fixtures: dict[str, str]) -> list[str]:
    """The pages a signed-in client can reach by following links from its home page."""
    seen: set[str] = set()
    queue = ["/console/", f"/console/tasks/{fixtures['task_a']}", f"/console/keys/{fixtures['key_a_id']}",
             f"/console/channels/{fixtures['channel_id']}"]
    while queue and len(seen) < 80:
        path = queue.pop(0)
        if path in seen:
            continue
        seen.add(path)
        response = await client.get(path)
        if not response.headers.get("content-type", "").startswith("text/html"):
            continue
        for link in re.findall(r'href="(/console/[^"#]*)"', response.text):
            link = link.replace("&amp;", "&")
            if "/static/" not in link and "format=" not in link and link not in seen:
                queue.append(link)
    return sorted(seen)


INLINE_SCRIPT = re.compile(r"<script(?![^>]*\bsrc=)(?![^>]*type=\"application/json\")[^>]*>", re.I)


async def test_every_page_has_the_security_headers_and_no_inline_script_or_style(console) -> None:
    c = console
    pages = 0
    for role in ("anonymous", "admin", "viewer", "customer"):
        client = await c.as_role(role)
        paths = ["/console/login"] if role == "anonymous" else await crawl(client, c.fixtures)
        if role == "admin":
            paths += ["/console/nothing-here"]
        for path in paths:
            response = await client.get(path)
            csp = response.headers["content-security-policy"]
            assert "default-src 'self'" in csp and "script-src 'self';" in csp and "style-src 'self';" in csp
            assert "frame-ancestors 'none'" in csp and "form-action 'self'" in csp and "unsafe" not in csp
            assert response.headers["x-frame-options"] == "DENY"
            assert response.headers["x-content-type-options"] == "nosniff"
            assert response.headers["referrer-policy"]
            text = response.text
            assert not INLINE_SCRIPT.search(text), (role, path, INLINE_SCRIPT.search(text))
            assert not re.search(r"\sstyle=", text, re.I), (role, path)
            assert "<style" not in text.lower(), (role, path)
            assert not re.search(r"\son[a-z]+=", text, re.I), (role, path)  # no inline event handlers
            assert '"includeIndicatorStyles": false' in text or not text.startswith("<!doctype")
            pages += 1
    assert pages > 25
    static = await c.client().get("/console/static/console.css")
    assert static.status_code == 200 and "content-security-policy" in static.headers


async def test_every_form_field_has_a_label(console) -> None:
    c = console
    admin = await c.as_role("admin")
    for path in await crawl(admin, c.fixtures):
        text = (await admin.get(path)).text
        labelled = set(re.findall(r'<label for="([^"]+)"', text))
        for tag in re.finditer(r"<(input|select|textarea)\b([^>]*)>", text):
            attrs = tag.group(2)
            if re.search(r'type="(hidden|submit)"', attrs):
                continue
            found = re.search(r'\bid="([^"]+)"', attrs)
            assert found and found.group(1) in labelled, (path, tag.group(0))
