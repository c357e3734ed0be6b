"""Simulated upstream accounts: one per API key the sim accepts, each with its own knobs and counters.

The gateway sees each key as a separate *channel* (an upstream account). Here a channel is the key,
the fal user id its webhooks are signed for, its ``SimBehaviour`` and the small amount of state the
fault knobs need (a seeded RNG, where it is in a 429 burst, which flaky prompts it has seen).
Vendor-neutral: the fal routes turn these decisions into fal's status codes and bodies.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from tidehub.sim.behaviour import SimBehaviour
from tidehub.sim.errors import RunFailure

#: Prompt markers that force a run failure on any channel, so a test can pick which request fails.
CONTENT_POLICY_MARKER = "[sim:content-policy]"
FLAKY_MARKER = "[sim:flaky]"
#: Flaky prompts remembered per channel before the memory is cleared (bounds memory on long runs).
_FLAKY_MEMORY = 10_000


@dataclass(slots=True)
class ChannelStats:
    """Counters for ``GET /_sim/stats``; plain ints, bumped on the event loop."""

    submits: int = 0            # authenticated submit requests, whatever their answer
    accepted: int = 0           # submits that created a request
    rate_limited: int = 0       # 429s
    submit_errors: int = 0      # 503s from ``submit_error_rate``
    outage_errors: int = 0      # 503s from ``outage`` (any endpoint)
    hangs: int = 0              # requests held without an answer
    held: int = 0               # a gauge: requests being held right now
    status_polls: int = 0
    completions: int = 0        # runs that ended with an output
    run_failures: int = 0       # runs that ended with an error (cancellation not included)
    cancels: int = 0
    webhooks_sent: int = 0      # deliveries answered 2xx
    webhooks_failed: int = 0    # attempts that failed (non-2xx, connection error, timeout)
    webhooks_abandoned: int = 0  # deliveries given up after the last retry

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


class Channel:
    """One simulated upstream account."""

    def __init__(self, key: str, user_id: str, behaviour: SimBehaviour, seed_base: str | None) -> None:
        self.key = key
        self.user_id = user_id
        self.behaviour = behaviour
        self.stats = ChannelStats()
        self._seed_base = seed_base
        self._rng = random.Random()
        self._seeded_with: int | None = None
        self.reseed()
        self._accepted_in_cycle = 0
        self._limited_left = 0
        self._flaky_seen: set[str] = set()

    def reseed(self) -> None:
        """Restart the fault RNG from the configured seed, so a run of draws can be replayed."""
        seed = self.behaviour.seed
        if seed is not None:
            self._rng.seed(seed)
        elif self._seed_base is not None:
            self._rng.seed(f"{self._seed_base}/{self.key}")
        else:
            self._rng.seed()
        self._seeded_with = seed

    def chance(self, rate: float) -> bool:
        """True with probability ``rate``; draws nothing when the knob is off or certain."""
        if rate <= 0:
            return False
        if rate >= 1:
            return True
        if self.behaviour.seed != self._seeded_with:  # the seed knob was set by attribute
            self.reseed()
        return self._rng.random() < rate

    # --- 429 bursts ------------------------------------------------------------------------------

    def rate_limited(self) -> bool:
        """Whether this submit falls in a 429 burst (and uses up one of the burst's refusals)."""
        if not self.behaviour.rate_limit_every:
            return False
        if self._limited_left > 0:
            self._limited_left -= 1
            return True
        return False

    def count_accepted(self) -> None:
        self.stats.accepted += 1
        every = self.behaviour.rate_limit_every
        if every:
            self._accepted_in_cycle += 1
            if self._accepted_in_cycle >= every:
                self._accepted_in_cycle = 0
                self._limited_left = self.behaviour.rate_limit_burst

    def reset_rate_limit(self) -> None:
        self._accepted_in_cycle = self._limited_left = 0

    # --- run failures ----------------------------------------------------------------------------

    def plan_failure(self, inputs: Mapping[str, Any]) -> RunFailure | None:
        """How this accepted request's run will end in error, or None when it should succeed."""
        prompt = inputs.get("prompt")
        if isinstance(prompt, str) and "[sim:" in prompt:
            if CONTENT_POLICY_MARKER in prompt:
                return RunFailure.content_policy()
            if FLAKY_MARKER in prompt and prompt not in self._flaky_seen:
                if len(self._flaky_seen) >= _FLAKY_MEMORY:
                    self._flaky_seen.clear()
                self._flaky_seen.add(prompt)
                return RunFailure.runner_disconnected()
        if self.chance(self.behaviour.run_failure_rate):
            if self.behaviour.run_failure_kind == "permanent":
                return RunFailure.content_policy()
            return RunFailure.runner_disconnected()
        return None

    def describe(self) -> dict[str, Any]:
        return {"key": self.key, "user_id": self.user_id, "knobs": self.behaviour.knobs()}


class Channels:
    """Every channel of one sim, by API key. User ids are numbered in the order channels appear."""

    def __init__(self, time_scale: float, seed: int | None) -> None:
        self._time_scale = time_scale
        self._seed_base = str(seed) if seed is not None else None
        self._by_key: dict[str, Channel] = {}

    def add(self, key: str, behaviour: SimBehaviour) -> Channel:
        if not key:
            raise ValueError("a channel needs a non-empty API key")
        if key in self._by_key:
            raise ValueError(f"channel {key!r} already exists")
        if behaviour.time_scale is None:
            behaviour.time_scale = self._time_scale
        channel = Channel(key, f"sim-user-{len(self._by_key) + 1}", behaviour, self._seed_base)
        self._by_key[key] = channel
        return channel

    def configure(self, key: str, changes: Mapping[str, Any]) -> tuple[Channel, bool]:
        """Apply knob changes to a channel, adding it when the key is new; True when added.

        All or nothing: a bad value raises ``ValueError`` and changes no knob (and adds no channel).
        """
        channel = self._by_key.get(key)
        behaviour = channel.behaviour if channel is not None else SimBehaviour(time_scale=self._time_scale)
        behaviour.update(changes)
        if behaviour.time_scale is None:
            behaviour.time_scale = self._time_scale
        if channel is None:
            return self.add(key, behaviour), True
        if "seed" in changes:
            channel.reseed()
        if {"rate_limit_every", "rate_limit_burst"} & set(changes):
            channel.reset_rate_limit()
        return channel, False

    def get(self, key: str) -> Channel | None:
        return self._by_key.get(key)

    def __iter__(self) -> Iterator[Channel]:
        return iter(list(self._by_key.values()))

    def __len__(self) -> int:
        return len(self._by_key)
