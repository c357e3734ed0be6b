"""What guards every console route: the session cookie, the role check, the CSRF check, and the
security headers on every response (a strict Content-Security-Policy: no inline script or style)."""

from __future__ import annotations

import hmac
import secrets
from typing import Any, Awaitable, Callable, Iterable
from urllib.parse import quote, urlsplit

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tidehub.core.sessions import Session
from tidehub.errors import BadRequest, Forbidden

COOKIE = "tidehub_console"
# Before sign-in there is no session to bind a CSRF token to: the sign-in forms carry a token that
# must equal this cookie's (double submit).
LOGIN_COOKIE = "tidehub_console_login"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
PATH = "/console"

ADMIN = frozenset({"admin"})
OPERATORS = frozenset({"admin", "viewer"})
CUSTOMER = frozenset({"customer"})
SIGNED_IN = OPERATORS | CUSTOMER

Endpoint = Callable[[Request], Awaitable[Response]]


class CSRFRefused(Forbidden):
    code = "csrf_refused"


class SecurityHeaders:
    """Adds the console's security headers to every response it sends, pages, errors and files alike."""

    def __init__(self, app: ASGIApp, files_origin: str | None = None) -> None:
        self.app = app
        extra = f" {files_origin}" if files_origin else ""
        self.headers = [
            (b"content-security-policy",
             (f"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:{extra}; "
              f"media-src 'self'{extra}; connect-src 'self'; object-src 'none'; base-uri 'none'; "
              f"frame-ancestors 'none'; form-action 'self'").encode()),
            (b"x-frame-options", b"DENY"),
            (b"referrer-policy", b"same-origin"),
            (b"x-content-type-options", b"nosniff"),
            (b"cross-origin-opener-policy", b"same-origin"),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {name for name, _ in message.get("headers", [])}
                message = {**message, "headers": [*message.get("headers", []),
                                                  *(h for h in self.headers if h[0] not in names)]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def files_origin(base_url: str) -> str | None:
    parts = urlsplit(base_url)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else None


def is_https(request: Request, public_url: str) -> bool:
    return request.url.scheme == "https" or public_url.startswith("https://")


def set_session_cookie(response: Response, token: str, request: Request, public_url: str, max_age: float) -> None:
    response.set_cookie(COOKIE, token, max_age=int(max_age), path=PATH, httponly=True, samesite="lax",
                        secure=is_https(request, public_url))


def clear_session_cookie(response: Response, request: Request, public_url: str) -> None:
    response.delete_cookie(COOKIE, path=PATH, httponly=True, samesite="lax", secure=is_https(request, public_url))


def login_token(request: Request) -> str:
    """The sign-in forms' CSRF token: the one in the browser's cookie, or a new one (which the
    response then sets; see ``set_login_cookie``)."""
    token = request.cookies.get(LOGIN_COOKIE) or ""
    if len(token) < 20:
        token = request.state.__dict__.setdefault("new_login_token", secrets.token_urlsafe(24))
    return token


def set_login_cookie(response: Response, request: Request, public_url: str) -> None:
    new = request.state.__dict__.get("new_login_token")
    if new:
        response.set_cookie(LOGIN_COOKIE, new, max_age=3600, path=PATH, httponly=True, samesite="strict",
                            secure=is_https(request, public_url))


async def check_login_csrf(request: Request) -> None:
    form = await request.form()
    given = str(form.get(CSRF_FIELD) or "")
    expected = request.cookies.get(LOGIN_COOKIE) or ""
    if not expected or not hmac.compare_digest(given.encode(), expected.encode()):
        raise CSRFRefused("the sign-in form expired or came from another site; reload the page and try again")


async def check_csrf(request: Request, session: Session) -> None:
    """A state-changing request must carry the session's token: a form field, or (htmx) a header."""
    given = request.headers.get(CSRF_HEADER)
    if given is None:
        content_type = request.headers.get("content-type", "")
        if content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
            given = str((await request.form()).get(CSRF_FIELD) or "")
    if not given or not hmac.compare_digest(given.encode(), session.csrf_token.encode()):
        raise CSRFRefused("this request did not carry the page's security token (CSRF); reload the page and "
                          "try again")


def page(path: str, endpoint: Endpoint, *, roles: Iterable[str], methods: Iterable[str] = ("GET",),
         name: str | None = None, viewer_may_post: bool = False) -> Route:
    """A console route open to ``roles`` (every route declares them: there is no default). Anonymous
    visitors are sent to sign in; a signed-in role not listed gets 403; any POST needs the CSRF
    token, and a viewer's POST is refused whatever the route says (but for signing out:
    ``viewer_may_post``)."""
    allowed = frozenset(roles)
    unknown = allowed - SIGNED_IN
    if not allowed or unknown:
        raise ValueError(f"{path}: roles must be a non-empty subset of {sorted(SIGNED_IN)}")

    async def guarded(request: Request) -> Response:
        if "\x00" in request.url.path or "\x00" in str(request.query_params):
            # PostgreSQL refuses NUL in text; no id or filter ever holds one.
            raise BadRequest("the address contains a NUL character", field="path")
        session: Session | None = request.state.session
        if session is None:
            return sign_in_redirect(request)
        if session.role not in allowed:
            raise Forbidden("your role may not open this page", code="role_refused")
        if request.method == "POST":
            if session.role == "viewer" and not viewer_may_post:
                raise Forbidden("viewers see everything and change nothing", code="read_only")
            await check_csrf(request, session)
        return await endpoint(request)

    route = Route(path, guarded, methods=list(methods), name=name)
    route.roles = allowed  # type: ignore[attr-defined]  # read by the tests that walk every route
    return route


def sign_in_redirect(request: Request) -> Response:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    location = f"{PATH}/login?next={quote(target, safe='/')}"
    if request.headers.get("hx-request"):
        # htmx follows this header with a full page load, not a swap of the sign-in page into a fragment.
        return Response(status_code=401, headers={"HX-Redirect": location})
    return RedirectResponse(location, status_code=303)


def safe_next(value: Any) -> str:
    """Where to go after signing in: a path inside the console only (never another site)."""
    if isinstance(value, str) and value.startswith(PATH) and not value.startswith("//") and "\\" not in value:
        return value
    return PATH
