"""Per-channel health: a rolling window of outcomes and a circuit breaker.

The breaker opens on sustained failure (several failures in a row, or a high error rate over
enough recent requests), refuses traffic for a cool-down, then lets one probe through (half-open):
a success closes it, a failure opens it again. Only upstream trouble counts as failure (connection
errors, timeouts, 5xx, retryable run failures); a client's bad input says nothing about a channel.

Every path that starts a probe ends it: with an outcome (``record``), or without one (``release``:
a 429, a permanent error, a refused reservation, a cancelled call), after which the next request
is the probe. A probe that never reports back expires after ``probe_timeout_s``. Probes carry a
token, so a late ``release`` of an old probe never ends a newer one.
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
    # A half-open probe with no outcome after this long no longer blocks the next one.
    probe_timeout_s: float = 60.0


@dataclass
class ChannelHealth:
    policy: BreakerPolicy = field(default_factory=BreakerPolicy)
    state: str = CLOSED
    consecutive_failures: int = 0
    opened_at: float = 0.0
    probing: bool = False
    probe_started: float = 0.0
    # Identifies the probe in flight; 0 when none.
    probe: int = 0
    _probes: int = 0
    # (when, ok, latency seconds)
    events: deque[tuple[float, bool, float]] = field(default_factory=deque)
    # Shared between processes (core/channel_state.py): a half-open breaker probes only once it
    # holds the one probe grant of all processes.
    gated: bool = False
    granted: bool = False

    def allows(self, now: float | None = None) -> bool:
        """May a new request go to this channel now? In half-open state, one probe at a time."""
        now = time.monotonic() if now is None else now
        if self.state == OPEN and now - self.opened_at >= self.policy.cool_down_s:
            self.state = HALF_OPEN
            self._end_probe()
        if self.state == CLOSED:
            return True
        if self.state == HALF_OPEN and self.probing and now - self.probe_started >= self.policy.probe_timeout_s:
            self._end_probe()  # it never reported back: let another one try
        return self.state == HALF_OPEN and not self.probing and (self.granted or not self.gated)

    def wants_grant(self) -> bool:
        """Half-open, shared, and free to probe but for the grant."""
        self.allows()
        return self.gated and self.state == HALF_OPEN and not self.probing and not self.granted

    def started(self, now: float | None = None) -> int:
        """A request is about to go out: in half-open state it is the probe. Returns the probe's
        token (0 when it is not a probe), for ``release``."""
        if self.state != HALF_OPEN:
            return 0
        self._probes += 1
        self.probing, self.probe, self.probe_started = True, self._probes, time.monotonic() if now is None else now
        return self.probe

    def release(self, probe: int) -> None:
        """The request ``started`` returned ``probe`` for ended without an outcome that tells
        anything about the channel; if it is still the probe in flight, the next request may probe."""
        if probe and probe == self.probe:
            self._end_probe()

    def _end_probe(self) -> None:
        self.probing, self.probe, self.granted = False, 0, False

    def force_open(self, remaining_s: float) -> None:
        """Another process opened the breaker: open here too, its cool-down ending with theirs."""
        self.state = OPEN
        self.opened_at = time.monotonic() - max(0.0, self.policy.cool_down_s - max(0.0, remaining_s))
        self._end_probe()

    def force_close(self) -> None:
        """Another process's probe succeeded."""
        self.state, self.consecutive_failures = CLOSED, 0
        self._end_probe()

    def record(self, ok: bool, latency_s: float = 0.0, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self.events.append((now, ok, latency_s))
        self._trim(now)
        if ok:
            self.consecutive_failures = 0
            if self.state == HALF_OPEN:
                self.state = CLOSED
                self._end_probe()
            return
        self.consecutive_failures += 1
        if self.state == HALF_OPEN or self._failing():
            self.state, self.opened_at = OPEN, now
            self._end_probe()

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
