"""Hostile or careless input gets a clear 4xx (never a 500), and what does go wrong is logged once.

Each case here was a 500 with a traceback logged twice: JSON nested hundreds of levels deep (deep
copies and orjson's own depth limit), host names the idna codec refuses, a fal callback timestamp
no float holds, a callback while fal's keys are unreachable.
"""

from __future__ import annotations

import logging
import time
from typing import Iterator

import httpx
import pytest

from conftest import GatewayServer, free_port, wait_task

IMAGE = {"model": "nano-banana", "input": {"prompt": "a lighthouse"}}


@pytest.fixture
def logged() -> Iterator[list[logging.LogRecord]]:
    """Every record of WARNING or above that Tidehub or uvicorn logs during the test."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep(level=logging.WARNING)
    loggers = [logging.getLogger(name) for name in ("tidehub", "uvicorn.error", "uvicorn")]
    for logger in loggers:
        logger.addHandler(handler)
    yield records
    for logger in loggers:
        logger.removeHandler(handler)


def nested(levels: int) -> bytes:
    return b"[" * levels + b"]" * levels


def post_raw(client: httpx.Client, path: str, body: bytes, **headers: str) -> httpx.Response:
    return client.post(path, content=body, headers={"Content-Type": "application/json", **headers})


def test_deeply_nested_json_is_refused_at_parse_time(client: httpx.Client, logged: list) -> None:
    # The body itself is level 1, "input" level 2: 62 more levels is exactly the limit of 64.
    at_limit = b'{"model": "nano-banana", "input": {"prompt": "x", "z": ' + nested(62) + b"}}"
    answer = post_raw(client, "/hub/v1/image", at_limit)
    assert answer.status_code == 422 and answer.json()["field"] == "input.z", answer.text  # parsed, then validated

    for levels in (63, 300, 900):
        body = b'{"model": "nano-banana", "input": {"prompt": "x", "z": ' + nested(levels) + b"}}"
        for headers in ({}, {"Idempotency-Key": f"deep-{levels}"}):
            answer = post_raw(client, "/hub/v1/image", body, **headers)
            assert answer.status_code == 400, answer.text
            error = answer.json()
            assert error["error_code"] == "too_deep" and error["field"] == "body", error
            assert "64" in error["error_message"]

    ms = post_raw(client, "/ms/v1/run/google/nano-banana/text-to-image",
                  b'{"input": {"prompt": "x", "z": ' + nested(300) + b"}}")
    assert ms.status_code == 400 and ms.json()["error"]["code"] == "too_deep", ms.text

    for stream in (b"false", b"true"):
        chat = post_raw(client, "/v1/chat/completions", b'{"model": "gpt-4", "stream": ' + stream +
                        b', "messages": [{"role": "user", "content": "hi", "x": ' + nested(300) + b"}]}")
        assert chat.status_code == 400, chat.text
        error = chat.json()["error"]
        assert error["type"] == "invalid_request_error" and error["param"] == "body" and "64" in error["message"]
    assert client.post("/v1/chat/completions", json={"model": "gpt-4", "messages": [
        {"role": "user", "content": [{"type": "text", "text": "hi"}] * 100}]}).status_code == 200  # many, not deep
    assert not logged, [r.getMessage()[:200] for r in logged]


@pytest.mark.parametrize("url", ["http://a..example.com/", f"http://{'a' * 64}.example.com/hook",
                                 f"http://{'a.' * 130}example.com/", "http://.example.com/"])
def test_webhook_url_with_a_bad_dns_label_is_invalid_input(client: httpx.Client, logged: list, url: str) -> None:
    answer = client.post("/hub/v1/image", json={**IMAGE, "webhook_url": url})
    assert answer.status_code == 422, answer.text
    error = answer.json()
    assert error["field"] == "webhook_url" and error["error_code"] == "invalid_input", error
    assert not logged


def fal_headers(timestamp: str) -> dict[str, str]:
    return {"X-Fal-Webhook-Request-Id": "r1", "X-Fal-Webhook-User-Id": "u",
            "X-Fal-Webhook-Timestamp": timestamp, "X-Fal-Webhook-Signature": "00" * 64}


def test_fal_callback_with_an_absurd_timestamp_is_refused(make_gateway, sim, logged: list) -> None:
    gateway = make_gateway(upstream_callbacks=True, fal_jwks_url=f"{sim.base_url}/.well-known/jwks.json")
    answer = httpx.post(f"{gateway.url}/callbacks/fal/hub-1", content=b"{}", headers=fal_headers("9" * 400))
    assert answer.status_code == 401, answer.text
    assert "signature" in answer.text
    assert not logged


def test_callback_while_the_keys_are_unreachable_asks_for_a_retry(make_gateway, logged: list) -> None:
    gateway = make_gateway(upstream_callbacks=True, fal_jwks_url=f"http://127.0.0.1:{free_port()}/jwks.json")
    for _ in range(3):
        answer = httpx.post(f"{gateway.url}/callbacks/fal/hub-1", content=b"{}",
                            headers=fal_headers(str(int(time.time()))))
        assert answer.status_code == 503, answer.text
        assert answer.headers["retry-after"] and "keys" in answer.text and len(answer.text) < 200
    assert all(r.levelno == logging.WARNING and r.exc_info is None for r in logged), logged
    fetch_failures = [r for r in logged if "JWKS" in r.getMessage()]
    assert len(fetch_failures) == 1, [r.getMessage() for r in logged]  # one fetch, one line


def test_an_unexpected_error_is_logged_once_and_the_connection_survives(gateway: GatewayServer,
                                                                        logged: list) -> None:
    def broken(principal: object) -> None:
        raise RuntimeError("the balance exploded " + "x" * 100_000)

    gateway.gateway.accounts.balance = broken  # type: ignore[method-assign]
    with gateway.client(gateway.new_key()) as c:
        answer = c.get("/hub/v1/account")
        assert answer.status_code == 500
        assert answer.json() == {"error_code": "internal_error", "field": None,
                                 "error_message": "an internal error occurred; it has been logged"}
        openai = c.get("/api/user/quota")
        assert openai.status_code == 500 and openai.json()["success"] is False
        assert c.get("/hub/v1/models").status_code == 200  # the same connection, still usable
    errors = [r for r in logged if r.levelno >= logging.ERROR]
    assert len(errors) == 2, [r.getMessage()[:300] for r in errors]  # one per failed request, nothing from uvicorn
    for record in errors:
        text = record.getMessage()
        assert record.name.startswith("tidehub") and "RuntimeError: the balance exploded" in text
        assert "Traceback" in text and text.count("Traceback") == 1 and len(text) < 10_000


# -- media URLs in a task's input --------------------------------------------------------------

REFUSED_MEDIA = [
    ("file:///etc/passwd", "http or https"),
    ("gopher://127.0.0.1:70/_stats", "http or https"),
    ("http://169.254.169.254/latest/meta-data/", "link-local address 169.254.169.254"),
    ("http://localhost/cat.png", "loopback"),
    ("http://10.1.2.3/cat.png", "private address 10.1.2.3"),
    ("http://[::1]:8080/cat.png", "loopback"),
    ("http://user:pw@example.com/cat.png", "credentials"),
]


@pytest.mark.parametrize(("url", "reason"), REFUSED_MEDIA, ids=[u for u, _ in REFUSED_MEDIA])
def test_media_urls_must_be_public_http_or_data(gateway: GatewayServer, client: httpx.Client, url: str,
                                               reason: str) -> None:
    before = gateway.gateway.store.tasks.count(["queued", "running", "succeeded", "failed"])
    answer = client.post("/hub/v1/image", json={"model": "nano-banana-edit", "input": {
        "prompt": "a hat", "image_urls": ["https://example.com/ok.png", url]}})
    assert answer.status_code == 422, answer.text
    error = answer.json()
    assert error["field"] == "input.image_urls[1]" and error["error_code"] == "invalid_input", error
    assert error["error_message"].startswith("input.image_urls[1] ") and reason in error["error_message"], error
    assert gateway.gateway.store.tasks.count(["queued", "running", "succeeded", "failed"]) == before

    ms = client.post("/ms/v1/run/fal/wizper/transcribe", json={"input": {"audio_url": url}})
    assert ms.status_code == 422 and ms.json()["error"]["field"] == "input.audio_url", ms.text
    nested = client.post("/hub/v1/video", json={"model": "kling-v3-pro-image", "input": {
        "prompt": "@Element1 waves", "start_image_url": "https://example.com/a.png", "duration": "3",
        "elements": [{"frontal_image_url": "https://example.com/b.png", "reference_image_urls": [url]}]}})
    assert nested.status_code == 422, nested.text
    assert nested.json()["field"] == "input.elements[0].reference_image_urls[0]", nested.json()


def test_allowed_media_urls_are_accepted(gateway: GatewayServer, client: httpx.Client, sim) -> None:
    image = client.post("/hub/v1/image", json={"model": "nano-banana", "input": {"prompt": "x"}}).json()
    done = wait_task(client, f"/hub/v1/tasks/{image['task_id']}", lambda b: b["ready"])
    own_file = done["data"]["images"][0]["url"]  # a result of ours, handed to the next task
    for url in ("https://example.com/cat.png",  # does not resolve here: the upstream will judge it
                f"{sim.base_url}/files/none.png",  # the one loopback address TIDEHUB_SSRF_ALLOW names
                "data:image/png;base64,iVBORw0KGgo=",
                own_file):
        answer = client.post("/hub/v1/image", json={"model": "nano-banana-edit", "input": {
            "prompt": "a hat", "image_urls": [url]}})
        assert answer.status_code == 200, (url, answer.text)
    sneaky = own_file.replace("/files/", "/files/../admin/v1/")
    assert client.post("/hub/v1/image", json={"model": "nano-banana-edit", "input": {
        "prompt": "a hat", "image_urls": [sneaky]}}).status_code == 422


def test_too_many_media_hosts_in_one_request(client: httpx.Client) -> None:
    urls = [f"https://host{i}.example.com/a.png" for i in range(40)]
    answer = client.post("/hub/v1/video", json={"model": "kling-v3-pro-image", "input": {
        "prompt": "x", "start_image_url": "https://example.com/a.png", "duration": "3",
        "elements": [{"frontal_image_url": u} for u in urls]}})
    assert answer.status_code == 422, answer.text
    assert "different hosts" in answer.json()["error_message"]


# -- errors quote client input, but not all of it -----------------------------------------------

def test_errors_quote_client_input_cut_short(client: httpx.Client) -> None:
    huge = "n" * 1_000_000
    answers = [
        client.post("/hub/v1/image", json={"model": huge, "input": {"prompt": "x"}}),
        client.post("/ms/v1/run/google/nano-banana/text-to-image", json={"input": {"prompt": "x", huge: 1}}),
        client.post("/v1/chat/completions", json={"model": huge, "messages": [{"role": "user", "content": "hi"}]}),
        client.post("/v1/embeddings", json={"model": huge, "input": "hi"}),
        client.get("/hub/v1/tasks/" + "t" * 20_000),
        client.post("/hub/v1/image", json={"model": "nano-banana", "input": {"prompt": "x"},
                                           "webhook_url": f"http://{'h' * 500_000}.example.com/"}),
    ]
    for answer in answers:
        assert 400 <= answer.status_code < 500, answer.text[:300]
        assert len(answer.content) < 2_000, (answer.status_code, answer.text[:300])
    assert "characters)" in answers[0].json()["error_message"]  # says how long it was
    assert answers[1].json()["error"]["field"].startswith("input.nnnn")


def test_the_depth_check_agrees_with_the_parsed_value() -> None:
    """The cheap bound read off the raw bytes never undercounts, whatever strings hold brackets."""
    import json
    import random

    import orjson

    from tidehub.api.requests import nested_deeper

    def depth(value: object) -> int:
        if isinstance(value, dict):
            return 1 + max((depth(v) for v in value.values()), default=0)
        if isinstance(value, list):
            return 1 + max((depth(v) for v in value), default=0)
        return 0

    tricky = ["x", 1, None, 'a"b\\', '}]{[\\"', "\\\\", '"', "][}{" * 5, "line\n", '\\n"[', "]]]]]]]]", "},{},{},{"]
    rng = random.Random(5)

    def make(levels: int) -> object:
        if levels == 0:
            return rng.choice(tricky)
        if rng.random() < 0.5:
            return [make(rng.randint(0, levels - 1)) for _ in range(rng.randint(0, 3))] + [make(levels - 1)]
        keys = {f"k{i}}}[\"": make(rng.randint(0, levels - 1)) for i in range(rng.randint(0, 3))}
        return keys | {"z": make(levels - 1)}

    for _ in range(2_000):
        value = make(rng.randint(0, 14))
        for raw in (orjson.dumps(value), json.dumps(value, indent=1).encode()):
            for limit in (0, 1, 3, 8, 13):
                assert nested_deeper(raw, value, limit) == (depth(value) > limit), (raw[:120], limit)


NUL_IN_URLS = [
    ("GET", "/hub/v1/tasks/%00", "path", "error_code"),
    ("POST", "/hub/v1/tasks/hub-%00/cancel", "path", "error_code"),
    ("GET", "/ms/v1/tasks/x%00y", "path", "error"),
    ("GET", "/v1/videos/%00", "path", "error"),
    ("GET", "/hub/v1/usage?user_identifier=a%00", "user_identifier", "error_code"),
    ("GET", "/api/video/status/%00", "path", "success"),
]

NUL_IN_BODIES = [
    ("/hub/v1/image", {"model": "nano-banana", "input": {"prompt": "ab"}, "user_identifier": "u\u0000"},
     "user_identifier", "error_code"),
    ("/hub/v1/image", {"model": "nano-banana", "input": {"prompt": "a\u0000b"}}, "input.prompt", "error_code"),
    ("/ms/v1/run/google/nano-banana/edit", {"input": {"prompt": "x", "image_urls": ["\u0000"]}}, "input.image_urls[0]",
     "error"),
    ("/v1/chat/completions", {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}],
                              "user": "x\u0000"}, "user", "error"),
    ("/api/video/submit", {"prompt": "a lighthouse", "user_identifier": "b\u0000"}, "user_identifier", "success"),
    ("/api/user/redemption", {"code": "a\u0000"}, "code", "success"),
]


def test_nul_characters_are_refused_in_every_dialect(make_gateway, database_url: str, logged: list) -> None:
    """PostgreSQL cannot store or even compare a text holding NUL: each such request was a 500 there."""
    gateway = make_gateway(database_url)
    with gateway.client(gateway.new_key()) as client:
        for method, path, field, envelope in NUL_IN_URLS:
            answer = client.request(method, path)
            assert answer.status_code == 400, (path, answer.text)
            assert envelope in answer.json() and field in answer.text, (path, answer.text)
        for path, body, field, envelope in NUL_IN_BODIES:
            answer = client.post(path, json=body)
            # A field's value is 422 (invalid input) where the dialect has it; OpenAI's clients expect 400.
            assert answer.status_code == (400 if path.startswith("/v1/") else 422), (path, answer.text)
            assert envelope in answer.json() and field in answer.text and "NUL" in answer.text, (path, answer.text)
        # The same requests without the NUL still work, and the store took no harm.
        answer = client.post("/hub/v1/image", json={"model": "nano-banana", "input": {"prompt": "ab"},
                                                    "user_identifier": "u1"})
        assert answer.status_code == 200, answer.text
        assert client.get(f"/hub/v1/tasks/{answer.json()['task_id']}").status_code == 200
    assert not [r for r in logged if r.levelno >= logging.ERROR], [r.getMessage() for r in logged]


def test_an_upstream_error_text_holding_nul_is_stored_on_every_backend(database_url: str, tmp_path) -> None:
    """An upstream (an aggregator is a third party) may answer with any text; the task still ends."""
    from tidehub.core.auth import create_key
    from tidehub.core.lifecycle import FAILED, finished
    from tidehub.core.ports import UpstreamError
    from tidehub.store import Store

    store = Store(database_url or f"sqlite:///{tmp_path / 'nul.db'}")
    key = create_key(store, name="nul", credits=100)
    error = UpstreamError("refused: \x00bad\x00 bytes", code="upstream_error")
    assert "\x00" not in error.message and "bad" in error.message
    row = {"id": "hub-nul-1", "account_id": key.account_id, "key_id": key.key_id, "model": "m", "endpoint": "e",
           "capability": "image", "mode": "text-to-image", "status": "queued", "input": {}, "held": 0,
           "created_at": 1.0, "updated_at": 1.0, "deadline_at": 2.0, "next_check_at": 1.0}
    with store.engine.begin() as conn:
        from tidehub.store.schema import tasks
        conn.execute(tasks.insert().values(**row))
    store.tasks.claim_due("me", 1.5, 10.0, 1)
    assert store.tasks.fail("hub-nul-1", "me", finished(FAILED, 1.6, code=error.code, message=error.message))
    assert store.tasks.get("hub-nul-1")["error_message"] == error.message
