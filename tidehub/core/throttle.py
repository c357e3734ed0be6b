"""Slowing down guessing: failures counted per subject (a client address, an operator's name) over
a sliding window: failed authentications, redemption attempts and console sign-ins.

A subject that failed ``limit`` times within ``window_s`` seconds is refused (429 with
``Retry-After``) until its oldest failure in the window is older than the window. Successes are
not counted (and may ``forget`` a subject's failures). Counts live in this process's memory: with
several processes each keeps its own (a shared backend, e.g. Redis, can take the place of the
dictionary behind the same calls).

Addresses are bucketed: IPv6 clients count per /64, the block one subscriber usually gets, so
rotating through the addresses of one network does not reset the count; an IPv4-mapped address
counts as its IPv4 address. At most ``max_subjects`` subjects are remembered (the least recently
failing are forgotten first), so a flood of addresses cannot grow memory without bound.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections import OrderedDict, deque

from tidehub.errors import TooManyRequests


class FailureThrottle:
    def __init__(self, limit: int, window_s: float = 60.0, *, what: str = "failed attempts",
                 code: str = "too_many_failures", max_subjects: int = 50_000) -> None:
        self.limit = limit
        self.window_s = window_s
        self.what = what
        self.code = code
        self.max_subjects = max_subjects
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def wait(self, *subjects: str | None, now: float | None = None) -> float:
        """Seconds until every one of ``subjects`` may try again (0: go ahead)."""
        if self.limit <= 0:
            return 0.0
        now = time.monotonic() if now is None else now
        wait = 0.0
        for subject in subjects:
            if subject is None:
                continue
            failures = self._failures.get(bucket(subject))
            if failures is not None and len(failures) >= self.limit:
                wait = max(wait, failures[0] + self.window_s - now)
        return wait

    def check(self, *subjects: str | None) -> None:
        """Raise :class:`TooManyRequests` if any of ``subjects`` is refused now."""
        wait = self.wait(*subjects)
        if wait > 0:
            raise TooManyRequests(f"too many {self.what}; retry in {math.ceil(wait)} s",
                                  code=self.code, details={"retry_after": math.ceil(wait)})

    def failed(self, *subjects: str | None, now: float | None = None) -> None:
        if self.limit <= 0:
            return
        now = time.monotonic() if now is None else now
        for subject in subjects:
            if subject is None:
                continue
            key = bucket(subject)
            failures = self._failures.get(key)
            if failures is None:
                failures = self._failures[key] = deque(maxlen=self.limit)
                if len(self._failures) > self.max_subjects:
                    self._failures.popitem(last=False)
            else:
                self._failures.move_to_end(key)
            failures.append(now)

    def forget(self, *subjects: str | None) -> None:
        """A success clears a subject's failures (a person who finally typed it right)."""
        for subject in subjects:
            if subject is not None:
                self._failures.pop(bucket(subject), None)


def bucket(subject: str) -> str:
    """The unit a subject is counted in: an IPv6 address's /64, an IPv4-mapped address's IPv4."""
    if ":" not in subject:
        return subject
    try:
        address = ipaddress.IPv6Address(subject.split("%", 1)[0])
    except ValueError:
        return subject
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(ipaddress.IPv6Network((address, 64), strict=False))
