"""Credits for relayed calls: reserved from the database in blocks, spent in memory, recorded in batches.

A relayed call is short and the relay's overhead must stay well under a millisecond, so a call
cannot afford two database transactions of its own. Instead each process holds *credit blocks*:
a block is a running task row (mode ``credit-block``) whose hold was taken like any task's
(``Store.open_task``: key cap and balance checked in one conditional update, so blocks of several
processes can never together overspend). A call reserves its worst-case price from its key's
block in memory, and gives back what it did not use when it ends. Finished calls are written
every few tens of milliseconds, together, each as a settled task row; that same transaction moves
their cost out of the block, from held to spent. A block with nothing in flight is closed after a
short idle time: its rest is released.

If the process dies, the calls of the last few milliseconds are not recorded (they cost the
customer nothing) and the engine releases the blocks once their leases run out.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from tidehub.catalog import Endpoint
from tidehub.config import Settings
from tidehub.core.auth import Principal
from tidehub.errors import Forbidden
from tidehub.core.lifecycle import SUCCEEDED, finished
from tidehub.core.tasks import TaskService
from tidehub.store import Store
from tidehub.store.tasks import CREDIT_BLOCK

log = logging.getLogger("tidehub.wallet")

#: A block reserves this many times the first call's worst case, at least ``MIN_BLOCK`` credits.
BLOCK_CALLS = 50
MIN_BLOCK = 1000


@dataclass
class Block:
    id: str
    account_id: str
    key_id: str
    size: int
    free: int
    opened: float
    in_flight: int = 0
    last_used: float = 0.0
    closing: bool = False


@dataclass
class Reservation:
    """Credits set aside for one call, and the id its record will have."""

    block: Block
    amount: int
    call_id: str = field(default_factory=lambda: f"relay-{uuid.uuid4()}")
    started: float = field(default_factory=time.time)


class Wallet:
    def __init__(self, store: Store, tasks: TaskService, settings: Settings, owner: str) -> None:
        self.store = store
        self.tasks = tasks
        self.settings = settings
        self.owner = owner
        self.blocks: dict[str, list[Block]] = {}  # by key id
        self._locks: dict[str, asyncio.Lock] = {}
        self._rows: list[dict[str, Any]] = []
        self._spent: dict[str, tuple[str, int]] = {}
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None

    # -- reserving and settling ------------------------------------------------------------------

    async def reserve(self, principal: Principal, endpoint: Endpoint, amount: int) -> Reservation:
        block = self._usable(principal.key_id, amount)
        if block is None:
            lock = self._locks.setdefault(principal.key_id, asyncio.Lock())
            async with lock:  # concurrent first calls of a key share the block one of them opens
                block = self._usable(principal.key_id, amount) or await self._open(principal, endpoint, amount)
        block.free -= amount
        block.in_flight += 1
        block.last_used = time.monotonic()
        self._start()
        return Reservation(block, amount)

    def record(self, reservation: Reservation, row: dict[str, Any], charge: int) -> None:
        """A call ended: charge at most what was reserved; its record is written with the next batch."""
        block = reservation.block
        charge = max(0, min(charge, reservation.amount))
        block.free += reservation.amount - charge
        block.in_flight -= 1
        block.last_used = time.monotonic()
        row.update(id=reservation.call_id, held=charge, captured=charge)
        self._rows.append(row)
        account, spent = self._spent.get(block.id, (block.account_id, 0))
        self._spent[block.id] = (account, spent + charge)
        self._wake.set()

    def _usable(self, key_id: str, amount: int) -> Block | None:
        for block in self.blocks.get(key_id, ()):
            if not block.closing and block.free >= amount:
                return block
        return None

    async def _open(self, principal: Principal, endpoint: Endpoint, amount: int) -> Block:
        for size in (max(amount * BLOCK_CALLS, MIN_BLOCK), amount):
            try:
                row = await self.tasks.open_call(principal, endpoint, size, owner=self.owner, mode=CREDIT_BLOCK)
            except Forbidden:
                if size == amount:
                    raise
                continue  # not enough for a whole block: a block of just this call
            block = Block(row["id"], principal.account_id, principal.key_id, size, size, time.monotonic())
            self.blocks.setdefault(principal.key_id, []).append(block)
            return block
        raise AssertionError("unreachable")

    # -- writing ----------------------------------------------------------------------------------

    def _start(self) -> None:
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.get_running_loop().create_task(self._run(), name="tidehub-wallet")

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.settings.relay_block_idle_s / 2)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            await asyncio.sleep(self.settings.relay_flush_s)  # let a batch gather
            try:
                await self.flush()
            except Exception:
                log.exception("writing relayed calls failed; retrying")
                await asyncio.sleep(1.0)
            if not any(self.blocks.values()) and not self._rows:
                return  # nothing left to watch; the next reservation starts it again

    async def flush(self, *, close_all: bool = False) -> None:
        """Write the calls that ended, then close the blocks that are idle (or all, at shutdown)."""
        rows, spent = self._rows, self._spent
        self._rows, self._spent = [], {}
        if rows or spent:
            try:
                await self.store.call(self.store.tasks.record_calls, rows, spent)
            except BaseException:
                self._rows[:0] = rows  # keep them for the next try
                for block_id, (account, amount) in spent.items():
                    self._spent[block_id] = (account, self._spent.get(block_id, (account, 0))[1] + amount)
                raise
        now = time.monotonic()
        for key_id, blocks in list(self.blocks.items()):
            for block in list(blocks):
                idle = now - block.last_used >= self.settings.relay_block_idle_s
                old = now - block.opened >= self.settings.relay_block_max_s
                if block.in_flight == 0 and (close_all or idle or old) and block.id not in self._spent:
                    block.closing = True
                    blocks.remove(block)
                    await self._close(block)
            if not blocks:
                self.blocks.pop(key_id, None)

    async def _close(self, block: Block) -> None:
        now = time.time()
        values = finished(SUCCEEDED, now, progress=100)
        # The block's row holds only what its calls did not spend: all of it goes back.
        await self.store.call(self.store.tasks.complete, block.id, self.owner, values, [], 0)

    async def close(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
        await self.flush(close_all=True)
