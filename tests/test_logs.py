"""Request ids (X-Request-Id in, out, upstream and on webhooks) and JSON log lines without secrets."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from conftest import SCALE, free_port, free_socket, sim_allowance, wait_for, wait_task
from receivers import Receiver


class ChatUpstream:
    """An OpenAI-compatible upstream on 127.0.0.1 that remembers the headers it was sent."""

    def __init__(self) -> None:
        self.headers: list[dict[str, str]] = []

        async def chat(request: Request) -> JSONResponse:
            self.headers.append(dict(request.headers))
            body = await request.json()
            return JSONResponse({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": body["model"],
                                 "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                                              "finish_reason": "stop"}],
                                 "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}})

        self.sock = free_socket()
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"
        app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=lambda: asyncio.run(self.server.serve(sockets=[self.sock])), daemon=True)
        self.thread.start()
        wait_for(lambda: self.server.started, timeout=10)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}


def test_request_ids_are_kept_made_returned_and_passed_on(make_gateway, sim) -> None:
    upstream, receiver = ChatUpstream(), Receiver()
    try:
        gateway = make_gateway(more_upstreams=False, openai_base_url=upstream.url,
                               ssrf_allow=f"{sim_allowance(sim.base_url)},127.0.0.1")
        with gateway.client(gateway.new_key()) as c:
            kept = c.post("/v1/chat/completions", json=CHAT, headers={"X-Request-Id": "client-id_42.a:b"})
            assert kept.status_code == 200, kept.text
            assert kept.headers["x-request-id"] == "client-id_42.a:b"
            assert upstream.headers[-1]["x-request-id"] == "client-id_42.a:b"
            for bad in ("has space", "x" * 129, "quote\"d", "semi;colon"):
                made = c.post("/v1/chat/completions", json=CHAT, headers={"X-Request-Id": bad})
                assert re.fullmatch(r"req_[0-9a-f]{24}", made.headers["x-request-id"]), made.headers
                assert upstream.headers[-1]["x-request-id"] == made.headers["x-request-id"]
            # Every answer has one, errors and routes outside the dialects included.
            for answer in (c.get("/hub/v1/tasks/hub-none"), c.get("/api/health"), c.get("/nowhere"),
                           httpx.get(f"{gateway.url}/hub/v1/account")):
                assert answer.headers["x-request-id"].startswith("req_"), answer.headers
            # A task's webhook carries the id of the request that submitted it.
            submitted = c.post("/hub/v1/image", headers={"X-Request-Id": "submit-777"},
                               json={"model": "nano-banana", "input": {"prompt": "a kite"}, "webhook_url": receiver.url})
            assert submitted.headers["x-request-id"] == "submit-777"
            wait_task(c, f"/hub/v1/tasks/{submitted.json()['task_id']}", lambda b: b["ready"])
        wait_for(lambda: receiver.received, timeout=30, what="the webhook")
        assert receiver.received[0]["headers"]["x-request-id"] == "submit-777"
    finally:
        upstream.stop()
        receiver.stop()


def test_json_logs_carry_context_and_no_secret(tmp_path: Path, sim) -> None:
    """A real `tidehub serve` with JSON logs: traffic that handles every kind of secret, then every
    line is one JSON object, request and engine lines carry their context, and no secret shows."""
    fal_key = "fal-credential-" + os.urandom(8).hex()
    openai_key = "sk-upstream-" + os.urandom(8).hex()
    admin_token = "admin-token-" + os.urandom(8).hex()
    secret_key = "box-secret-" + os.urandom(8).hex()
    data_dir = tmp_path / "data"
    port = free_port()
    receiver = Receiver()
    env = {
        **os.environ, "TIDEHUB_LOG_FORMAT": "json", "TIDEHUB_ACCESS_LOG": "true",
        "TIDEHUB_FAL_BASE_URL": sim.base_url, "TIDEHUB_FAL_KEY": fal_key,
        "TIDEHUB_OPENAI_BASE_URL": f"{sim.base_url}/v1", "TIDEHUB_OPENAI_KEY": openai_key,
        "TIDEHUB_ADMIN_TOKEN": admin_token, "TIDEHUB_SECRET_KEY": secret_key, "TIDEHUB_TIME_SCALE": str(SCALE),
        "TIDEHUB_SSRF_ALLOW": f"{sim_allowance(sim.base_url)},127.0.0.1", "TIDEHUB_LEASE_S": "3",
    }
    run = [sys.executable, "-m", "tidehub"]
    where = ["--data-dir", str(data_dir)]
    secret = subprocess.run([*run, "keys", "create", "--credits", "100000", *where], env=env, capture_output=True,
                            text=True, timeout=60).stdout.strip().splitlines()[-1]
    password = "operator-password-" + os.urandom(8).hex()
    subprocess.run([*run, "admin", "create", "ops", "--password-stdin", *where], env=env, input=password + "\n",
                   capture_output=True, text=True, timeout=60, check=True)
    code = subprocess.run([*run, "codes", "create", "--credits", "10", "--count", "1", *where], env=env,
                          capture_output=True, text=True, timeout=60).stdout.strip().splitlines()[-1]
    channel_key = "replicate-credential-" + os.urandom(8).hex()
    subprocess.run([*run, "channels", "add", "rep", "--adapter", "replicate", "--base-url",
                    f"{sim.base_url}/replicate/v1", "--key", channel_key, *where], env=env, capture_output=True,
                   timeout=60, check=True)
    log_path = tmp_path / "gateway.log"
    # The simulator knows an upstream account once it is set up.
    assert httpx.put(f"{sim.base_url}/_sim/channels/{openai_key}", json={}).status_code < 300
    # Every fal submit fails for now, so the engine logs its retries (with the task and channel).
    assert httpx.put(f"{sim.base_url}/_sim/channels/{fal_key}", json={"submit_error_rate": 1.0}).status_code < 300
    with log_path.open("w") as log_file:
        proc = subprocess.Popen([*run, "serve", "--port", str(port), *where], env=env, stdout=subprocess.DEVNULL,
                                stderr=log_file)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _healthy(base, proc), timeout=30, what="gateway health")
        auth = {"Authorization": f"Bearer {secret}"}
        with httpx.Client(base_url=base, headers=auth, timeout=30) as c:
            webhook_secret = c.get("/hub/v1/webhooks/secret").json()["secret"]
            task = c.post("/hub/v1/image", json={"model": "nano-banana", "input": {"prompt": "a kite"},
                                                 "webhook_url": receiver.url}).json()["task_id"]
            wait_for(lambda: "retrying" in log_path.read_text(), timeout=30, what="an engine retry line")
            assert httpx.put(f"{sim.base_url}/_sim/channels/{fal_key}", json={"submit_error_rate": 0.0}).status_code < 300
            wait_task(c, f"/hub/v1/tasks/{task}", lambda b: b["ready"])
            assert c.post("/v1/chat/completions", json=CHAT).status_code == 200
            assert c.post("/api/user/redemption", json={"code": code}).status_code == 200
            assert c.get("/hub/v1/account", headers={"Authorization": "Bearer sk-th-not-a-real-key-at-all"}).status_code == 401
            assert c.get("/admin/v1/channels", headers={"Authorization": f"Bearer {admin_token}"}).status_code == 200
            assert c.get("/metrics", headers={"Authorization": f"Bearer {admin_token}"}).status_code == 200
        with httpx.Client(base_url=base, timeout=30) as browser:
            form = browser.get("/console/login").text
            csrf = re.search(r'name="csrf_token" value="([^"]+)"', form).group(1)
            signed_in = browser.post("/console/login", data={"name": "ops", "password": password, "csrf_token": csrf})
            assert signed_in.status_code in (200, 303), signed_in.text[:300]
            assert browser.post("/console/login", data={"name": "ops", "password": password + "x",
                                                        "csrf_token": csrf}).status_code in (200, 303, 401, 403, 422)
        wait_for(lambda: receiver.received, timeout=30, what="the webhook")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        receiver.stop()
    text = log_path.read_text()
    lines = [orjson.loads(line) for line in text.splitlines() if line.strip()]
    assert lines, "the gateway logged nothing"
    for line in lines:
        assert {"timestamp", "level", "logger", "message"} <= set(line), line
    requests = [line for line in lines if line["logger"] == "tidehub.access"]
    assert requests and all(re.fullmatch(r"req_[0-9a-f]{24}", line["request_id"]) for line in requests)
    engine = [line for line in lines if "retrying" in line["message"]]
    assert engine and all(line.get("task_id") == task and line.get("channel") in ("fal", "rep") for line in engine), engine
    for value in (secret, fal_key, openai_key, admin_token, secret_key, password, code, channel_key, webhook_secret,
                  "sk-th-not-a-real-key-at-all"):
        assert value not in text, f"a secret shows in the log: {value[:12]}..."
        assert value[6:] not in text


def _healthy(base: str, proc: subprocess.Popen) -> bool:
    if proc.poll() is not None:
        raise AssertionError("the gateway exited")
    try:
        return httpx.get(f"{base}/api/health", timeout=1).status_code == 200
    except httpx.TransportError:
        return False



def test_log_lines_are_scrubbed_of_what_looks_like_a_secret() -> None:
    import logging

    from tidehub.logs import JSONFormatter, TextFormatter

    record = logging.LogRecord("tidehub.test", logging.WARNING, __file__, 1, "upstream said %s", (
        "Authorization: Bearer sk-th-abcdef123456 and whsec_abcdefgh12 (key key_0123abcd)",), None)
    for formatter in (JSONFormatter(), TextFormatter()):
        line = formatter.format(record)
        assert "abcdef123456" not in line and "abcdefgh12" not in line
        assert "key_0123abcd" in line  # ids are not secrets
    assert orjson.loads(JSONFormatter().format(record))["level"] == "warning"
