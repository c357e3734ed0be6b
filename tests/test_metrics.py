"""``GET /metrics``: behind its token, in Prometheus's text format, and moving with traffic."""

from __future__ import annotations

from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from conftest import GatewayServer, sim_allowance, wait_for, wait_task
from receivers import Receiver

TOKEN = "metrics-token-for-tests"


def scrape(gateway: GatewayServer, token: str = TOKEN) -> dict[str, list[Any]]:
    """Every sample, by its name (``tidehub_http_requests_total``...)."""
    answer = httpx.get(f"{gateway.url}/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    samples: dict[str, list[Any]] = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def total(samples: dict[str, list[Any]], name: str, **labels: str) -> float:
    return sum(s.value for s in samples.get(name, []) if all(s.labels.get(k) == v for k, v in labels.items()))


def test_metrics_need_the_token(make_gateway) -> None:
    gateway = make_gateway(more_upstreams=False, engine_enabled=False, metrics_token=TOKEN, admin_token="adm-tok")
    assert httpx.get(f"{gateway.url}/metrics").status_code == 401
    assert httpx.get(f"{gateway.url}/metrics", headers={"Authorization": "Bearer nope"}).status_code == 403
    assert httpx.get(f"{gateway.url}/metrics", headers={"Authorization": "Basic abc"}).status_code == 401
    assert "tidehub_tasks_queued" in scrape(gateway)
    assert "tidehub_tasks_queued" in scrape(gateway, "adm-tok")  # the admin token works too
    off = make_gateway(more_upstreams=False, engine_enabled=False)
    assert httpx.get(f"{off.url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 404


def test_metrics_move_when_traffic_flows(make_gateway, sim) -> None:
    receiver = Receiver()
    try:
        gateway = make_gateway(more_upstreams=False, metrics_token=TOKEN,
                               ssrf_allow=f"{sim_allowance(sim.base_url)},127.0.0.1")
        before = scrape(gateway)
        with gateway.client(gateway.new_key()) as c:
            task_id = c.post("/hub/v1/image", json={"model": "nano-banana", "input": {"prompt": "a lighthouse"},
                                                    "webhook_url": receiver.url}).json()["task_id"]
            done = wait_task(c, f"/hub/v1/tasks/{task_id}", lambda b: b["ready"])
            assert done["status"] == "completed", done
            chat = c.post("/v1/chat/completions", json={"model": "gpt-4o-mini",
                                                        "messages": [{"role": "user", "content": "hello"}]})
            assert chat.status_code == 200, chat.text
            assert c.get("/hub/v1/tasks/hub-unknown").status_code == 404
            assert c.get(f"/hub/v1/no/such/{task_id}").status_code in (404, 405)
        wait_for(lambda: receiver.received, timeout=30, what="the webhook")
        after = wait_for(lambda: _settled(scrape(gateway)), timeout=30, what="the counters to settle")
    finally:
        receiver.stop()

    def moved(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    route = "/hub/v1/tasks/{task_id}"
    assert moved("tidehub_http_requests_total", dialect="hub", route=route, method="GET", status="200") >= 1
    assert moved("tidehub_http_requests_total", dialect="hub", route=route, status="404") == 1
    assert moved("tidehub_http_requests_total", dialect="openai", route="/v1/chat/completions", status="200") == 1
    assert moved("tidehub_http_request_duration_seconds_count", dialect="hub", route="/hub/v1/{capability}") == 1
    assert moved("tidehub_http_requests_total", dialect="hub", route="/hub/v1/<unmatched>") == 1
    # Route templates, never raw paths: no task id shows in any label.
    assert not any(task_id in str(s.labels) for samples in after.values() for s in samples)
    assert moved("tidehub_tasks_submitted_total", model="nano-banana") == 1
    assert moved("tidehub_tasks_finished_total", model="nano-banana", channel="fal", outcome="succeeded") == 1
    assert moved("tidehub_upstream_request_duration_seconds_count", channel="fal", outcome="ok") >= 2
    assert moved("tidehub_upstream_request_duration_seconds_count", channel="openai", outcome="ok") == 1
    assert moved("tidehub_relay_calls_total", model="gpt-4o-mini", channel="openai", outcome="succeeded") == 1
    assert moved("tidehub_relay_tokens_total", model="gpt-4o-mini", kind="input") > 0
    assert moved("tidehub_relay_tokens_total", model="gpt-4o-mini", kind="output") > 0
    assert moved("tidehub_webhook_deliveries_total", outcome="delivered") == 1
    assert total(after, "tidehub_credits_captured_total") > total(before, "tidehub_credits_captured_total")
    assert total(after, "tidehub_tasks_queued") == 0
    assert total(after, "tidehub_channel_breaker_state", channel="fal") == 0
    assert "tidehub_engine_steps_in_flight" in after and "tidehub_relay_calls_in_flight" in after


def _settled(samples: dict[str, list[Any]]) -> dict[str, list[Any]] | None:
    """The relay records its calls and the sender its deliveries a moment after answering."""
    delivered = total(samples, "tidehub_webhook_deliveries_total", outcome="delivered")
    held = total(samples, "tidehub_credits_held")
    return samples if delivered and held == 0 else None


def test_the_grafana_dashboard_reads_metrics_that_exist(make_gateway) -> None:
    import json
    import re
    from pathlib import Path

    dashboard = json.loads((Path(__file__).parent.parent / "docs" / "grafana-tidehub.json").read_text())
    gateway = make_gateway(more_upstreams=False, metrics_token=TOKEN)
    with gateway.client(gateway.new_key()) as c:  # so the labelled series exist
        c.post("/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]})
    text = httpx.get(f"{gateway.url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).text
    families = {f.name: f.type for f in text_string_to_metric_families(text)}
    names = {f"{name}{suffix}" for name, kind in families.items()
             for suffix in {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}.get(kind, ("",))}
    used = {name for panel in dashboard["panels"] for target in panel["targets"]
            for name in re.findall(r"tidehub_\w+", target["expr"])}
    assert used and used <= names, sorted(used - names)
