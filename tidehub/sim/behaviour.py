"""The knobs that shape how the simulated upstream behaves.

One mutable object per running sim (``app.state.sim.behaviour``), read on every submit, so a test
or a demo can change latency mid-run. Fault knobs (error rates, 429 bursts, outages, hanging
responses, webhook delivery) belong here too when they are added; the request lifecycle asks this
object, never a module global, how a request should go.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Timing:
    """Scaled seconds a request spends waiting in the queue and then running."""

    queue_s: float
    run_s: float


@dataclass
class SimBehaviour:
    time_scale: float = 1.0
    #: Relative spread applied to the catalog's queue and run times (0.3 = +-30%).
    jitter: float = 0.3

    def timing(self, queue_s: float, run_s: float, work_factor: float, rng: random.Random) -> Timing:
        """Draw one request's queue and run time from the model's nominal figures.

        ``work_factor`` carries how much heavier this input is than the nominal one (a 10 s video
        takes longer than a 5 s one), so run time scales with it.
        """
        return Timing(
            queue_s=max(0.0, queue_s * self._spread(rng) * self.time_scale),
            run_s=max(0.0, run_s * work_factor * self._spread(rng) * self.time_scale),
        )

    def _spread(self, rng: random.Random) -> float:
        return 1.0 + rng.uniform(-self.jitter, self.jitter) if self.jitter else 1.0
