"""Rendering a console page: HTML from a Jinja2 template, or the same data as JSON when asked
(``Accept: application/json`` or ``?format=json``), or CSV where a list offers it."""

from __future__ import annotations

import csv
import io
import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping
from urllib.parse import urlencode

import orjson
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from tidehub.console.security import CSRF_FIELD, login_token

TEMPLATES = Path(__file__).parent / "templates"


def when(ts: float | None, empty: str = "") -> str:
    if ts is None:
        return empty
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def ago(ts: float | None) -> str:
    if ts is None:
        return ""
    delta = time.time() - ts
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if abs(delta) >= size:
            return f"{int(delta // size)} {unit} ago" if delta > 0 else f"in {int(-delta // size)} {unit}"
    return "just now" if delta >= 0 else "in a moment"


def credits(value: int | None) -> str:
    return "" if value is None else f"{value:,}"


def seconds(value: float | None) -> str:
    if value is None:
        return "–"
    if value < 0.01:
        return f"{value * 1000:.1f} ms"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.1f} s"


def pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False, default=str)


def json_data(value: Any) -> Markup:
    """JSON for a ``<script type="application/json">`` block: nothing in it can close the tag."""
    raw = orjson.dumps(value, default=str).decode()
    return Markup(raw.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"))


def make_environment() -> Environment:
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html"]),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters.update(when=when, ago=ago, credits=credits, pretty_json=pretty_json, iso=iso, json_data=json_data, seconds=seconds)
    return env


def wants_json(request: Request) -> bool:
    if request.query_params.get("format") == "json":
        return True
    accept = request.headers.get("accept", "")
    return accept.startswith("application/json")


def json_response(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data, default=str, option=orjson.OPT_NON_STR_KEYS), status_code=status,
                    media_type="application/json", headers=dict(headers or {}))


def csv_response(filename: str, header: list[str], rows: Iterable[Iterable[Any]]) -> Response:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    for row in rows:
        # A cell starting with = + - @ would run as a formula in a spreadsheet: quote it as text.
        writer.writerow(["'" + c if isinstance(c, str) and c[:1] in ("=", "+", "-", "@") else c for c in row])
    return Response(out.getvalue(), media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="{filename}"', "Cache-Control": "no-store"})


class Renderer:
    def __init__(self, env: Environment, settings: Any) -> None:
        self.env = env
        self.settings = settings

    def html(self, request: Request, template: str, context: Mapping[str, Any], status: int = 200,
             headers: Mapping[str, str] | None = None) -> HTMLResponse:
        session = request.state.session
        base = {
            "request": request,
            "session": session,
            "csrf_field": CSRF_FIELD,
            "csrf": session.csrf_token if session is not None else login_token(request),
            "path": request.url.path,
            "now": time.time(),
            "files_url": self.settings.base_url,
            "query": lambda **changes: _query(request, changes),
            "hidden_csrf": Markup(f'<input type="hidden" name="{CSRF_FIELD}" value="'
                                  f'{session.csrf_token if session is not None else login_token(request)}">'),
        }
        body = self.env.get_template(template).render({**base, **context})
        # Pages show account data, and a creation dialog a secret: never kept by a cache.
        return HTMLResponse(body, status_code=status, headers={"Cache-Control": "no-store", **(headers or {})})

    def page(self, request: Request, template: str, data: Mapping[str, Any], status: int = 200, *,
             extra: Mapping[str, Any] | None = None, headers: Mapping[str, str] | None = None) -> Response:
        """``data`` is what the page shows (its JSON form); ``extra`` only what the HTML needs
        beside it (form values and errors, choices for a select)."""
        if wants_json(request):
            return json_response(data, status, {"Cache-Control": "no-store", **(headers or {})})
        return self.html(request, template, {**data, **(extra or {})}, status, headers)


def _query(request: Request, changes: dict[str, Any]) -> str:
    """The current query string with ``changes`` (None removes a parameter)."""
    params = dict(request.query_params)
    for key, value in changes.items():
        if value is None or value == "":
            params.pop(key, None)
        else:
            params[key] = str(value)
    return "?" + urlencode(params) if params else "?"
