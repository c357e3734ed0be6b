"""The CLI against a data dir a running server is using."""

from __future__ import annotations

import subprocess
import sys

import httpx

from conftest import GatewayServer, wait_for


def tidehub(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tidehub", *args], capture_output=True, text=True, timeout=60,
                          cwd=cwd)


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
    key_id = next(row["id"] for row in gateway.gateway.store.list_keys() if row["name"] == "ci")

    # A second key on the same account sees the first key's tasks.
    account = next(row["account_id"] for row in gateway.gateway.store.list_keys() if row["id"] == key_id)
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
