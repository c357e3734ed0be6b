"""Figures for operators over a time window (the console's dashboard and usage page), read from
the usage rollups (store/rollups.py) and, for tasks not settled yet, the few live task rows: the
cost of a page depends on the window and the number of groups, not on how many tasks there were."""

from __future__ import annotations

import time
from typing import Any

from tidehub.store import Store
from tidehub.store.rollups import LATENCY, PERIODS, percentile

KINDS = ("task", "call")
#: What the usage page can group by, as rollup columns ("day" is the row's start).
USAGE_GROUPS = {"day": "bucket", "model": "model", "account": "account_id", "user_identifier": "user_identifier"}


def period_for(bucket_s: int) -> str:
    """The rollup rows that fit a chart bucket: hourly ones under a day, daily ones from there."""
    return "hour" if bucket_s < PERIODS["day"] else "day"


class StatsService:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def dashboard(self, span_s: int, bucket_s: int, now: float | None = None) -> dict[str, Any]:
        """Outcomes, success rates, latency p50/p95, credits, top models and accounts, and a series
        of ``bucket_s`` buckets, over the last ``span_s`` seconds (from the start of its first bucket)."""
        now = time.time() if now is None else now
        since = int((now - span_s) // bucket_s) * bucket_s
        period = period_for(bucket_s)
        store = self.store
        rows = await store.call(store.rollups.summary, period, ["kind", "outcome", "bucket"], since=since)
        live = await store.call(store.tasks.live_counts, since)
        by_status: dict[str, dict[str, int]] = {kind: {} for kind in KINDS}
        histograms = {kind: [0] * len(LATENCY) for kind in KINDS}
        buckets: dict[int, dict[str, int]] = {}
        credits = 0
        for row in rows:
            kind, outcome = row["kind"], row["outcome"]
            counts = by_status.setdefault(kind, {})
            counts[outcome] = counts.get(outcome, 0) + row["count"]
            credits += row["credits"]
            if outcome == "succeeded":  # latency: submit to result, of what succeeded
                histograms[kind] = [a + row[name] for a, name in zip(histograms[kind], LATENCY)]
            start = int(row["bucket"]) // bucket_s * bucket_s
            bucket = buckets.setdefault(start, {"count": 0, "succeeded": 0, "failed": 0, "credits": 0})
            bucket["count"] += row["count"]
            bucket["credits"] += row["credits"]
            if outcome == "succeeded":
                bucket["succeeded"] += row["count"]
            elif outcome in ("failed", "timeout"):
                bucket["failed"] += row["count"]
        for status, count in live.items():
            by_status["task"][status] = count
        summary = {}
        for kind, counts in by_status.items():
            finished = sum(n for s, n in counts.items() if s in ("succeeded", "failed", "timeout"))
            summary[kind] = {"by_status": counts, "total": sum(counts.values()),
                             "success_rate": round(counts.get("succeeded", 0) / finished, 4) if finished else None}
        # Every bucket of the window, the empty ones too, so a chart's time axis is even.
        series = [{"start": start, **buckets.get(start, {"count": 0, "succeeded": 0, "failed": 0, "credits": 0})}
                  for start in range(since, int(now) + 1, bucket_s)]
        top = {}
        for name, column in (("top_models", "model"), ("top_accounts", "account_id")):
            found = await store.call(store.rollups.summary, period, [column], since=since, order_by="count", limit=10)
            top[name] = [{"name": r[column], "count": r["count"], "credits": r["credits"]} for r in found]
        return {
            "since": since, "summary": summary, "credits_captured": credits, "series": series,
            "latency_s": {kind: {"p50": percentile(h, 0.5), "p95": percentile(h, 0.95), "sample": sum(h)}
                          for kind, h in histograms.items()},
            **top,
        }

    async def usage(self, span_s: int, group_by: str, *, account_id: str | None = None,
                    now: float | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        """Settled tasks and calls, succeeded, credits and tokens by day, model, account or
        user_identifier over the last ``span_s`` seconds (whole days)."""
        now = time.time() if now is None else now
        column = USAGE_GROUPS[group_by]
        rows = await self.store.call(
            self.store.rollups.summary, "day", [column], since=now - span_s, account_id=account_id,
            order_by=None if group_by == "day" else "credits", limit=limit)
        if group_by == "day":
            rows.sort(key=lambda r: r["bucket"])
        return [{"group": (r[column] or None) if column != "bucket" else int(r["bucket"]) // 86400,
                 "count": r["count"], "succeeded": r["succeeded"], "credits": r["credits"],
                 "input_tokens": r["input_tokens"], "output_tokens": r["output_tokens"]} for r in rows]
