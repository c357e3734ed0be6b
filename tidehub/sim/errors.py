"""Why a simulated run ended without output, in terms a vendor dialect can render."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(eq=False)
class RunFailure(Exception):
    """A run that ended in error.

    ``detail`` is what fal puts in its error body: a message, or a list of pydantic-style
    ``{loc, msg, type}`` items for input problems found while running (an unreachable file URL).
    """

    error_type: str
    detail: str | list[dict[str, Any]]
    http_status: int = 500
    retryable: bool = False

    @property
    def message(self) -> str:
        if isinstance(self.detail, str):
            return self.detail
        return "; ".join(str(item.get("msg", "")) for item in self.detail) or self.error_type

    @classmethod
    def cancelled(cls) -> RunFailure:
        return cls("request_cancelled", "Request cancelled", http_status=400)

    @classmethod
    def internal(cls, message: str = "Internal server error") -> RunFailure:
        return cls("internal_server_error", message, http_status=500, retryable=True)

    @classmethod
    def runner_disconnected(cls) -> RunFailure:
        """An infrastructure failure mid-run: the same input may well succeed if submitted again."""
        return cls("runner_disconnected", "The runner disconnected while processing the request",
                   http_status=503, retryable=True)

    @classmethod
    def content_policy(cls, field: str = "prompt") -> RunFailure:
        """The model refused the input: resubmitting it (anywhere) fails the same way."""
        detail = [{
            "loc": ["body", field],
            "msg": "The content could not be processed because it contained material flagged by a content checker.",
            "type": "content_policy_violation",
            "url": "https://docs.fal.ai/errors#content_policy_violation",
        }]
        return cls("content_policy_violation", detail, http_status=422)

    @classmethod
    def bad_file(cls, field: str, message: str, error_type: str = "file_download_error") -> RunFailure:
        detail = [{"loc": ["body", field], "msg": message, "type": error_type}]
        return cls(error_type, detail, http_status=422)
