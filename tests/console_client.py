"""A browser-like client for the console over HTTP: keeps cookies, signs in, reads the CSRF token
from the pages it gets, and posts forms with it."""

from __future__ import annotations

import re
from typing import Any

import httpx

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
