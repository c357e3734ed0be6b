"""Counting failures per subject (an address, a user name) over a sliding window, to slow down
guessing. In memory, per process: a small fixed cost per attempt, and a restart forgets."""

from __future__ import annotations

import time
from collections import deque


class Throttle:
    """At most ``limit`` failures per subject in any ``window_s`` seconds; past that, ``blocked``
    says for how many seconds more."""

    def __init__(self, limit: int = 10, window_s: float = 300.0, max_subjects: int = 100_000) -> None:
        self.limit = limit
        self.window_s = window_s
        self.max_subjects = max_subjects
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, subject: str, now: float) -> deque[float] | None:
        seen = self._failures.get(subject)
        if seen is None:
            return None
        horizon = now - self.window_s
        while seen and seen[0] <= horizon:
            seen.popleft()
        if not seen:
            del self._failures[subject]
            return None
        return seen

    def blocked(self, *subjects: str, now: float | None = None) -> float:
        """Seconds until every one of ``subjects`` may try again (0: go ahead)."""
        now = time.monotonic() if now is None else now
        wait = 0.0
        for subject in subjects:
            seen = self._recent(subject, now)
            if seen is not None and len(seen) >= self.limit:
                wait = max(wait, seen[0] + self.window_s - now)
        return wait

    def failed(self, *subjects: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if len(self._failures) >= self.max_subjects:
            # Under a flood of distinct subjects, forget the quietest rather than grow without end.
            for subject in list(self._failures)[: self.max_subjects // 10]:
                del self._failures[subject]
        for subject in subjects:
            self._failures.setdefault(subject, deque()).append(now)

    def forget(self, *subjects: str) -> None:
        """A success clears a subject's failures (a person who finally typed it right)."""
        for subject in subjects:
            self._failures.pop(subject, None)
