"""JSON responses and the time format every dialect shares."""

from __future__ import annotations

import functools
import time
from collections.abc import Mapping
from typing import Any

import orjson
from starlette.responses import Response


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)

    def init_headers(self, headers: Mapping[str, str] | None = None) -> None:
        if headers:
            super().init_headers(headers)
        else:  # every poll answers this way: the two headers, without Starlette's checks for others
            self.raw_headers = [(b"content-length", b"%d" % len(self.body)), (b"content-type", b"application/json")]


def iso(ts: float | None) -> str | None:
    """Epoch seconds as ``2026-12-02T17:04:05.123Z`` (UTC, milliseconds, truncated as
    ``datetime.isoformat(timespec="milliseconds")`` does, after rounding to the microsecond as
    ``datetime.fromtimestamp`` does). Three times in every task read, hence not through datetime."""
    if ts is None:
        return None
    seconds = int(ts // 1)
    micro = round((ts - seconds) * 1e6)
    if micro >= 1_000_000:
        seconds, micro = seconds + 1, micro - 1_000_000
    return f"{_second(seconds)}.{micro // 1000:03d}Z"


@functools.lru_cache(maxsize=4096)
def _second(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
