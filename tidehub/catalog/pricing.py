"""Prices: each catalog entry's declarative rule, turned into integer credits.

A rule (``price:`` in a catalog file) is data, never code:

    unit: image | second | minute | request
    credits: 35                      # per unit; the total is rounded up
    quantity: {field: num_images}    # absent field: `default`, else 1; also {field: duration, default: 5},
                                     # {field: music_length_ms, scale: 0.001},
                                     # or {measured: audio_minutes, estimate: 10}
    factors: {resolution: {"1K": 1, "4K": 2}, generate_audio: {"true": 1, "false": 0.5}}
    minimum: 1

total = ceil(credits x quantity x product of factors), at least ``minimum``. A quantity that is
only known from the result (``measured``) holds ``estimate`` units at submit and charges what was
measured, never more than the hold.

Chat and embedding models are priced by tokens, input and output apart:

    unit: 1k_tokens
    credits: 2.25                    # per 1,000 input (prompt) tokens
    output_credits: 9                # per 1,000 output (completion) tokens
    max_output: 4096                 # output tokens held for when the request sets no max_tokens

The hold is an estimate (the input's length, generously counted, plus the most output the request
allows); the charge is the upstream's usage, or for a stream cut short, what the client received.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any


UNITS = ("image", "second", "minute", "request", "1k_tokens")
_NUMBER = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*s?\s*$")


@dataclass(frozen=True)
class Quote:
    credits: int
    # True when the real charge is measured from the result (the hold is an estimate).
    measured: bool = False


class PriceRule:
    def __init__(self, raw: dict[str, Any], defaults: dict[str, Any] | None = None) -> None:
        if raw.get("unit") not in UNITS:
            raise ValueError(f"price unit must be one of {', '.join(UNITS)}, not {raw.get('unit')!r}")
        self.raw = raw
        self.unit = raw["unit"]
        self.credits = float(raw["credits"])
        self.quantity = raw.get("quantity") or {}
        if self.unit == "1k_tokens":
            self.quantity = {"measured": "tokens"}
            self.output_credits = float(raw.get("output_credits", 0))
            self.max_output = int(raw.get("max_output", 4096))
        self.factors: dict[str, dict[str, float]] = raw.get("factors") or {}
        self.minimum = int(raw.get("minimum", 1))
        # Schema defaults, for fields the input leaves out (inputs are validated with defaults
        # filled in, but a rule may also be asked about a bare example).
        self.defaults = defaults or {}

    @property
    def measured(self) -> str | None:
        return self.quantity.get("measured")

    def quote(self, input: dict[str, Any]) -> Quote:
        if self.unit == "1k_tokens":
            return Quote(self.tokens(estimate_input_tokens(input), self._output_allowance(input)), measured=True)
        if self.measured:
            return Quote(self._total(float(self.quantity.get("estimate", 1)), input), measured=True)
        return Quote(self._total(self._quantity(input), input))

    def charge(self, input: dict[str, Any], measurements: dict[str, float], held: int) -> int:
        """What a completed task costs: the hold, or for a measured rule the measured amount
        (never more than the hold)."""
        if not self.measured:
            return held
        if self.unit == "1k_tokens":
            if "input_tokens" not in measurements and "output_tokens" not in measurements:
                return held
            return min(held, self.tokens(measurements.get("input_tokens", 0), measurements.get("output_tokens", 0)))
        amount = measurements.get(self.measured)
        if amount is None:
            return held
        return min(held, self._total(amount, input))

    def tokens(self, input_tokens: float, output_tokens: float) -> int:
        """Credits for a token count (rounded up, at least ``minimum``)."""
        amount = (input_tokens * self.credits + output_tokens * self.output_credits) / 1000
        return max(self.minimum, math.ceil(round(amount, 6)))

    def _output_allowance(self, input: dict[str, Any]) -> int:
        if not self.output_credits:
            return 0  # embeddings: nothing comes out that is charged
        n = input.get("n") if isinstance(input.get("n"), int) and not isinstance(input.get("n"), bool) else 1
        for field in ("max_completion_tokens", "max_tokens"):
            value = input.get(field)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value * max(1, n)
        return self.max_output * max(1, n)

    def _quantity(self, input: dict[str, Any]) -> float:
        field = self.quantity.get("field")
        if not field:
            return 1.0
        value = _number(input.get(field, self.defaults.get(field)))
        if value is None or (value == 0 and "default" in self.quantity):
            # Absent, or a word such as "auto": the rule's default, else one unit.
            value = _number(self.quantity.get("default", 1)) or 1.0
        return value * float(self.quantity.get("scale", 1))

    def _total(self, quantity: float, input: dict[str, Any]) -> int:
        amount = self.credits * quantity
        for field, table in self.factors.items():
            value = input.get(field, self.defaults.get(field))
            key = str(value).lower() if isinstance(value, bool) else str(value)
            if key in table:
                amount *= float(table[key])
        # Rounding guards against 0.1 * 3 = 0.30000000000000004 becoming 1 credit more.
        return max(self.minimum, math.ceil(round(amount, 6)))


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        m = _NUMBER.match(value)
        return float(m.group(1)) if m else None
    return None


def estimate_input_tokens(input: dict[str, Any]) -> int:
    """An upper estimate of a request's input tokens, for the hold only: real counts come back in
    the upstream's usage. English runs about 4 characters a token; counting 2 covers most other
    scripts, and every message or string item adds a few tokens of framing."""
    text = 0
    items = 0
    for key in ("messages", "input", "prompt"):
        value = input.get(key)
        if isinstance(value, str):
            text += len(value)
            items += 1
        elif isinstance(value, list):
            for item in value:
                items += 1
                text += len(item) if isinstance(item, str) else len(str(item))
    return text // 2 + 8 * items + 16
