"""Per-channel health: a rolling window of outcomes and a circuit breaker.

The breaker opens on sustained failure (several failures in a row, or a high error rate over
enough recent requests), refuses traffic for a cool-down, then lets one probe through (half-open):
a success closes it, a failure opens it again. Only upstream trouble counts as failure (connection
errors, timeouts, 5xx, retryable run failures); a client's bad input says nothing about a channel.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


@dataclass
class BreakerPolicy:
    window_s: float = 60.0
    min_requests: int = 10
    error_rate: float = 0.5
    consecutive_failures: int = 5
    cool_down_s: float = 30.0


@dataclass
class ChannelHealth:
    policy: BreakerPolicy = field(default_factory=BreakerPolicy)
    state: str = CLOSED
    consecutive_failures: int = 0
    opened_at: float = 0.0
    probing: bool = False
    # (when, ok, latency seconds)
    events: deque[tuple[float, bool, float]] = field(default_factory=deque)

    def allows(self, now: float | None = None) -> bool:
        """May a new request go to this channel now? In half-open state, one probe at a time."""
        now = time.monotonic() if now is None else now
        if self.state == OPEN and now - self.opened_at >= self.policy.cool_down_s:
            self.state, self.probing = HALF_OPEN, False
        if self.state == CLOSED:
            return True
        if self.state == HALF_OPEN and not self.probing:
            return True
        return False

    def started(self) -> None:
        """A request was sent: in half-open state it is the probe."""
        if self.state == HALF_OPEN:
            self.probing = True

    def record(self, ok: bool, latency_s: float = 0.0, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self.events.append((now, ok, latency_s))
        self._trim(now)
        if ok:
            self.consecutive_failures = 0
            if self.state == HALF_OPEN:
                self.state, self.probing = CLOSED, False
            return
        self.consecutive_failures += 1
        if self.state == HALF_OPEN or self._failing():
            self.state, self.opened_at, self.probing = OPEN, now, False

    def _failing(self) -> bool:
        if self.consecutive_failures >= self.policy.consecutive_failures:
            return True
        requests, errors = self.counts()
        return requests >= self.policy.min_requests and errors / requests >= self.policy.error_rate

    def _trim(self, now: float) -> None:
        horizon = now - self.policy.window_s
        while self.events and self.events[0][0] < horizon:
            self.events.popleft()

    def counts(self) -> tuple[int, int]:
        return len(self.events), sum(1 for _, ok, _ in self.events if not ok)

    def latency_ms(self) -> float | None:
        oks = [lat for _, ok, lat in self.events if ok]
        return round(1000 * sum(oks) / len(oks), 1) if oks else None

    def snapshot(self) -> dict[str, object]:
        self._trim(time.monotonic())
        requests, errors = self.counts()
        self.allows()  # let a finished cool-down show as half-open
        return {
            "state": self.state,
            "requests": requests,
            "errors": errors,
            "consecutive_failures": self.consecutive_failures,
            "latency_ms": self.latency_ms(),
        }
