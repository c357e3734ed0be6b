"""One error hierarchy (code, HTTP status, message, field path) that every layer raises and each
dialect renders in its own envelope. A leaf module: it imports nothing of Tidehub."""

from __future__ import annotations

from typing import Any


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
