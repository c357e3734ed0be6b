"""Ids made on the hot paths: a task's (time-ordered), a request's, a relayed call's, a result file's.

All are random from the operating system's CSPRNG, read in blocks: ``os.urandom`` lets go of
the GIL around its system call, so each call on the event loop hands the interpreter to the
database writer thread and waits to get it back. One read of ``_BLOCK`` bytes serves a few hundred
ids.

A task id is a UUID version 7 (RFC 9562: the time in milliseconds, then 74 random bits): rows
inserted one after another sit next to each other in every index keyed by task id (the tasks, their
events, ledger entries), so a commit writes a few index pages where random ids touched one page per
task.
"""

from __future__ import annotations

import base64
import os
import threading
import time

_BLOCK = 4096


class _Pool(threading.local):
    def __init__(self) -> None:
        self.data = b""
        self.at = 0


_pool = _Pool()


def _forget_after_fork() -> None:
    # A forked child would otherwise hand out the very bytes its parent goes on handing out.
    _pool.data, _pool.at = b"", 0


os.register_at_fork(after_in_child=_forget_after_fork)


def random_bytes(n: int) -> bytes:
    """``n`` bytes (at most ``_BLOCK``) from the OS's CSPRNG; each thread reads a block of its own."""
    pool = _pool
    at = pool.at
    if at + n > len(pool.data):
        pool.data, at = os.urandom(_BLOCK), 0
    pool.at = at + n
    return pool.data[at:at + n]


def uuid7() -> str:
    """48 bits of Unix time in milliseconds, version 7, 12 random bits, variant 10, 62 random bits,
    in the canonical text form (the same as ``str(uuid.UUID(...))``, without making the object)."""
    rand = int.from_bytes(random_bytes(10), "big")
    h = "%032x" % ((time.time_ns() // 1_000_000) << 80 | 0x7 << 76 | (rand >> 64 & 0xFFF) << 64
                   | 0b10 << 62 | rand & ((1 << 62) - 1))
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def task_id(prefix: str) -> str:
    return f"{prefix}-{uuid7()}"


def request_id() -> str:
    return "req_" + random_bytes(12).hex()


def sortable_token() -> str:
    """128 bits as 26 characters that sort as they were made: 48 bits of Unix time in milliseconds,
    then 80 random ones, in base32hex (RFC 4648, whose alphabet is in ASCII order), lower case.
    For ids that are a row's key: rows made together land on the same index pages."""
    # 128 bits and 2 zero bits make 13 pairs of characters (``base64.b32hexencode`` of the 16 bytes,
    # unpadded, in a third of the time).
    bits = ((time.time_ns() // 1_000_000) << 80 | int.from_bytes(random_bytes(10), "big")) << 2
    return "".join([_B32HEX_PAIRS[bits >> shift & 0x3FF] for shift in _PAIR_SHIFTS])


_B32HEX = "0123456789abcdefghijklmnopqrstuv"
_B32HEX_PAIRS = [a + b for a in _B32HEX for b in _B32HEX]
_PAIR_SHIFTS = range(120, -1, -10)


def token(n: int) -> str:
    """``n`` random bytes, URL-safe, as ``secrets.token_urlsafe(n)`` makes them."""
    return base64.urlsafe_b64encode(random_bytes(n)).rstrip(b"=").decode("ascii")
