"""Slowing down guessing: failed authentications and redemption attempts, counted per client address.

A client address that failed ``limit`` times within ``window_s`` seconds is refused (429 with
``Retry-After``) until its oldest failure in the window is older than the window. Successes are
not counted. Counts live in this process's memory: with several processes each keeps its own (a
shared backend, e.g. Redis, can take the place of :class:`FailureThrottle`'s two dictionaries
behind the same ``check``/``failed`` calls).

IPv6 clients are counted per /64, the block one subscriber usually gets, so rotating through the
addresses of one network does not reset the count. At most ``max_clients`` addresses are
remembered (the least recently failing are forgotten first), so a flood of addresses cannot grow
memory without bound.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections import OrderedDict, deque

from tidehub.errors import TooManyRequests


class FailureThrottle:
    def __init__(self, limit: int, window_s: float = 60.0, *, what: str = "failed attempts",
                 max_clients: int = 50_000) -> None:
        self.limit = limit
        self.window_s = window_s
        self.what = what
        self.max_clients = max_clients
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def check(self, client: str | None) -> None:
        """Raise :class:`TooManyRequests` if ``client`` is refused now."""
        if self.limit <= 0 or client is None:
            return
        failures = self._failures.get(_bucket(client))
        if failures is None or len(failures) < self.limit:
            return
        wait = failures[0] + self.window_s - time.monotonic()
        if wait > 0:
            raise TooManyRequests(f"too many {self.what} from this address; retry in {math.ceil(wait)} s",
                                  code="too_many_failures", details={"retry_after": math.ceil(wait)})

    def failed(self, client: str | None) -> None:
        if self.limit <= 0 or client is None:
            return
        key = _bucket(client)
        failures = self._failures.get(key)
        if failures is None:
            failures = self._failures[key] = deque(maxlen=self.limit)
            if len(self._failures) > self.max_clients:
                self._failures.popitem(last=False)
        else:
            self._failures.move_to_end(key)
        failures.append(time.monotonic())


def _bucket(client: str) -> str:
    if ":" not in client:
        return client
    try:
        address = ipaddress.IPv6Address(client.split("%", 1)[0])
    except ValueError:
        return client
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(ipaddress.IPv6Network((address, 64), strict=False))
