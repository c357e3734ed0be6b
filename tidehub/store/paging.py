"""Keyset pages: lists newest first, continued from the last row seen, never with OFFSET, so the
hundredth page costs what the first does however many rows the table holds."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

#: Most rows one page may ask for.
MAX_PAGE = 500


@dataclass(frozen=True)
class Page:
    rows: list[dict[str, Any]]
    # Where the next page starts (pass it back as ``after``), or None on the last page.
    next: str | None


def cursor(row: dict[str, Any], order: str, tie: str) -> str:
    return f"{row[order]!r}~{row[tie]}"


def parse_cursor(value: str | None) -> tuple[float, str] | None:
    """A cursor is ``<number>~<id>``; anything else reads as "from the start"."""
    if not value or "~" not in value:
        return None
    number, _, tie = value.partition("~")
    try:
        return float(number), tie
    except ValueError:
        return None


def fetch_page(conn: sa.Connection, query: sa.Select, order: sa.ColumnElement, tie: sa.ColumnElement,
               after: str | None, limit: int) -> Page:
    """Rows of ``query`` by (``order``, ``tie``) descending, after the cursor ``after``."""
    limit = max(1, min(limit, MAX_PAGE))
    start = parse_cursor(after)
    if start is not None:
        last: Any = start[1]
        if isinstance(tie.type, sa.Integer):
            last = int(last) if last.lstrip("-").isdigit() else 0
        # Row-value comparison spelt out: both backends use the index on ``order`` for it.
        query = query.where(sa.or_(order < start[0], sa.and_(order == start[0], tie < last)))
    rows = [dict(r._mapping) for r in conn.execute(query.order_by(order.desc(), tie.desc()).limit(limit + 1)).all()]
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(rows, cursor(rows[-1], order.key, tie.key) if more and rows else None)
