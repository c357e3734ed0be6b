"""The circuit breaker (core/health.py) on its own: fast, with explicit clocks."""

from __future__ import annotations

from tidehub.core.health import CLOSED, HALF_OPEN, OPEN, BreakerPolicy, ChannelHealth


def opened(now: float = 0.0, **policy: float) -> ChannelHealth:
    health = ChannelHealth(BreakerPolicy(consecutive_failures=2, cool_down_s=10, probe_timeout_s=30, **policy))
    health.record(False, now=now)
    health.record(False, now=now)
    assert health.state == OPEN
    return health


def test_opens_after_consecutive_failures_and_refuses_during_the_cool_down() -> None:
    health = opened()
    assert not health.allows(now=5)
    assert health.allows(now=10) and health.state == HALF_OPEN


def test_one_probe_at_a_time_and_its_outcome_decides() -> None:
    health = opened()
    assert health.allows(now=10)
    probe = health.started(now=10)
    assert probe and not health.allows(now=11)
    health.record(True, now=12)
    assert health.state == CLOSED and health.allows(now=12)

    health = opened(now=20)
    health.allows(now=30)
    health.started(now=30)
    health.record(False, now=31)
    assert health.state == OPEN and not health.allows(now=35)


def test_a_probe_released_without_outcome_lets_the_next_one_through() -> None:
    health = opened()
    health.allows(now=10)
    probe = health.started(now=10)
    health.release(probe)  # a 429, a permanent error, a refused reservation, a cancelled call
    assert health.state == HALF_OPEN and health.allows(now=10.1)


def test_a_late_release_of_an_old_probe_does_not_end_a_newer_one() -> None:
    health = opened()
    health.allows(now=10)
    old = health.started(now=10)
    health.record(False, now=11)  # the old probe failed: open again
    assert health.allows(now=21)
    new = health.started(now=21)
    health.release(old)
    assert health.probe == new and not health.allows(now=22)


def test_a_probe_that_never_reports_back_expires() -> None:
    health = opened()
    health.allows(now=10)
    health.started(now=10)
    assert not health.allows(now=39)
    assert health.allows(now=40)


def test_requests_while_closed_are_not_probes() -> None:
    health = ChannelHealth(BreakerPolicy())
    assert health.started() == 0
    health.release(0)
    assert health.state == CLOSED and health.allows()


def test_error_rate_opens_the_breaker_without_a_run_of_failures() -> None:
    health = ChannelHealth(BreakerPolicy(consecutive_failures=100, min_requests=10, error_rate=0.5))
    for i in range(10):
        health.record(i % 2 == 0, now=float(i))
    assert health.state == OPEN
