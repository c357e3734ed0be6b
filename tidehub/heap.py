"""The garbage collector, tuned for a serving process.

A gateway process loads a large, lasting heap at startup (the catalog, its schemas and compiled
validators, SQLAlchemy's tables and compiled statements, the console's templates), about 100,000
tracked objects, and then makes short-lived objects for every request. CPython's defaults (a young
collection every 700 net allocations, older ones after 10 of those) walked the whole startup heap
in each full collection and promoted the objects of requests still in flight: under load the
collector took a tenth of a relayed call's CPU (docs/PERFORMANCE.md).

``settle()`` runs once the process has started: one full collection, then everything still alive
moves to the permanent generation (``gc.freeze``), which no collection walks again, and young
collections wait for 10,000 net allocations, by when most of a request's objects are gone.
Reference cycles are still collected; startup objects that later become garbage wait for
``release()``, at shutdown.
"""

from __future__ import annotations

import gc

# Young collections after this many net allocations; the older generations after 20 of the one
# below each (a full collection also waits, as CPython's always does, for the long-lived objects
# to have grown by a quarter).
THRESHOLDS = (10_000, 20, 20)

_saved: tuple[int, int, int] | None = None


def settle() -> None:
    """Freeze the heap as it is and space collections out (once started; idempotent)."""
    global _saved
    if _saved is None:
        _saved = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)


def release() -> None:
    """Undo ``settle``: the frozen objects are collectable again, the thresholds as they were."""
    global _saved
    gc.unfreeze()
    if _saved is not None:
        gc.set_threshold(*_saved)
        _saved = None
