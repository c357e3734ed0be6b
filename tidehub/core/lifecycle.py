"""The task state machine: the statuses, the moves between them, and what every move writes.

    queued ──> running ──> succeeded
      │   <──┘   │          failed | timeout | canceled
      └──────────┴───────>

A task is *active* while queued or running and *terminal* after; nothing leaves a terminal status.
A running task goes back to queued when it is resubmitted (on another channel). Every move is a
compare-and-set in the store on the statuses it may come from (and on the lease, for the engine),
so no move applies twice. The lease is the engine's claim on a task for one step: every move that
ends a step releases it, so the next step can be claimed at once.

The dialects render these statuses in their own words. This module imports nothing of Tidehub:
the store builds its conditions from it.
"""

from __future__ import annotations

from typing import Any

QUEUED, RUNNING, SUCCEEDED, FAILED, TIMEOUT, CANCELED = (
    "queued", "running", "succeeded", "failed", "timeout", "canceled",
)
ACTIVE = (QUEUED, RUNNING)
TERMINAL = (SUCCEEDED, FAILED, TIMEOUT, CANCELED)
STATUSES = ACTIVE + TERMINAL

#: Where each status may move to.
MOVES: dict[str, frozenset[str]] = {
    QUEUED: frozenset({RUNNING, FAILED, TIMEOUT, CANCELED}),
    RUNNING: frozenset({QUEUED, SUCCEEDED, FAILED, TIMEOUT, CANCELED}),
    **{status: frozenset() for status in TERMINAL},
}

#: Where each status may be reached from: the compare-and-set condition of a move to it.
FROM: dict[str, tuple[str, ...]] = {
    target: tuple(s for s in STATUSES if target in MOVES[s]) for target in STATUSES
}

#: The columns that hold the engine's lease, cleared by every move that ends a step.
RELEASED: dict[str, Any] = {"lease_owner": None, "lease_until": None}


def can_move(source: str, target: str) -> bool:
    return target in MOVES.get(source, frozenset())


def released(**values: Any) -> dict[str, Any]:
    """``values`` plus the release of the lease."""
    return {**values, **RELEASED}


def finished(status: str, now: float, *, code: str | None = None, message: str | None = None,
             **values: Any) -> dict[str, Any]:
    """What a move to a terminal ``status`` writes: the end time, the error (if any), nothing due
    any more, the lease released."""
    if status not in TERMINAL:
        raise ValueError(f"{status!r} is not a terminal status")
    ending: dict[str, Any] = {"status": status, "finished_at": now, "updated_at": now, "next_check_at": None}
    if code is not None:
        ending["error_code"] = code
        ending["error_message"] = message
    return released(**ending, **values)
