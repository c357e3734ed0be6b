"""One error hierarchy (code, HTTP status, message, field path) that every layer raises and each
dialect renders in its own envelope. A leaf module: it imports nothing of Tidehub."""

from __future__ import annotations

from typing import Any

#: How much of a client's own value an error message repeats back.
QUOTE_LIMIT = 80


def quoted(value: object, limit: int = QUOTE_LIMIT) -> str:
    """``value`` as an error message quotes it (``repr``), cut to ``limit`` characters.

    Every message that repeats client input goes through here, so a megabyte model name or
    URL is not echoed back whole (nor written whole to the logs)."""
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


def clipped(text: str, limit: int = QUOTE_LIMIT) -> str:
    """Client text that a message or a field path shows unquoted (a field name), cut the same way."""
    return text if len(text) <= limit else f"{text[:limit]}..."


class TidehubError(Exception):
    status: int = 400
    code: str = "bad_request"

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        code: str | None = None,
        status: int | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.details = details or {}


class BadRequest(TidehubError):
    status, code = 400, "bad_request"


class InvalidInput(TidehubError):
    status, code = 422, "invalid_input"


class Unauthorized(TidehubError):
    status, code = 401, "unauthorized"


class Forbidden(TidehubError):
    status, code = 403, "forbidden"


class NotFound(TidehubError):
    status, code = 404, "not_found"


class Conflict(TidehubError):
    status, code = 409, "conflict"


class PayloadTooLarge(TidehubError):
    status, code = 413, "payload_too_large"


class UnsupportedMediaType(TidehubError):
    status, code = 415, "unsupported_media_type"


class TooManyRequests(TidehubError):
    status, code = 429, "too_many_requests"


class ServiceUnavailable(TidehubError):
    status, code = 503, "service_unavailable"
