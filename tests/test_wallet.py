"""The relay's wallet (core/wallet.py) on its own, over a real SQLite store: credit blocks held,
spent from, renewed, retired and closed, and what happens when the engine settled a block first.

The wallet's own writer never runs on its own here (its pauses are an hour): each test flushes
when it wants the calls written, and moves a block's clocks by hand instead of waiting."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import sqlalchemy as sa

from tidehub.catalog.models import Endpoint
from tidehub.catalog.pricing import PriceRule
from tidehub.config import Settings
from tidehub.core.auth import Principal, create_key
from tidehub.core.lifecycle import TIMEOUT
from tidehub.core.ssrf import URLGuard
from tidehub.core.tasks import TaskService
from tidehub.core.wallet import BLOCK_CALLS, MIN_BLOCK, Wallet
from tidehub.errors import Forbidden
from tidehub.store import Store
from tidehub.store.schema import accounts, api_keys, ledger, metadata, tasks
from tidehub.store.tasks import CREDIT_BLOCK

CHAT = Endpoint(slug="test/chat", model="test-chat", hub_ids=("test-chat",), capability="chat", mode="sync",
                vendor="test", title="", description="", tags=(), upstream={}, timing={}, input_schema={},
                output_schema={}, examples=[], price=PriceRule({"unit": "1k_tokens", "credits": 1}))
HOUR = 3600.0


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store(f"sqlite:///{tmp_path / 'wallet.db'}", run_migrations=False)
    metadata.create_all(store.engine)  # the migrations build exactly this (tests/test_store.py)
    yield store
    store.close()


def make_wallet(store: Store, tmp_path: Path, **settings: Any) -> Wallet:
    values = {"data_dir": tmp_path, "relay_flush_s": HOUR, "relay_block_idle_s": HOUR, "lease_s": HOUR, **settings}
    config = Settings(**values)
    return Wallet(store, TaskService(store, config, URLGuard()), config, owner="wallet-test")


def principal(store: Store, credits: int, **limits: Any) -> Principal:
    key = create_key(store, name="t", credits=credits, **limits)
    return Principal(key.key_id, key.account_id)


def account(store: Store, who: Principal) -> dict[str, Any]:
    with store.engine.connect() as conn:
        row = dict(conn.execute(sa.select(accounts).where(accounts.c.id == who.account_id)).one()._mapping)
        row["key_spent"] = conn.execute(sa.select(api_keys.c.spent).where(api_keys.c.id == who.key_id)).scalar_one()
        row["calls"] = [dict(r._mapping) for r in conn.execute(
            sa.select(tasks).where(tasks.c.account_id == who.account_id, tasks.c.mode != CREDIT_BLOCK))]
        row["blocks"] = [dict(r._mapping) for r in conn.execute(
            sa.select(tasks).where(tasks.c.account_id == who.account_id, tasks.c.mode == CREDIT_BLOCK))]
        row["ledger"] = [dict(r._mapping) for r in conn.execute(
            sa.select(ledger).where(ledger.c.account_id == who.account_id))]
    return row


def call_row(wallet: Wallet, who: Principal) -> dict[str, Any]:
    row = wallet.tasks.call_row(who, CHAT)
    now = time.time()
    row.update(status="succeeded", started_at=now, finished_at=now, progress=100)
    return row


def balanced(row: dict[str, Any], credits: int) -> None:
    """Nothing held, nothing negative, what was spent is the calls' records, money is conserved."""
    spent = sum(c["captured"] for c in row["calls"])
    assert row["held"] == 0 and row["credits"] >= 0
    assert row["spent"] == spent == row["key_spent"]
    assert row["credits"] + row["spent"] == credits
    kinds = {kind: sum(e["amount"] for e in row["ledger"] if e["kind"] == kind) for kind in ("hold", "capture", "release")}
    assert kinds["capture"] == spent and kinds["hold"] == kinds["capture"] + kinds["release"]


async def test_a_block_is_held_spent_from_and_closed(store: Store, tmp_path: Path) -> None:
    wallet = make_wallet(store, tmp_path)
    who = principal(store, 100_000)
    first = await wallet.reserve(who, CHAT, 40)
    size = max(40 * BLOCK_CALLS, MIN_BLOCK)
    assert account(store, who)["held"] == size  # one hold for the whole block, not for the call
    second = await wallet.reserve(who, CHAT, 40)
    assert second.block is first.block and first.block.free == size - 80
    wallet.record(first, call_row(wallet, who), 25)
    wallet.record(second, call_row(wallet, who), 500)  # never more than was reserved
    assert first.block.free == size - 65 and first.block.in_flight == 0
    await wallet.flush()
    row = account(store, who)
    assert sorted(c["captured"] for c in row["calls"]) == [25, 40]
    assert row["held"] == size - 65 and row["spent"] == 65 and row["blocks"][0]["status"] == "running"
    await wallet.close()
    row = account(store, who)
    assert row["blocks"][0]["status"] == "succeeded" and not wallet.blocks
    balanced(row, 100_000)


async def test_concurrent_first_calls_of_a_key_share_one_block(store: Store, tmp_path: Path) -> None:
    wallet = make_wallet(store, tmp_path)
    who = principal(store, 100_000)
    reservations = await asyncio.gather(*(wallet.reserve(who, CHAT, 10) for _ in range(20)))
    assert len({id(r.block) for r in reservations}) == 1
    assert len(account(store, who)["blocks"]) == 1
    for r in reservations:
        wallet.record(r, call_row(wallet, who), 10)
    await wallet.close()
    balanced(account(store, who), 100_000)


async def test_a_small_balance_gets_a_block_of_one_call_then_a_refusal(store: Store, tmp_path: Path) -> None:
    wallet = make_wallet(store, tmp_path)
    who = principal(store, 150)
    first = await wallet.reserve(who, CHAT, 100)  # a whole block (5,000) does not fit: one of 100
    assert first.block.size == 100
    with pytest.raises(Forbidden) as refused:
        await wallet.reserve(who, CHAT, 100)
    assert refused.value.code == "insufficient_credits"
    wallet.record(first, call_row(wallet, who), 0)  # a failed call costs nothing
    await wallet.close()
    row = account(store, who)
    assert row["credits"] == 150
    balanced(row, 150)


async def test_a_key_spend_cap_limits_blocks_too(store: Store, tmp_path: Path) -> None:
    wallet = make_wallet(store, tmp_path)
    who = principal(store, 100_000, spend_cap=300)
    await wallet.reserve(who, CHAT, 200)
    with pytest.raises(Forbidden) as refused:
        await wallet.reserve(who, CHAT, 200)
    assert refused.value.code == "key_spend_cap"
    await wallet.close()


async def test_an_old_block_takes_no_new_call_and_closes_once_drained(store: Store, tmp_path: Path) -> None:
    wallet = make_wallet(store, tmp_path, relay_block_max_s=60)
    who = principal(store, 100_000)
    old = await wallet.reserve(who, CHAT, 10)
    old.block.opened -= 61  # a minute old
    fresh = await wallet.reserve(who, CHAT, 10)
    assert fresh.block is not old.block and old.block.closing
    await wallet.flush()  # the old block still has a call in flight: it stays open
    assert [b["status"] for b in account(store, who)["blocks"]] == ["running", "running"]
    wallet.record(old, call_row(wallet, who), 7)
    await wallet.flush()
    statuses = {b["id"]: b["status"] for b in account(store, who)["blocks"]}
    assert statuses == {old.block.id: "succeeded", fresh.block.id: "running"}
    wallet.record(fresh, call_row(wallet, who), 3)
    await wallet.close()
    balanced(account(store, who), 100_000)


async def test_leases_of_blocks_in_use_are_renewed(store: Store, tmp_path: Path) -> None:
    wallet = make_wallet(store, tmp_path, lease_s=60)
    who = principal(store, 100_000)
    call = await wallet.reserve(who, CHAT, 10)
    opened = account(store, who)["blocks"][0]["lease_until"]
    assert opened == pytest.approx(time.time() + 60, abs=5)
    await wallet.flush()  # most of the lease is left: nothing to write
    assert account(store, who)["blocks"][0]["lease_until"] == opened
    call.block.lease_until = time.time() + 20  # two thirds of it gone
    await wallet.flush()
    renewed = account(store, who)["blocks"][0]
    assert renewed["lease_until"] > opened and renewed["next_check_at"] == renewed["lease_until"]
    assert call.block.lease_until == renewed["lease_until"]
    wallet.record(call, call_row(wallet, who), 10)
    await wallet.close()


async def test_a_block_whose_lease_is_not_safely_ahead_takes_no_new_call(store: Store, tmp_path: Path) -> None:
    wallet = make_wallet(store, tmp_path, lease_s=60)
    who = principal(store, 100_000)
    first = await wallet.reserve(who, CHAT, 10)
    first.block.lease_until = time.time() + 5  # renewals have not kept up
    second = await wallet.reserve(who, CHAT, 10)
    assert second.block is not first.block and first.block.closing
    for r in (first, second):
        wallet.record(r, call_row(wallet, who), 10)
    await wallet.close()
    balanced(account(store, who), 100_000)


async def settle_as_the_engine(store: Store, block_id: str) -> None:
    """What the engine does to a block whose lease it found expired: end it, releasing its rest."""
    assert await store.call(store.tasks.end_active, block_id, TIMEOUT, "timeout", "lease ran out", time.time())


async def test_a_block_the_engine_settled_is_never_spent_from(store: Store, tmp_path: Path) -> None:
    wallet = make_wallet(store, tmp_path)
    who = principal(store, 100_000)
    early = await wallet.reserve(who, CHAT, 30)
    late = await wallet.reserve(who, CHAT, 30)
    wallet.record(early, call_row(wallet, who), 30)
    await wallet.flush()
    block = early.block
    await settle_as_the_engine(store, block.id)
    row = account(store, who)
    assert row["held"] == 0 and row["credits"] == 100_000 - 30  # the rest went back
    # The call still in flight ends: its charge comes from the balance, the block is left alone.
    wallet.record(late, call_row(wallet, who), 20)
    block.lease_until = time.time()  # due for renewal: the wallet learns the block is gone
    await wallet.flush()
    row = account(store, who)
    assert block.lost and block not in wallet.blocks.get(who.key_id, [])
    assert row["blocks"][0]["held"] == block.size - 30  # what it held when it was settled
    balanced(row, 100_000)
    late_row = next(c for c in row["calls"] if c["id"] == late.call_id)
    assert late_row["held"] == late_row["captured"] == 20
    assert {e["kind"] for e in row["ledger"] if e["task_id"] == late.call_id} == {"hold", "capture"}
    # The next call opens a new block.
    again = await wallet.reserve(who, CHAT, 30)
    assert again.block is not block
    wallet.record(again, call_row(wallet, who), 5)
    await wallet.close()
    balanced(account(store, who), 100_000)


async def test_a_call_of_a_settled_block_the_balance_cannot_pay_is_free(store: Store, tmp_path: Path) -> None:
    wallet = make_wallet(store, tmp_path)
    who = principal(store, 1000)
    call = await wallet.reserve(who, CHAT, 1000)  # the whole balance
    await settle_as_the_engine(store, call.block.id)
    with store.engine.begin() as conn:  # the released credits were spent elsewhere in the meantime
        conn.execute(sa.update(accounts).where(accounts.c.id == who.account_id).values(credits=400, spent=600))
    wallet.record(call, call_row(wallet, who), 500)
    await wallet.close()
    row = account(store, who)
    assert row["credits"] == 400 and row["held"] == 0 and row["spent"] == 600
    assert [c["captured"] for c in row["calls"]] == [0]


async def test_calls_that_could_not_be_written_are_kept_for_the_next_flush(store: Store, tmp_path: Path) -> None:
    wallet = make_wallet(store, tmp_path)
    who = principal(store, 100_000)
    call = await wallet.reserve(who, CHAT, 10)
    bad = call_row(wallet, who)
    bad["status"] = None  # the row cannot be written: status is NOT NULL
    wallet.record(call, bad, 10)
    with pytest.raises(sa.exc.IntegrityError):
        await wallet.flush()
    assert account(store, who)["calls"] == [] and wallet._calls  # nothing half written, nothing lost
    bad["status"] = "succeeded"
    await wallet.close()
    row = account(store, who)
    assert [c["captured"] for c in row["calls"]] == [10]
    balanced(row, 100_000)


async def test_a_flush_cancelled_while_its_write_runs_writes_the_calls_once(store: Store, tmp_path: Path) -> None:
    """Shutdown cancels the wallet's writer, perhaps while the writer thread is committing its batch:
    the thread finishes the write all the same, so the calls must not be kept to be written again."""
    wallet = make_wallet(store, tmp_path)
    who = principal(store, 100_000)
    calls = [await wallet.reserve(who, CHAT, 10) for _ in range(3)]
    for call in calls:
        wallet.record(call, call_row(wallet, who), 7)
    started, release = threading.Event(), threading.Event()
    commit = store.writer._commit

    def held_commit(writes: Any) -> Any:
        started.set()
        release.wait(10)
        return commit(writes)

    store.writer._commit = held_commit  # type: ignore[method-assign]
    flushing = asyncio.ensure_future(wallet.flush())
    assert await asyncio.to_thread(started.wait, 10)
    flushing.cancel()
    await asyncio.sleep(0.05)
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await flushing
    store.writer._commit = commit  # type: ignore[method-assign]
    assert not wallet._calls  # written: nothing kept for another try
    await wallet.close()  # no second write of the same calls
    row = account(store, who)
    assert sorted(c["captured"] for c in row["calls"]) == [7, 7, 7]
    balanced(row, 100_000)
