"""The chaos tests' upstream: a simulator with three faulty channels (one down, one failing 30% of
submits, one in 429 bursts) and the channels file that points a gateway at them."""

from __future__ import annotations

from pathlib import Path

import yaml

from tidehub.sim.behaviour import SimBehaviour
from tidehub.sim.server import SimServer
from tidehub.sim.settings import SimSettings

TASKS = 500
POISONED = 25  # prompts the upstream refuses for content policy: permanent, must be free
SCALE = 0.02


def start_faulty_upstream(channels_file: Path, bursty_limit: int | None = None, time_scale: float = SCALE) -> SimServer:
    """The simulator, started, and ``channels_file`` naming its channels; ``bursty_limit`` caps the
    bursty channel's concurrency."""
    sim = SimServer(SimSettings(port=0, time_scale=time_scale, seed=5, channels={
        "down": SimBehaviour(outage=True),
        "flaky": SimBehaviour(submit_error_rate=0.3, seed=8),
        "bursty": SimBehaviour(rate_limit_every=20, rate_limit_burst=5, retry_after_s=1),
    }))
    sim.start()
    bursty = {"name": "bursty", "adapter": "fal", "base_url": sim.base_url, "secret": "bursty", "priority": 10,
              "weight": 2}
    if bursty_limit is not None:
        bursty["max_concurrency"] = bursty_limit
    channels_file.write_text(yaml.safe_dump({"channels": [
        {"name": "down", "adapter": "fal", "base_url": sim.base_url, "secret": "down", "priority": 10, "weight": 3},
        {"name": "flaky", "adapter": "fal", "base_url": sim.base_url, "secret": "flaky", "priority": 10, "weight": 2},
        bursty,
    ]}))
    return sim
