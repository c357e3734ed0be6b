"""Signing in (operators with a name and password, customers with an API key) and out."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from tidehub.console.forms import client_address
from tidehub.console.security import (
    PATH, SIGNED_IN, check_login_csrf, clear_session_cookie, page, safe_next, set_login_cookie, set_session_cookie)
from tidehub.errors import TidehubError

if TYPE_CHECKING:
    from tidehub.console.app import Console


def routes(c: "Console") -> list[BaseRoute]:
    settings = c.gw.settings

    def form_page(request: Request, *, errors: dict[str, str] | None = None, values: dict[str, Any] | None = None,
                  status: int = 200, headers: dict[str, str] | None = None) -> Response:
        response = c.render.html(request, "login.html", {
            "next": safe_next(request.query_params.get("next") or (values or {}).get("next")),
            "errors": errors or {}, "values": values or {}}, status, headers)
        set_login_cookie(response, request, settings.public_url)
        return response

    async def login_form(request: Request) -> Response:
        if request.state.session is not None:
            return RedirectResponse(safe_next(request.query_params.get("next")), status_code=303)
        return form_page(request)

    async def signed_in(request: Request, kind: str) -> Response:
        await check_login_csrf(request)
        form = await request.form()
        address = client_address(request)
        values = {"next": str(form.get("next") or ""), "name": str(form.get("name") or "")[:100], "kind": kind}
        try:
            if kind == "operator":
                name, password = str(form.get("name") or ""), str(form.get("password") or "")
                if not name.strip():
                    return form_page(request, errors={"name": "enter your operator name"}, values=values, status=422)
                if not password:
                    return form_page(request, errors={"password": "enter your password"}, values=values, status=422)
                token, session = await c.gw.sessions.sign_in_operator(name, password, address)
            else:
                secret = str(form.get("api_key") or "")
                if not secret.strip():
                    return form_page(request, errors={"api_key": "paste one of your account's API keys"},
                                     values=values, status=422)
                token, session = await c.gw.sessions.sign_in_customer(secret, address)
        except TidehubError as exc:
            field = exc.field or ("name" if kind == "operator" else "api_key")
            retry = exc.details.get("retry_after")
            return form_page(request, errors={field: exc.message}, values=values, status=exc.status,
                             headers={"Retry-After": str(retry)} if retry else None)
        if request.state.session is not None:
            await c.gw.sessions.end(request.state.session)  # signing in again replaces the old session
        response = RedirectResponse(safe_next(values["next"]), status_code=303)
        set_session_cookie(response, token, request, settings.public_url, settings.console_session_s)
        return response

    async def login_operator(request: Request) -> Response:
        return await signed_in(request, "operator")

    async def login_customer(request: Request) -> Response:
        return await signed_in(request, "customer")

    async def logout(request: Request) -> Response:
        await c.gw.sessions.end(request.state.session)
        response = RedirectResponse(f"{PATH}/login", status_code=303)
        clear_session_cookie(response, request, settings.public_url)
        return response

    return [
        Route("/login", login_form, methods=["GET"]),
        Route("/login", login_operator, methods=["POST"]),
        Route("/login/key", login_customer, methods=["POST"]),
        page("/logout", logout, roles=SIGNED_IN, methods=["POST"], viewer_may_post=True),
    ]


#: The routes any visitor may open without a session (the tests check this list is all there is).
PUBLIC_PATHS = ("/login", "/login/key")
