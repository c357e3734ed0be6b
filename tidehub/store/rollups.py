"""Usage rolled up by hour and by day (the ``usage_rollups`` table), kept for good.

Every settlement adds its task to two rows (its hour and its day) in the same transaction that
settles it, so the rollups are exactly the sum of the settled rows, and stay so once those rows
are deleted by retention. A batch of relayed calls is summed per group first: 500 calls of one
key and model are a handful of upserts, not 500. Rows are upserted in key order, so two
transactions on PostgreSQL take their row locks in the same order and never deadlock.

Usage, the console's dashboard and its usage page read only these rows.
"""

from __future__ import annotations

import bisect
from typing import Any, Iterable, Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from tidehub.store.base import Queries, cursor_of, heavy, prepared
from tidehub.store.schema import LATENCY_BOUNDS_S, usage_rollups

#: Rollup periods and their length in seconds.
PERIODS = {"hour": 3600, "day": 86400}
#: The columns only the "key" grain has; the coarser grains leave them "" (schema.usage_rollups).
KEY_GRAIN_ONLY = ("key_id", "channel_id", "user_identifier")
GROUP = ("period", "grain", "start", "account_id", "key_id", "model", "channel_id", "user_identifier", "kind", "outcome")
LATENCY = tuple(f"lat_{i}" for i in range(len(LATENCY_BOUNDS_S) + 1))
SUMS = ("count", "credits", "input_tokens", "output_tokens", "latency_ms", *LATENCY)
#: The mode of a relay's credit block (store/tasks.py): money set aside, not usage.
_CREDIT_BLOCK = "credit-block"
#: The id prefix of a relayed call's record (core/relay.py).
CALL_PREFIX = "relay-"


def kind_of(task_id: str) -> str:
    return "call" if task_id.startswith(CALL_PREFIX) else "task"


def tokens_of(output: Any) -> tuple[int, int]:
    """Input and output tokens of an OpenAI-shaped ``usage`` in a result, (0, 0) without one."""
    usage = output.get("usage") if isinstance(output, dict) else None
    if not isinstance(usage, dict):
        return 0, 0
    counts = []
    for names in (("prompt_tokens", "input_tokens"), ("completion_tokens", "output_tokens")):
        value = next((usage[n] for n in names if isinstance(usage.get(n), (int, float))), 0)
        counts.append(max(0, int(value)))
    return counts[0], counts[1]


def contributions(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """What settled task rows add to the rollups: one increment per (period, grain, group), summed, in key order.

    A row needs id, mode, account_id, key_id, model, channel_id, user_identifier, status,
    captured, created_at, started_at, finished_at and (for tokens) output. Rows are summed by
    their finest group first (a batch of relayed calls is mostly one key and model), and each
    group then adds to its periods and grains once."""
    fine: dict[tuple[Any, ...], list[int]] = {}
    width = len(SUMS)
    lengths = tuple(PERIODS.values())
    for row in rows:
        if row.get("mode") == _CREDIT_BLOCK:
            continue
        created = float(row["created_at"])
        began = min(created, float(row.get("started_at") or created))  # a relayed call's record is made at its end
        latency = max(0.0, float(row.get("finished_at") or created) - began)
        tokens_in, tokens_out = tokens_of(row.get("output"))
        group = (tuple(int(created // length) * length for length in lengths), row["account_id"], row["key_id"],
                 row["model"], row.get("channel_id") or "", row.get("user_identifier") or "", kind_of(row["id"]),
                 row["status"])
        sums = fine.get(group)
        if sums is None:
            sums = fine[group] = [0] * width
        sums[0] += 1
        sums[1] += int(row.get("captured") or 0)
        sums[2] += tokens_in
        sums[3] += tokens_out
        sums[4] += int(round(latency * 1000))
        sums[5 + bisect.bisect_left(LATENCY_BOUNDS_S, latency)] += 1
    groups: dict[tuple[Any, ...], list[int]] = {}
    for (starts, account, key_id, model, channel, user, kind, outcome), sums in fine.items():
        for period, start in zip(PERIODS, starts):
            for key in ((period, "key", start, account, key_id, model, channel, user, kind, outcome),
                        (period, "account", start, account, "", model, "", "", kind, outcome),
                        (period, "model", start, "", "", model, "", "", kind, outcome)):
                total = groups.get(key)
                groups[key] = list(sums) if total is None else [a + b for a, b in zip(total, sums)]
    return [{**dict(zip(GROUP, key)), **dict(zip(SUMS, groups[key]))} for key in sorted(groups)]


def add(conn: sa.Connection, rows: Iterable[dict[str, Any]]) -> None:
    """Add settled rows to the rollups, inside the caller's transaction."""
    increments = contributions(rows)
    if not increments:
        return
    # Every settlement runs it: on the driver (store/base.py).
    prepared(_UPSERTS[conn.dialect.name], conn.dialect, (*GROUP, *SUMS)).execute_many(cursor_of(conn), increments)


def _upsert(insert: Any) -> Any:
    insert = insert(usage_rollups)
    return insert.on_conflict_do_update(
        index_elements=list(GROUP),
        set_={name: usage_rollups.c[name] + insert.excluded[name] for name in SUMS},
    )


_UPSERTS = {"postgresql": _upsert(postgresql.insert), "sqlite": _upsert(sqlite.insert)}


def percentile(histogram: Sequence[int], q: float) -> float | None:
    """The ``q`` quantile, in seconds, of a latency histogram (counts per LATENCY_BOUNDS_S bucket),
    read linearly inside its bucket; the open last bucket answers its lower bound."""
    total = sum(histogram)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for i, count in enumerate(histogram):
        if count and seen + count >= rank:
            low = LATENCY_BOUNDS_S[i - 1] if i else 0.0
            if i >= len(LATENCY_BOUNDS_S):
                return float(low)
            return low + (LATENCY_BOUNDS_S[i] - low) * max(0.0, rank - seen) / count
        seen += count
    return float(LATENCY_BOUNDS_S[-1])


class RollupQueries(Queries):
    @heavy
    def summary(
        self,
        period: str,
        by: Sequence[str],
        *,
        since: float | None = None,
        until: float | None = None,
        account_id: str | None = None,
        key_id: str | None = None,
        model: str | None = None,
        user_identifier: str | None = None,
        kind: str | None = None,
        outcome: str | None = None,
        sums: Sequence[str] = SUMS,
        order_by: str | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Sums of the ``period`` rows from the one holding ``since`` to the one before ``until``,
        grouped by ``by`` (columns of the group, or "bucket" for the row's start). Each result has
        the group's values, the ``sums`` asked for (each costs a little on every row read), and
        ``succeeded`` (the count of succeeded rows). Reads the coarsest grain that has what is
        asked for."""
        r = usage_rollups.c
        length = PERIODS[period]
        if any(name in KEY_GRAIN_ONLY for name in by) or key_id is not None or user_identifier is not None:
            grain = "key"
        elif "account_id" in by or account_id is not None:
            grain = "account"
        else:
            grain = "model"
        where = [r.period == period, r.grain == grain]
        if since is not None:
            where.append(r.start >= int(since // length) * length)
        if until is not None:
            where.append(r.start < until)
        for column, value in (("account_id", account_id), ("key_id", key_id), ("model", model),
                              ("user_identifier", user_identifier), ("kind", kind), ("outcome", outcome)):
            if value is not None:
                where.append(r[column] == value)
        keys = [r.start.label("bucket") if name == "bucket" else r[name] for name in by]
        totals = [sa.func.sum(r[name]).label(name) for name in sums]
        succeeded = sa.func.sum(sa.case((r.outcome == "succeeded", r.count), else_=0)).label("succeeded")
        query = sa.select(*keys, *totals, succeeded).where(*where).group_by(*keys)
        if order_by is not None:
            query = query.order_by(sa.desc(order_by))
        if limit is not None:
            query = query.limit(limit)
        with self.engine.connect() as conn:
            return [{k: (int(v) if k in SUMS or k == "succeeded" else v) for k, v in row._mapping.items()}
                    for row in conn.execute(query).all()]
