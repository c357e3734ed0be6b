"""A browser-like client for the console over HTTP: keeps cookies, signs in, reads the CSRF token
from the pages it gets, and posts forms with it; and a gateway with the console to use it on,
signed in as each role."""

from __future__ import annotations

import re
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator

import httpx

from tidehub.app import create_app
from tidehub.config import Settings
from tidehub.core.auth import Principal
from tidehub.gateway import Gateway

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


class ConsoleClient:
    def __init__(self, client: httpx.AsyncClient) -> None:
        self.http = client
        self.csrf: str | None = None

    async def get(self, path: str, **kwargs: Any) -> httpx.Response:
        response = await self.http.get(path, **kwargs)
        self._remember(response)
        return response

    async def post(self, path: str, data: dict[str, Any] | None = None, *, csrf: bool = True,
                   **kwargs: Any) -> httpx.Response:
        form = dict(data or {})
        if csrf:
            if self.csrf is None:
                await self.get("/console/", follow_redirects=True)
            form.setdefault("csrf_token", self.csrf)
        response = await self.http.post(path, data=form, **kwargs)
        self._remember(response)
        return response

    def _remember(self, response: httpx.Response) -> None:
        if response.headers.get("content-type", "").startswith("text/html"):
            found = CSRF.search(response.text)
            if found:
                self.csrf = found.group(1)

    async def sign_in(self, name: str, password: str) -> httpx.Response:
        await self.get("/console/login")
        response = await self.post("/console/login", {"name": name, "password": password})
        self.csrf = None  # the session's token replaces the sign-in form's
        return response

    async def sign_in_with_key(self, secret: str) -> httpx.Response:
        await self.get("/console/login")
        response = await self.post("/console/login/key", {"api_key": secret})
        self.csrf = None
        return response

    async def aclose(self) -> None:
        await self.http.aclose()


CREDENTIAL = "sk-upstream-credential-never-shown"


@dataclass
class Console:
    gw: Gateway
    app: Any
    passwords: dict[str, str]
    fixtures: dict[str, str] = field(default_factory=dict)
    clients: list[ConsoleClient] = field(default_factory=list)

    def client(self, address: str = "127.0.0.1") -> ConsoleClient:
        transport = httpx.ASGITransport(self.app, client=(address, 40000))
        c = ConsoleClient(httpx.AsyncClient(transport=transport, base_url="http://testserver"))
        self.clients.append(c)
        return c

    async def as_role(self, role: str, address: str = "127.0.0.1") -> ConsoleClient:
        c = self.client(address)
        if role == "anonymous":
            return c
        if role in ("customer", "other_customer"):
            response = await c.sign_in_with_key(self.fixtures["key_a" if role == "customer" else "key_b"])
        else:
            response = await c.sign_in(role, self.passwords[role])
        assert response.status_code == 303, response.text
        return c


def console_settings(tmp_path: Path, database_url: str = "", **extra: Any) -> Settings:
    return Settings(data_dir=tmp_path / "data", database_url=database_url, engine_enabled=False,
                    secret_key="console-test-secret", ssrf_allow="127.0.0.1", **extra)


@asynccontextmanager
async def opened_console(settings: Settings) -> AsyncIterator[Console]:
    """A gateway with the console, its operators and fixtures (see open_console), closed after."""
    c = await open_console(settings)
    try:
        yield c
    finally:
        for client in c.clients:
            await client.aclose()
        await c.gw.close()


async def open_console(settings: Settings) -> Console:
    """A gateway with the console: an admin and a viewer, two customer accounts with a task each,
    a channel with a credential, a code batch and a webhook delivery (their ids in ``fixtures``)."""
    gw = Gateway.open(settings)
    passwords = {}
    for role in ("admin", "viewer"):
        _, passwords[role] = gw.operators.create(role, role)
    c = Console(gw, create_app(settings, gw), passwords)
    # Two customer accounts, a task each, a channel with a credential, a code batch, a delivery.
    a = gw.keys.create(name="alpha", credits=100_000)
    b = gw.keys.create(name="beta", credits=100_000)
    endpoint = gw.catalog.endpoint("google/nano-banana/text-to-image")
    task_a = await gw.tasks.submit(Principal(a.key_id, a.account_id), endpoint, {"prompt": "a"}, id_prefix="hub",
                                   webhook_url="http://127.0.0.1:9/hook", user_identifier="user-a")
    task_b = await gw.tasks.submit(Principal(b.key_id, b.account_id), endpoint, {"prompt": "b"}, id_prefix="hub")
    channel_id = gw.channels.add("upstream-one", adapter="fal", base_url="https://queue.example.com",
                                 secret=CREDENTIAL)
    gw.router.reload()
    from tidehub.core.accounts import create_codes

    create_codes(gw.store, 500, 2)
    code_id = gw.store.codes.page().rows[0]["id"]
    # A delivery as the outbox writes it when a task ends.
    await gw.tasks.cancel(Principal(a.key_id, a.account_id), task_a["id"])
    delivery_id = gw.store.webhooks.page().rows[0]["id"]
    c.fixtures.update(key_a=a.secret, key_b=b.secret, key_a_id=a.key_id, key_b_id=b.key_id, account_a=a.account_id,
                      account_b=b.account_id, task_a=task_a["id"], task_b=task_b["id"], channel_id=channel_id,
                      code_id=code_id, delivery_id=delivery_id, slug=endpoint.slug)
    return c
