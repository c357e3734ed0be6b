"""The CLI against a data dir a running server is using."""

from __future__ import annotations

import os
import subprocess
import sys


from conftest import GatewayServer, wait_for


def tidehub(*args: str, cwd=None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``env``: run with these and no other TIDEHUB_ settings (none inherited from the test's own)."""
    if env is not None:
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("TIDEHUB_")}, **env}
    return subprocess.run([sys.executable, "-m", "tidehub", *args], capture_output=True, text=True, timeout=60,
                          cwd=cwd, env=env)


def test_keys_create_list_revoke_while_serving(make_gateway) -> None:
    gateway: GatewayServer = make_gateway(key_cache_ttl_s=0.2)
    data = ["--data-dir", str(gateway.settings.data_dir)]
    created = tidehub("keys", "create", "--name", "ci", "--credits", "100000", *data)
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip().splitlines()[-1]
    assert secret.startswith("sk-th-") and len(secret) > 40

    with gateway.client(secret) as c:
        assert c.get("/hub/v1/models").status_code == 200

    listed = tidehub("keys", "list", *data)
    assert listed.returncode == 0 and "ci" in listed.stdout
    assert secret not in listed.stdout  # the secret is shown once, never listed
    key_id = next(row["id"] for row in gateway.gateway.store.keys.list() if row["name"] == "ci")

    # A second key on the same account sees the first key's tasks.
    account = next(row["account_id"] for row in gateway.gateway.store.keys.list() if row["id"] == key_id)
    second = tidehub("keys", "create", "--account", account, *data).stdout.strip().splitlines()[-1]
    with gateway.client(secret) as c:
        task_id = c.post("/hub/v1/image", json={"model": "nano-banana", "input": {"prompt": "x"}}).json()["task_id"]
    with gateway.client(second) as c:
        assert c.get(f"/hub/v1/tasks/{task_id}").status_code == 200

    revoked = tidehub("keys", "revoke", key_id, *data)
    assert revoked.returncode == 0, revoked.stderr
    with gateway.client(secret) as c:
        wait_for(lambda: c.get("/hub/v1/models").status_code == 403, timeout=10, what="revocation")
        assert c.get("/hub/v1/models").json()["error_code"] == "key_revoked"
    again = tidehub("keys", "revoke", key_id, *data)
    assert again.returncode != 0 and "no active key" in again.stderr
    unknown_account = tidehub("keys", "create", "--account", "acct_nope", *data)
    assert unknown_account.returncode != 0 and "no account" in unknown_account.stderr


def test_database_url_flag_and_env(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    created = tidehub("keys", "create", "--database-url", url, cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    assert (tmp_path / "elsewhere.db").exists()


def test_help_lists_commands() -> None:
    out = tidehub("--help").stdout
    for command in ("serve", "keys", "sim"):
        assert command in out


def test_credits_and_codes_commands(gateway: GatewayServer) -> None:
    data = ["--data-dir", str(gateway.settings.data_dir)]
    created = tidehub("keys", "create", "--credits", "500", "--spend-cap", "400", "--expires", "30d",
                      "--models", "nano-banana,veo-3.1", "--ips", "127.0.0.1,10.0.0.0/8", *data)
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip().splitlines()[-1]
    row = gateway.gateway.store.keys.list()[-1]
    assert row["spend_cap"] == 400 and row["allowed_models"] == ["nano-banana", "veo-3.1"]
    assert row["allowed_ips"] == ["127.0.0.1/32", "10.0.0.0/8"] and row["expires_at"] > 0
    account = row["account_id"]

    added = tidehub("credits", "add", account, "250", "--note", "invoice 7", *data)
    assert added.returncode == 0 and "balance 750" in added.stdout, added.stdout + added.stderr
    assert tidehub("credits", "add", "acct_missing", "5", *data).returncode != 0

    made = tidehub("codes", "create", "--credits", "100", "--count", "3", "--expires", "2099-01-01", *data)
    assert made.returncode == 0, made.stderr
    codes = made.stdout.split()
    assert len(codes) == 3 and len(set(codes)) == 3 and all(c.startswith("REDEEM-") for c in codes)
    with gateway.client(secret) as c:
        ok = c.post("/api/user/redemption", json={"code": codes[0]}).json()
        assert ok == {"success": True, "data": {"addedQuota": 100, "totalQuota": 850}}
        assert c.get("/hub/v1/account").json()["balance"] == 850
    bad = tidehub("keys", "create", "--expires", "next week", *data)
    assert bad.returncode != 0 and "span like 30d" in bad.stderr


def test_a_gateway_that_cannot_start_says_why_in_one_line(tmp_path) -> None:
    import socket

    from conftest import free_port

    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held.listen()
    sim_port = held.getsockname()[1]
    try:
        # The demo's simulator port is taken: nothing starts, and the error names the address.
        demo = tidehub("serve", "--demo", "--port", str(free_port()), "--data-dir", str(tmp_path / "demo"),
                       cwd=tmp_path, env={"TIDEHUB_SIM_PORT": str(sim_port)})
    finally:
        held.close()
    assert demo.returncode == 1, demo.stderr
    assert f"127.0.0.1:{sim_port}" in demo.stderr and "TIDEHUB_SIM_PORT" in demo.stderr
    assert "Traceback" not in demo.stderr + demo.stdout and "API key" not in demo.stdout

    # Channel credentials stored under a secret key, and the gateway started without it.
    data = str(tmp_path / "data")
    added = tidehub("channels", "add", "acct", "--base-url", "https://queue.fal.run", "--key", "k", "--data-dir", data,
                    cwd=tmp_path, env={"TIDEHUB_SECRET_KEY": "a-long-secret"})
    assert added.returncode == 0, added.stderr
    serve = tidehub("serve", "--port", str(free_port()), "--data-dir", data, cwd=tmp_path, env={})
    assert serve.returncode == 2, serve.stderr
    assert "TIDEHUB_SECRET_KEY is not set" in serve.stderr and "Traceback" not in serve.stderr
