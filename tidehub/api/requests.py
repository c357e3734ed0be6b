"""Reading client requests: the JSON body, within limits, with errors a person can act on."""

from __future__ import annotations

from typing import Any, AsyncIterator
from urllib.parse import urlsplit

import orjson
from starlette.requests import ClientDisconnect, Request

from tidehub.core.auth import Authenticator, Principal
from tidehub.errors import BadRequest, InvalidInput, PayloadTooLarge, UnsupportedMediaType, quoted

#: Arrays and objects nested deeper than this are refused at parse time: no real request comes
#: close, and deeper values break what handles them later (deep copies, orjson's own limit of 254
#: when a task is hashed or stored).
MAX_JSON_DEPTH = 64


def client_address(request: Request) -> str | None:
    client = request.scope.get("client")  # (host, port), as request.client reads it
    return client[0] if client else None


def header(request: Request, name: bytes) -> str | None:
    """A request header (``name`` in lower case), its first occurrence as ``request.headers.get``
    gives it, from a map of them made once per request: a submit asks for four, and each
    ``Headers.get`` scans the whole list."""
    scope = request.scope
    found = scope.get(_HEADERS)
    if found is None:
        found = scope[_HEADERS] = dict(reversed(scope["headers"]))  # reversed: the first one wins
    value = found.get(name)
    return None if value is None else value.decode("latin-1")


_HEADERS = "tidehub.headers"


def media_type(request: Request) -> str:
    """The Content-Type without its parameters, in lower case ("" for none)."""
    return (header(request, b"content-type") or "").split(";", 1)[0].strip().lower()


async def authenticate(auth: Authenticator, request: Request) -> Principal:
    return await auth.authenticate(header(request, b"authorization"), client_address(request))


async def capped_body(request: Request, limit: int) -> AsyncIterator[bytes]:
    """The body's chunks as they arrive, refused (413) as soon as they pass ``limit`` bytes, so a
    body announced or streamed too large is never read whole. Whether the body had ended when it
    was refused is left in the scope for the 413's answer (``body_ended``)."""
    declared = header(request, b"content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the request body exceeds {limit} bytes")
    size = 0
    more = True
    while more:
        message = await request.receive()
        if message["type"] != "http.request":  # the client left
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        more = message.get("more_body", False)
        size += len(chunk)
        if size > limit:
            request.scope[_BODY_ENDED] = not more
            raise PayloadTooLarge(f"the request body exceeds {limit} bytes")
        if chunk:
            yield chunk


_BODY_ENDED = "tidehub.body_ended"


def body_ended(request: Request) -> bool:
    """Whether a refused body was read to its end already (see :func:`capped_body`)."""
    return bool(request.scope.get(_BODY_ENDED))


async def read_json_object(request: Request, limit: int) -> dict[str, Any]:
    sent = media_type(request)
    if sent != "application/json":
        raise UnsupportedMediaType(
            f"expected 'Content-Type: application/json', got {quoted(sent or 'none')}",
            field="Content-Type",
        )
    raw = b"".join([chunk async for chunk in capped_body(request, limit)])
    if not raw.strip():
        raise BadRequest("the request body is empty; send a JSON object", field="body")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc}", field="body") from None
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object", field="body")
    if nested_deeper(raw, body, MAX_JSON_DEPTH):
        raise BadRequest(f"the request body nests arrays and objects more than {MAX_JSON_DEPTH} levels deep",
                         code="too_deep", field="body")
    if b"\\u0000" in raw:  # the only way JSON spells NUL; scanning the bytes costs nothing otherwise
        field = nul_field(body)
        if field is not None:
            raise InvalidInput(f"{field}: contains a NUL character (U+0000), which no field may hold", field=field)
    return body


def nul_field(value: Any, path: str = "") -> str | None:
    """The path of the first key or string in ``value`` holding a NUL character.

    PostgreSQL's text columns cannot store NUL, and no identifier, label or prompt needs one, so
    a request carrying one is refused as a client mistake rather than failing where it is stored.
    """
    if isinstance(value, str):
        return (path or "body") if "\x00" in value else None
    if isinstance(value, dict):
        for key, child in value.items():
            where = f"{path}.{key}" if path else str(key)
            if "\x00" in key:
                return where
            found = nul_field(child, where)
            if found is not None:
                return found
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found = nul_field(child, f"{path}[{index}]")
            if found is not None:
                return found
    return None


# Brackets (both kinds as one) and quotes: what the depth bound below reads of a body.
_AS_PARENS = bytes.maketrans(b"[{]}", b"(())")
_NOT_MARKS = bytes(b for b in range(256) if b not in b'[]{}"')


def nested_deeper(raw: bytes, value: Any, levels: int) -> bool:
    """Whether ``value`` (parsed from ``raw``) nests arrays and objects more than ``levels`` deep.

    First a bound from the raw bytes, in C: the depth is at most the number of opening brackets
    minus the closings directly followed by an opening (``},{``: the next one reuses the level).
    Brackets inside strings only raise the bound (a quote always separates a string's brackets
    from the body's), so a body within the bound is let through without looking further; a chat
    history of any length is. Only past it is the parsed value walked, stopping at the limit.
    """
    marks = raw.translate(_AS_PARENS, _NOT_MARKS)
    if marks.count(b"(") - marks.count(b")(") <= levels:
        return False
    return _walk_deeper(value, levels)


def _walk_deeper(value: Any, levels: int) -> bool:
    if isinstance(value, dict):
        children: Any = value.values()
    elif isinstance(value, list):
        children = value
    else:
        return False
    if levels == 0:
        return True
    for child in children:
        if isinstance(child, (dict, list)) and _walk_deeper(child, levels - 1):
            return True
    return False


def required(body: dict[str, Any], name: str, kind: type, what: str) -> Any:
    value = body.get(name)
    if value is None:
        raise InvalidInput(f"{name}: is required", field=name)
    if not isinstance(value, kind):
        raise InvalidInput(f"{name}: must be {what}", field=name)
    return value


def optional_url(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    parts = urlsplit(value) if isinstance(value, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
        raise InvalidInput(f"{name}: must be an http or https URL", field=name)
    return value


def optional_label(body: dict[str, Any], name: str, max_length: int = 200) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > max_length:
        raise InvalidInput(f"{name}: must be a non-empty string of at most {max_length} characters", field=name)
    return value


def idempotency_key(request: Request) -> str | None:
    value = header(request, b"idempotency-key")
    if value is None:
        return None
    value = value.strip()
    if not value or len(value) > 200:
        raise InvalidInput("Idempotency-Key: must be 1 to 200 characters", field="Idempotency-Key")
    return value
