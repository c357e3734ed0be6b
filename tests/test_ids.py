"""Ids made on the hot paths (core/ids.py)."""

from __future__ import annotations

import threading
import time

import pytest
import uuid

from tidehub.core import ids


def test_task_ids_are_uuid7_in_time_order() -> None:
    made = []
    for _ in range(5):
        made += [ids.task_id("hub") for _ in range(200)]
        time.sleep(0.002)
    parsed = [uuid.UUID(i.removeprefix("hub-")) for i in made]
    assert all(u.version == 7 and u.variant == uuid.RFC_4122 for u in parsed)
    assert len(set(made)) == len(made)
    # The leading 48 bits are the time in milliseconds: ids of different milliseconds sort in order.
    stamps = [u.int >> 80 for u in parsed]
    assert stamps == sorted(stamps)
    assert abs(stamps[-1] - time.time() * 1000) < 5000
    assert sorted(made, key=lambda i: i[:17]) == made  # the text sorts as the time does, to the millisecond
    assert all(str(u) == i.removeprefix("hub-") for u, i in zip(parsed, made))  # the canonical form


def test_random_bytes_cross_block_boundaries_and_threads() -> None:
    seen = [ids.random_bytes(7) for _ in range(2000)]  # about four blocks
    assert all(len(b) == 7 for b in seen)
    assert len(set(seen)) == len(seen)
    assert len(ids.random_bytes(ids._BLOCK)) == ids._BLOCK
    others: list[bytes] = []
    thread = threading.Thread(target=lambda: others.extend(ids.random_bytes(16) for _ in range(300)))
    thread.start()
    thread.join()
    mine = {ids.random_bytes(16) for _ in range(300)}
    assert len(others) == 300 and not mine & set(others)


def test_request_ids() -> None:
    made = {ids.request_id() for _ in range(1000)}
    assert len(made) == 1000
    assert all(len(i) == 28 and i.startswith("req_") and int(i[4:], 16) >= 0 for i in made)


def test_tokens_are_url_safe_and_as_long_as_secrets_makes_them() -> None:
    import re
    import secrets

    made = {ids.token(16) for _ in range(500)}
    assert len(made) == 500
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{22}", t) for t in made)
    assert len(ids.token(24)) == len(secrets.token_urlsafe(24)) == 32


def test_sortable_tokens_sort_as_they_were_made() -> None:
    import re

    made = []
    for _ in range(4):
        made += [ids.sortable_token() for _ in range(100)]
        time.sleep(0.002)
    assert len(set(made)) == len(made)
    assert all(re.fullmatch(r"[0-9a-v]{26}", t) for t in made)
    # Of different milliseconds, in order: the first 48 bits (nine and a bit characters) are the time.
    assert [t[:9] for t in made] == sorted(t[:9] for t in made)
    import base64
    stamp = int.from_bytes(base64.b32hexdecode(made[-1].upper() + "======")[:6], "big")
    assert abs(stamp - time.time() * 1000) < 5000


def test_a_forked_child_does_not_repeat_its_parents_bytes() -> None:
    import os

    ids.random_bytes(1)  # the parent's block is filled
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next bytes, to the parent
        try:
            os.write(write, ids.random_bytes(32))
        finally:
            os._exit(0)
    os.close(write)
    child = os.read(read, 32)
    os.close(read)
    os.waitpid(pid, 0)
    assert len(child) == 32 and child != ids.random_bytes(32)


def test_sortable_tokens_are_the_base32hex_of_their_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    import base64
    import random

    rng = random.Random(5)
    for _ in range(500):
        raw = bytes(rng.getrandbits(8) for _ in range(10))
        ms = rng.getrandbits(48)
        monkeypatch.setattr(ids, "random_bytes", lambda n: raw)
        monkeypatch.setattr(ids.time, "time_ns", lambda: ms * 1_000_000)
        expected = base64.b32hexencode(ms.to_bytes(6, "big") + raw).rstrip(b"=").decode().lower()
        assert ids.sortable_token() == expected
