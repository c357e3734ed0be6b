"""The knobs that shape how one simulated upstream account (a *channel*) behaves.

One mutable object per channel, read on every request, so a test or a demo can change latency or
break a channel mid-run (``PUT /_sim/channels/{key}``, or by assigning attributes). Every fault
knob is off by default, and a knob that is off costs nothing: no random draw, no sleep.

The knobs, per channel:

- ``time_scale``: multiplies every simulated duration (queue, run, webhook retry backoff); ``None``
  means "the sim's own ``time_scale``".
- ``jitter``: relative spread of queue and run times (0.3 = +-30%).
- ``latency_s``: wall-clock seconds added before every fal API response (not scaled).
- ``hang_rate``: fraction of fal API requests that get no answer until the client gives up; a held
  request is released with 504 after ``hang_s`` wall-clock seconds, or at shutdown.
- ``outage``: every fal API request (submit, status, result, cancel) is answered 503.
- ``submit_error_rate``: fraction of valid submits refused with 503 ``runner_scheduling_failure``,
  ``X-Fal-Retryable: true``; no request is created.
- ``run_failure_rate`` / ``run_failure_kind``: fraction of accepted requests whose run ends
  COMPLETED with an error: ``"retryable"`` (503 ``runner_disconnected``) or ``"permanent"`` (422
  ``content_policy_violation``). Prompt markers force these on any channel: ``[sim:content-policy]``
  always fails permanently, ``[sim:flaky]`` fails retryably on the first submit of that exact prompt
  to a channel and succeeds afterwards.
- ``rate_limit_every`` / ``rate_limit_burst`` / ``retry_after_s``: deterministic 429 bursts. After
  every ``rate_limit_every`` accepted submits, the next ``rate_limit_burst`` submits get 429
  ``{"detail": "Rate limit exceeded"}`` with ``Retry-After`` (whole seconds, rounded up from
  ``retry_after_s``, wall clock). 0 turns it off.
- ``max_concurrent``: at most this many runs at once on the channel; later requests wait in the
  queue (their ``queue_position`` counts the channel's requests ahead). ``None`` = unlimited.
- ``webhooks``: whether requests submitted with ``?fal_webhook=`` get their callback (checked when
  the request ends).
- ``result_url`` / ``result_content_type``: when set, every file in a fal result (and every image
  URL an OpenAI image call answers) names this URL / declares this media type instead of its own
  (the file itself is unchanged): an upstream pointing the gateway at an address of its choosing,
  or declaring HTML for what it serves.
- ``seed``: seeds the channel's fault RNG (rates above); ``None`` derives it from the sim's seed
  and the channel key, or draws a random one when the sim has no seed.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

RUN_FAILURE_KINDS = ("retryable", "permanent")


@dataclass(frozen=True, slots=True)
class Timing:
    """Scaled seconds a request spends waiting in the queue and then running."""

    queue_s: float
    run_s: float


@dataclass
class SimBehaviour:
    time_scale: float | None = None
    jitter: float = 0.3
    latency_s: float = 0.0
    hang_rate: float = 0.0
    hang_s: float = 300.0
    outage: bool = False
    submit_error_rate: float = 0.0
    run_failure_rate: float = 0.0
    run_failure_kind: str = "retryable"
    rate_limit_every: int = 0
    rate_limit_burst: int = 1
    retry_after_s: float = 1.0
    max_concurrent: int | None = None
    webhooks: bool = True
    result_url: str | None = None
    result_content_type: str | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        for spec in dataclasses.fields(self):
            problem = _check(spec.name, getattr(self, spec.name))
            if problem:
                raise ValueError(f"{spec.name}: {problem}")

    @property
    def scale(self) -> float:
        return self.time_scale if self.time_scale is not None else 1.0

    def timing(self, queue_s: float, run_s: float, work_factor: float, rng: random.Random) -> Timing:
        """Draw one request's queue and run time from the model's nominal figures.

        ``work_factor`` carries how much heavier this input is than the nominal one (a 10 s video
        takes longer than a 5 s one), so run time scales with it.
        """
        return Timing(
            queue_s=max(0.0, queue_s * self._spread(rng) * self.scale),
            run_s=max(0.0, run_s * work_factor * self._spread(rng) * self.scale),
        )

    @property
    def disturbs_requests(self) -> bool:
        """Whether any knob acts on every API request (checked first, so calm channels pay nothing)."""
        return bool(self.latency_s or self.hang_rate or self.outage)

    @property
    def retry_after_header(self) -> str:
        """``Retry-After`` is whole seconds (RFC 9110), so a fractional knob rounds up."""
        return str(math.ceil(self.retry_after_s))

    def rewrite_files(self, output: Any) -> Any:
        """``output`` with ``result_url`` / ``result_content_type`` applied to every file in it."""
        if self.result_url is None and self.result_content_type is None:
            return output
        if isinstance(output, list):
            return [self.rewrite_files(item) for item in output]
        if not isinstance(output, dict):
            return output
        rewritten = {key: self.rewrite_files(value) for key, value in output.items()}
        if isinstance(output.get("url"), str):
            if self.result_url is not None:
                rewritten["url"] = self.result_url
            if self.result_content_type is not None:
                rewritten["content_type"] = self.result_content_type
        return rewritten

    def knobs(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def update(self, changes: Mapping[str, Any]) -> None:
        """Apply a partial set of knob values, all or nothing; ``ValueError`` names the bad one."""
        unknown = sorted(set(changes) - set(_KINDS))
        if unknown:
            raise ValueError(f"unknown knob(s): {', '.join(unknown)}; known: {', '.join(_KINDS)}")
        coerced = {name: _coerce(name, value) for name, value in changes.items()}
        checked = dataclasses.replace(self, **coerced)  # runs every check before anything changes
        for name in coerced:
            setattr(self, name, getattr(checked, name))

    def _spread(self, rng: random.Random) -> float:
        return 1.0 + rng.uniform(-self.jitter, self.jitter) if self.jitter else 1.0


#: Each knob's kind, for checking values that arrive as JSON.
_KINDS = {
    "time_scale": "scale", "jitter": "fraction", "latency_s": "seconds", "hang_rate": "fraction",
    "hang_s": "positive", "outage": "bool", "submit_error_rate": "fraction", "run_failure_rate": "fraction",
    "run_failure_kind": "kind", "rate_limit_every": "count", "rate_limit_burst": "positive_count",
    "retry_after_s": "seconds", "max_concurrent": "limit", "webhooks": "bool", "seed": "seed",
    "result_url": "text", "result_content_type": "text",
}


def _coerce(name: str, value: Any) -> Any:
    """JSON has no "unlimited": 0 means no concurrency cap."""
    if name == "max_concurrent" and value == 0 and not isinstance(value, bool):
        return None
    return value


def _check(name: str, value: Any) -> str | None:
    kind = _KINDS[name]
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    is_int = isinstance(value, int) and not isinstance(value, bool)
    if kind == "bool":
        return None if isinstance(value, bool) else "must be true or false"
    if kind == "kind":
        return None if value in RUN_FAILURE_KINDS else f"must be one of {', '.join(RUN_FAILURE_KINDS)}"
    if kind == "text":
        return None if value is None or (isinstance(value, str) and value) else "must be a non-empty string or null"
    if kind == "seed":
        return None if value is None or is_int else "must be an integer or null"
    if kind == "limit":
        return None if value is None or (is_int and value >= 1) else "must be a positive integer or null"
    if kind in ("count", "positive_count"):
        least = 1 if kind == "positive_count" else 0
        return None if is_int and value >= least else f"must be an integer >= {least}"
    if kind == "scale":
        return None if value is None or (is_number and 0 < value < math.inf) else "must be a positive number"
    if not is_number or not math.isfinite(value):
        return "must be a number"
    if kind == "fraction":
        return None if 0 <= value <= 1 else "must be between 0 and 1"
    if kind == "positive":
        return None if value > 0 else "must be > 0"
    return None if value >= 0 else "must be >= 0"
