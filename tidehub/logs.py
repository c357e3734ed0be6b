"""Log lines: plain text, or with ``TIDEHUB_LOG_FORMAT=json`` one JSON object a line (timestamp,
level, logger, message, and the fields of the work context: ``request_id`` in a request,
``task_id`` and ``channel`` in an engine step; see core/context.py).

Nothing Tidehub logs should hold a secret in the first place (messages quote ids and prefixes,
never keys). As a second line of defence every line is scrubbed of what looks like one: API keys
(``sk-...``), webhook secrets (``whsec_...``), bearer and fal credentials in a header-like text.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from typing import Any

import orjson

from tidehub.core import context

FORMATS = ("text", "json")

_SECRETS = re.compile(r"(?P<keep>\bsk-(?:th-)?|\bwhsec_|\b(?i:bearer)\s+|\bKey\s+|\br8_)[A-Za-z0-9_\-+/=.:]{6,}")
# The attributes every LogRecord has; anything else on a record came as ``extra`` and is logged.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


def scrub(text: str) -> str:
    return _SECRETS.sub(lambda m: m.group("keep") + "[redacted]", text)


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    out: dict[str, Any] = {}
    ctx = context.current.get()
    if ctx is not None:
        if ctx.request_id:
            out["request_id"] = ctx.request_id
        out.update(ctx.fields)
    for name, value in vars(record).items():
        if name not in _STANDARD and not name.startswith("_"):
            out[name] = value
    return out


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": scrub(record.getMessage()),
        }
        for name, value in _fields(record).items():
            line.setdefault(name, scrub(value) if isinstance(value, str) else value)
        if record.exc_info:
            line["exception"] = scrub(self.formatException(record.exc_info))
        return orjson.dumps(line, default=str).decode()


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = _fields(record)
        if fields:
            text += " " + " ".join(f"{k}={v}" for k, v in fields.items())
        return scrub(text)


def configure(fmt: str = "text", level: int = logging.INFO) -> None:
    """Send every logger's lines (uvicorn's too) to stderr in ``fmt``."""
    if fmt not in FORMATS:
        raise ValueError(f"TIDEHUB_LOG_FORMAT: {fmt!r} is not one of {', '.join(FORMATS)}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("alembic").setLevel(logging.WARNING)
