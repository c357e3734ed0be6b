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

A block is leased like any running task (``TIDEHUB_LEASE_S``); the writer renews the leases of
the blocks it still uses. A block takes no new call once it is ``relay_block_max_s`` old or
its lease is not safely ahead, so a busy key moves on to a fresh block while the old one drains
and closes. If the engine settled a block all the same (a process stalled past the lease), the
store never spends from it again (``record_calls``).

If the process dies, the calls of the last few milliseconds are not recorded (they cost the
customer nothing) and the engine releases the blocks once their leases run out.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from tidehub.catalog import Endpoint
from tidehub.config import Settings
from tidehub.core import ids
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
    opened: float  # time.monotonic()
    lease_until: float  # time.time(), as last written
    in_flight: int = 0
    last_used: float = 0.0
    closing: bool = False  # takes no new call; closed once its calls are written
    lost: bool = False  # settled by someone else (its lease ran out): never renewed or closed here


@dataclass
class Reservation:
    """Credits set aside for one call, and the id its record will have."""

    block: Block
    amount: int
    # 128 bits, time first, in 26 characters rather than a UUID's 36: the id is the row's key, and
    # calls recorded together then share its index pages.
    call_id: str = field(default_factory=lambda: f"relay-{ids.sortable_token()}")
    started: float = field(default_factory=time.time)


class Wallet:
    def __init__(self, store: Store, tasks: TaskService, settings: Settings, owner: str) -> None:
        self.store = store
        self.tasks = tasks
        self.settings = settings
        self.owner = owner
        self.blocks: dict[str, list[Block]] = {}  # by key id
        self._locks: dict[str, asyncio.Lock] = {}
        self._calls: dict[str, list[dict[str, Any]]] = {}  # finished calls to write, by block id
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
        self._calls.setdefault(block.id, []).append(row)
        self._wake.set()

    def _usable(self, key_id: str, amount: int) -> Block | None:
        now, clock = time.time(), time.monotonic()
        for block in self.blocks.get(key_id, ()):
            if block.closing or block.free < amount:
                continue
            if clock - block.opened >= self.settings.relay_block_max_s or \
                    block.lease_until - now <= self.settings.lease_s / 4:
                block.closing = True  # too old, or its lease is not being renewed: let it drain
                continue
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
            block = Block(row["id"], principal.account_id, principal.key_id, size, size, time.monotonic(),
                          row["lease_until"])
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
                # Not wait_for: on Python 3.11 it swallows a cancel that arrives as the wait ends,
                # and close() would then wait for the writer to run out of blocks.
                async with asyncio.timeout(self._pause()):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            await asyncio.sleep(self.settings.relay_flush_s)  # let a batch gather
            try:
                await self.flush()
            except Exception:
                log.exception("writing relayed calls failed; retrying")
                await asyncio.sleep(1.0)
            if not any(self.blocks.values()) and not self._calls:
                return  # nothing left to watch; the next reservation starts it again

    def _pause(self) -> float:
        """The longest the writer sleeps: idle blocks close in time and leases are renewed well before they end."""
        return min(self.settings.relay_block_idle_s / 2, self.settings.lease_s / 4)

    async def flush(self, *, close_all: bool = False) -> None:
        """Write the calls that ended, renew the leases of the blocks in use, then close the blocks
        that are idle, old or retired (or all, at shutdown)."""
        await self._renew()
        calls, self._calls = self._calls, {}
        if calls:
            # A cancelled wait does not stop the writer thread: the write's own outcome decides
            # whether the calls are kept for the next try (else a cancel mid-write, as at shutdown,
            # had them written twice).
            write = asyncio.ensure_future(self.store.call(self.store.tasks.record_calls, calls))
            try:
                await asyncio.shield(write)
            except BaseException:
                await asyncio.wait([write])
                if write.exception() is not None:
                    for block_id, rows in calls.items():  # keep them for the next try
                        self._calls[block_id] = rows + self._calls.get(block_id, [])
                raise
        now = time.monotonic()
        for key_id, blocks in list(self.blocks.items()):
            for block in list(blocks):
                idle = now - block.last_used >= self.settings.relay_block_idle_s
                old = now - block.opened >= self.settings.relay_block_max_s
                if block.in_flight == 0 and (close_all or idle or old or block.closing) and block.id not in self._calls:
                    block.closing = True
                    blocks.remove(block)
                    if not block.lost:
                        await self._close(block)
            if not blocks:
                self.blocks.pop(key_id, None)

    async def _renew(self) -> None:
        """Extend the lease of every block whose lease is half gone; a block the store no longer
        leases to this process (the engine settled it) takes no more calls."""
        now = time.time()
        due = [b for blocks in self.blocks.values() for b in blocks
               if not b.lost and b.lease_until - now < self.settings.lease_s / 2]
        if not due:
            return
        until = now + self.settings.lease_s
        renewed = await self.store.call(self.store.tasks.renew_leases, [b.id for b in due], self.owner, until)
        for block in due:
            if block.id in renewed:
                block.lease_until = until
            else:
                log.warning("credit block %s was settled while in use (its lease ran out); it takes no more calls",
                            block.id)
                block.closing = block.lost = True

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
