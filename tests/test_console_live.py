"""The console on a real gateway with the simulator upstream: results previewed on a task's page,
the channel Test button, and the operator CLI working while the server runs."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from typing import Any

import httpx

from conftest import GatewayServer, wait_task
from console_client import ConsoleClient


def tidehub(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tidehub", *args], capture_output=True, text=True, timeout=60,
                          input=stdin)


def browser(gateway: GatewayServer) -> ConsoleClient:
    return ConsoleClient(httpx.AsyncClient(base_url=gateway.url, timeout=30))


def finished(client: httpx.Client, task_id: str) -> dict[str, Any]:
    return wait_task(client, f"/hub/v1/tasks/{task_id}", lambda t: t["status"] not in ("pending", "processing"))


async def test_operator_cli_while_the_server_runs(gateway: GatewayServer) -> None:
    data = ["--data-dir", str(gateway.settings.data_dir)]
    created = tidehub("admin", "create", "ops", "--role", "viewer", *data)
    assert created.returncode == 0, created.stderr
    password = created.stdout.strip().splitlines()[-1]
    assert len(password) >= 16 and "created viewer" in created.stderr and password not in created.stderr
    duplicate = tidehub("admin", "create", "ops", *data)
    assert duplicate.returncode == 2 and "exists already" in duplicate.stderr
    chosen = tidehub("admin", "create", "lead", "--password-stdin", *data, stdin="a-chosen-password-1\n")
    assert chosen.returncode == 0 and chosen.stdout.strip() == ""
    assert tidehub("admin", "create", "short", "--password-stdin", *data, stdin="short\n").returncode == 2
    listed = tidehub("admin", "list", *data)
    assert "ops" in listed.stdout and "viewer" in listed.stdout and "lead" in listed.stdout

    ops = browser(gateway)
    try:
        assert (await ops.sign_in("ops", password)).status_code == 303
        assert (await ops.get("/console/channels")).status_code == 200
        lead = browser(gateway)
        assert (await lead.sign_in("lead", "a-chosen-password-1")).status_code == 303
        await lead.aclose()

        reset = tidehub("admin", "reset-password", "ops", *data)
        assert reset.returncode == 0
        new_password = reset.stdout.strip().splitlines()[-1]
        assert new_password != password
        # The reset ended the old session; the new password opens a new one.
        assert (await ops.get("/console/channels")).status_code == 303
        assert (await ops.sign_in("ops", password)).status_code == 401
        assert (await ops.sign_in("ops", new_password)).status_code == 303

        disabled = tidehub("admin", "disable", "ops", *data)
        assert disabled.returncode == 0, disabled.stderr
        assert (await ops.get("/console/channels")).status_code == 303
        assert (await ops.sign_in("ops", new_password)).status_code == 401
        assert tidehub("admin", "disable", "nobody", *data).returncode == 2
    finally:
        await ops.aclose()

    # The CLI's changes are in the audit log, as the CLI's.
    admin = browser(gateway)
    try:
        _, admin_password = gateway.gateway.operators.create("boss", "admin")
        await admin.sign_in("boss", admin_password)
        key = tidehub("keys", "create", "--name", "from-cli", "--credits", "10", *data)
        assert key.returncode == 0, key.stderr
        entries = (await admin.get("/console/audit?format=json")).json()["entries"]
        mine = {(e["actor"], e["action"], e["target"]) for e in entries}
        for action, target in (("operator.create", "ops"), ("operator.reset_password", "ops"),
                               ("operator.disable", "ops"), ("operator.create", "lead")):
            assert ("cli", action, target) in mine
        assert any(e["actor"] == "cli" and e["action"] == "key.create" for e in entries)
    finally:
        await admin.aclose()


async def test_task_pages_preview_images_video_audio_and_transcripts(gateway: GatewayServer) -> None:
    secret = gateway.new_key()
    submitted = {}
    with gateway.client(secret) as api:
        for capability, model, body in (
            ("image", "nano-banana", {"prompt": "a lighthouse"}),
            ("video", "veo-3.1", {"prompt": "waves"}),
            ("audio", "elevenlabs-music", {"prompt": "lofi", "music_length_ms": 10000}),
            ("transcribe", "whisper-v3", {"audio_url": "https://example.com/talk.mp3"}),
        ):
            response = api.post(f"/hub/v1/{capability}", json={"model": model, "input": body})
            assert response.status_code == 200, response.text
            submitted[capability] = response.json()["task_id"]
        done = await asyncio.to_thread(lambda: {c: finished(api, t) for c, t in submitted.items()})
    assert {t["status"] for t in done.values()} == {"completed"}, done

    customer = browser(gateway)
    try:
        assert (await customer.sign_in_with_key(secret)).status_code == 303
        pages = {c: (await customer.get(f"/console/tasks/{t}")).text for c, t in submitted.items()}
    finally:
        await customer.aclose()
    files = rf'{re.escape(gateway.settings.base_url)}/files/[^"]+'
    assert re.search(rf'<img src="{files}"', pages["image"])
    assert re.search(rf'<video controls preload="metadata" src="{files}"', pages["video"])
    assert re.search(rf'<audio controls preload="metadata" src="{files}"', pages["audio"])
    assert "Transcript" in pages["transcribe"] and done["transcribe"]["data"]["text"][:40] in pages["transcribe"]
    # The preview's file is there to load.
    url = re.search(rf'<img src="({files})"', pages["image"]).group(1)
    assert httpx.get(url).status_code == 200


async def test_the_channel_test_button_answers_in_place(gateway: GatewayServer) -> None:
    gw = gateway.gateway
    _, password = gw.operators.create("ops", "admin")
    channel = next(ch for ch in gw.router.channels.values() if ch.name == "replicate")
    admin = browser(gateway)
    try:
        await admin.sign_in("ops", password)
        await admin.get("/console/channels")
        page = await admin.get(f"/console/channels/{channel.id}")
        served = re.findall(r'<option value="([^"]+)">', page.text)
        assert served, "the Test form offers the endpoints the channel serves"
        slug = next((s for s in served if "image" in s), served[0])
        answer = await admin.http.post(f"/console/channels/{channel.id}/test", data={"endpoint": slug},
                                       headers={"HX-Request": "true", "X-CSRF-Token": admin.csrf})
        assert answer.status_code == 200
        assert answer.text.lstrip().startswith('<div class="notice ok"'), answer.text  # a fragment, not a page
        assert "replicate: ok" in answer.text and "submit" in answer.text
        wrong = await admin.http.post(f"/console/channels/{channel.id}/test", data={"endpoint": "no/such"},
                                      headers={"HX-Request": "true", "X-CSRF-Token": admin.csrf})
        assert wrong.status_code == 200 and "failed" in wrong.text and "does not serve" in wrong.text
        # Without htmx, the same button gives the channel's page with the result on it.
        plain = await admin.post(f"/console/channels/{channel.id}/test", {"endpoint": slug})
        assert plain.status_code == 200 and "<!doctype html>" in plain.text and "replicate: ok" in plain.text
    finally:
        await admin.aclose()
