"""Reading console forms into typed values, each mistake named by its field, so a page can show the
form again with the values kept and the message beside the field."""

from __future__ import annotations

import time
from datetime import datetime, timezone

from starlette.datastructures import FormData
from starlette.requests import Request

from tidehub.errors import InvalidInput

MAX_TEXT = 2000


def client_address(request: Request) -> str | None:
    return request.client.host if request.client else None


class Form:
    """A submitted form. Each reader returns the value or raises InvalidInput naming the field."""

    def __init__(self, data: FormData) -> None:
        self.data = data

    @classmethod
    async def read(cls, request: Request) -> "Form":
        return cls(await request.form(max_files=0, max_fields=200))

    def values(self) -> dict[str, str]:
        """What to put back into the form when it is shown again (never a secret field)."""
        return {k: str(v) for k, v in self.data.items() if k not in ("csrf_token", "password", "secret", "api_key")}

    def text(self, name: str, *, required: bool = False, max_length: int = 200, label: str | None = None) -> str:
        value = str(self.data.get(name) or "").strip()
        if "\x00" in value:
            raise InvalidInput(f"{label or name}: must not contain a NUL character", field=name)
        if required and not value:
            raise InvalidInput(f"{label or name}: is required", field=name)
        if len(value) > max_length:
            raise InvalidInput(f"{label or name}: at most {max_length} characters", field=name)
        return value

    def integer(self, name: str, *, required: bool = False, minimum: int | None = None,
                maximum: int | None = None, label: str | None = None) -> int | None:
        raw = self.text(name, required=required, max_length=30, label=label).replace(",", "").replace("_", "")
        if not raw:
            return None
        try:
            value = int(raw)
        except ValueError:
            raise InvalidInput(f"{label or name}: must be a whole number", field=name) from None
        if minimum is not None and value < minimum:
            raise InvalidInput(f"{label or name}: must be at least {minimum:,}", field=name)
        if maximum is not None and value > maximum:
            raise InvalidInput(f"{label or name}: must be at most {maximum:,}", field=name)
        return value

    def moment(self, name: str, *, label: str | None = None) -> float | None:
        """A date or date-time (UTC unless it says otherwise), or a span from now: 30d, 12h, 15m."""
        raw = self.text(name, max_length=40, label=label)
        return parse_moment(raw, name, label)

    def listing(self, name: str, *, max_items: int = 200) -> list[str] | None:
        """Comma- or line-separated values."""
        raw = self.text(name, max_length=MAX_TEXT)
        items = [v.strip() for v in raw.replace("\n", ",").split(",") if v.strip()]
        if len(items) > max_items:
            raise InvalidInput(f"{name}: at most {max_items} entries", field=name)
        return items or None

    def choice(self, name: str, choices: tuple[str, ...], *, default: str | None = None) -> str:
        value = self.text(name) or default or ""
        if value not in choices:
            raise InvalidInput(f"{name}: must be one of {', '.join(choices)}", field=name)
        return value

    def flag(self, name: str) -> bool:
        return str(self.data.get(name) or "") in ("1", "on", "true", "yes")


def parse_moment(raw: str, name: str, label: str | None = None) -> float | None:
    if not raw:
        return None
    units = {"d": 86400, "h": 3600, "m": 60}
    if raw[-1] in units and raw[:-1].isdigit():
        return time.time() + int(raw[:-1]) * units[raw[-1]]
    try:
        parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInput(f"{label or name}: a date (2027-01-31), a date and time (2027-01-31T12:00) or a span "
                           f"from now (30d, 12h)", field=name) from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)).timestamp()
