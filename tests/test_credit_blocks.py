"""Credit blocks through the real relay path: one key kept busy by many concurrent relayed calls
against the simulator for several block leases, on SQLite and PostgreSQL.

The block lease is short here, so a block outlives it many times over unless the wallet renews it
and retires old blocks; the engine is running and settles any block whose lease it finds expired.
At the end nothing may be held, nothing may be negative, every credit spent must be a call's
record, and no block may have been spent from after the engine settled it."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable

import httpx
import sqlalchemy as sa

from conftest import GatewayServer, wait_for
from tidehub.store.schema import accounts, api_keys, ledger, tasks
from tidehub.store.tasks import CREDIT_BLOCK

LEASE_S = 2.0
BLOCK_MAX_S = 1.5 * LEASE_S
CALLERS = 12
CREDITS = 10**7


async def _keep_busy(url: str, key: str, blocks_opened: Callable[[], int]) -> int:
    """CALLERS clients calling back to back (plain and streamed chat) until the key has gone
    through three blocks and was busy for longer than a block may live; the calls answered."""
    started = time.monotonic()
    answered = 0

    def busy() -> bool:
        if time.monotonic() - started > 60:
            raise AssertionError("the key never went through three credit blocks")
        return time.monotonic() - started < 2 * BLOCK_MAX_S or blocks_opened() < 3

    async def caller(n: int) -> None:
        nonlocal answered
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"caller {n}: tell me a story"}]}
        async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:
            while busy():
                if n % 3:
                    resp = await http.post("/v1/chat/completions", json=body)
                    assert resp.status_code == 200, resp.text
                else:
                    async with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as resp:
                        assert resp.status_code == 200
                        lines = [line async for line in resp.aiter_lines() if line]
                    assert lines[-1] == "data: [DONE]"
                answered += 1

    await asyncio.gather(*(caller(n) for n in range(CALLERS)))
    return answered


def _account(gateway: GatewayServer, account_id: str) -> dict[str, Any]:
    with gateway.gateway.store.engine.connect() as conn:
        return dict(conn.execute(sa.select(accounts).where(accounts.c.id == account_id)).one()._mapping)


def test_a_key_busy_past_the_block_lease_settles_exactly(make_gateway: Any, database_url: str) -> None:
    # The block lease (lease_s) and the chat deadline (x 0.02) are both short, and a block takes
    # calls for longer than its lease: it lives only if its lease is renewed.
    gateway = make_gateway(database_url, more_upstreams=False, lease_s=LEASE_S, deadline_chat_s=LEASE_S / 0.02,
                           relay_block_max_s=BLOCK_MAX_S)
    key = gateway.new_key(credits=CREDITS)
    store = gateway.gateway.store
    with store.engine.connect() as conn:
        key_row = conn.execute(sa.select(api_keys).order_by(api_keys.c.created_at.desc())).first()._mapping
    account_id = key_row["account_id"]

    def blocks_opened() -> int:
        with store.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(tasks).where(
                tasks.c.account_id == account_id, tasks.c.mode == CREDIT_BLOCK)).scalar_one()

    answered = asyncio.run(_keep_busy(gateway.url, key, blocks_opened))

    def settled() -> dict[str, Any] | None:
        with store.engine.connect() as conn:
            live = conn.execute(sa.select(sa.func.count()).select_from(tasks).where(
                tasks.c.account_id == account_id, tasks.c.status.in_(("queued", "running")))).scalar_one()
        return None if live else _account(gateway, account_id)

    account = wait_for(settled, timeout=30, what="every block settled")
    with store.engine.connect() as conn:
        calls = conn.execute(sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(tasks.c.captured), 0))
                             .where(tasks.c.account_id == account_id, tasks.c.mode != CREDIT_BLOCK)).one()
        blocks = [dict(r._mapping) for r in conn.execute(
            sa.select(tasks).where(tasks.c.account_id == account_id, tasks.c.mode == CREDIT_BLOCK))]
        entries = [dict(r._mapping) for r in conn.execute(sa.select(ledger).where(ledger.c.account_id == account_id))]
        key_spent = conn.execute(sa.select(api_keys.c.spent).where(api_keys.c.id == key_row["id"])).scalar_one()
    assert calls[0] == answered > 0
    assert len(blocks) >= 3  # the key outlived its first blocks
    # A block in use outlives its first lease: the wallet renews it, and the engine leaves it alone.
    assert max(b["finished_at"] - b["created_at"] for b in blocks) > LEASE_S
    assert account["held"] == 0
    assert account["credits"] >= 0 and account["spent"] >= 0
    assert account["spent"] == calls[1] == key_spent
    assert account["credits"] + account["spent"] == CREDITS
    # Each block gave back exactly what its calls did not spend: the ledger balances.
    captured = sum(e["amount"] for e in entries if e["kind"] == "capture")
    holds = sum(e["amount"] for e in entries if e["kind"] == "hold")
    releases = sum(e["amount"] for e in entries if e["kind"] == "release")
    assert captured == calls[1] and holds == captured + releases
    assert all(b["held"] >= 0 for b in blocks)
