"""What the gateway counts for Prometheus (``GET /metrics``, api/metrics.py), with prometheus-client.

Two kinds of figures:

- **Counted as things happen**, in the process they happen in: HTTP requests (api/edge.py),
  tasks ending, upstream calls, webhook deliveries, relayed calls and their tokens. These are
  module-level metrics. When ``PROMETHEUS_MULTIPROC_DIR`` is set (``serve --workers N`` sets it)
  prometheus-client keeps them in files there and a scrape of any process adds up every
  process's; the gauges say how (``multiprocess_mode``).
- **Read on scrape** from the database (``StateCollector``): queue depth, tasks in flight per
  channel, credits held and captured; and the breaker state of each channel as the scraped
  process sees it. One cheap query each, through indexes, and nothing while nobody scrapes.

Labels stay bounded: models and channels come from the catalog and the operator, routes are
templates (``/hub/v1/tasks/{task_id}``), never raw paths.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from tidehub.core.routing import Router
    from tidehub.store import Store

disable_created_metrics()  # the *_created series only double what a scrape says

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_UPSTREAM_LATENCY = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

http_requests = Counter("tidehub_http_requests", "HTTP requests answered, by dialect, route template and status.",
                        ["dialect", "route", "method", "status"])
http_latency = Histogram("tidehub_http_request_duration_seconds",
                         "Time from a request's arrival to the end of its answer.", ["dialect", "route"],
                         buckets=_LATENCY)
tasks_submitted = Counter("tidehub_tasks_submitted", "Tasks accepted, by model.", ["model"])
tasks_finished = Counter("tidehub_tasks_finished", "Tasks that reached a terminal status, by model, channel "
                         "and outcome (succeeded, failed, timeout, canceled).", ["model", "channel", "outcome"])
upstream_latency = Histogram("tidehub_upstream_request_duration_seconds",
                             "Upstream calls (submits, polls, relayed calls), by channel and whether they worked.",
                             ["channel", "outcome"], buckets=_UPSTREAM_LATENCY)
upstream_errors = Counter("tidehub_upstream_errors", "Upstream errors, by channel and error code.",
                          ["channel", "code"])
webhook_deliveries = Counter("tidehub_webhook_deliveries", "Webhook delivery attempts, by outcome (delivered, "
                             "retrying, failed, disabled).", ["outcome"])
relay_calls = Counter("tidehub_relay_calls", "Relayed calls, by model, channel and outcome.",
                      ["model", "channel", "outcome"])
relay_tokens = Counter("tidehub_relay_tokens", "Tokens of relayed calls, by model and kind (input, output).",
                       ["model", "kind"])
engine_steps = Gauge("tidehub_engine_steps_in_flight", "Task steps the engines are running now.",
                     multiprocess_mode="livesum")
relay_in_flight = Gauge("tidehub_relay_calls_in_flight", "Relayed calls under way now.",
                        multiprocess_mode="livesum")

#: The breaker states as numbers, for a graph.
BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}


_CHILDREN: dict[tuple[Any, tuple[str, ...]], Any] = {}


def child(metric: Any, *values: str) -> Any:
    """``metric.labels(*values)``, remembered: ``labels`` checks and locks at every call, and the
    hot paths (a submit, a relayed call) count by the same few label values over and over. As
    bounded as the metrics' own children, which prometheus-client keeps for good anyway."""
    key = (metric, values)
    found = _CHILDREN.get(key)
    if found is None:
        found = _CHILDREN[key] = metric.labels(*values)
    return found


def task_finished(task: dict[str, Any], outcome: str, channel: str | None = None) -> None:
    child(tasks_finished, task.get("model") or "", channel or task.get("channel_id") or "", outcome).inc()


class StateCollector(Collector):
    """Figures read from the database and the router at each scrape."""

    def __init__(self, store: "Store", router: "Router") -> None:
        self.store = store
        self.router = router

    def collect(self) -> Iterable[Any]:
        figures = self.store.tasks.gauges()
        names = {cid: ch.name for cid, ch in self.router.channels.items()}
        queued = GaugeMetricFamily("tidehub_tasks_queued", "Tasks waiting in Tidehub's queue.")
        queued.add_metric([], figures["queued"])
        yield queued
        running = GaugeMetricFamily("tidehub_tasks_running", "Tasks running upstream, by channel.",
                                    labels=["channel"])
        for cid, count in sorted(figures["running"].items()):
            running.add_metric([names.get(cid, cid)], count)
        yield running
        held = GaugeMetricFamily("tidehub_credits_held", "Credits held by live tasks and relay credit blocks.")
        held.add_metric([], figures["held"])
        yield held
        captured = CounterMetricFamily("tidehub_credits_captured", "Credits captured (spent), in all.")
        captured.add_metric([], figures["captured"])
        yield captured
        breaker = GaugeMetricFamily("tidehub_channel_breaker_state", "Circuit breaker of each channel as the "
                                    "scraped process sees it: 0 closed, 1 half-open, 2 open.", labels=["channel"])
        for cid, health in sorted(self.router.health.items()):
            breaker.add_metric([names.get(cid, cid)], BREAKER_STATES.get(health.state, 0))
        yield breaker
